package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/gpulet/gpulet/tests/e2e/bed"
	"github.com/gpulet/gpulet/tests/e2e/helmchart"
)

const (
	releaseName      = helmchart.ReleaseName
	releaseNamespace = helmchart.ReleaseNamespace
)

// decodeObjects splits a multi-document YAML stream into objects, skipping
// empty documents.
func decodeObjects(t testing.TB, text string) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(text), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("decode rendered YAML: %v", err)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

// monitoringCRDs are stand-ins for the Prometheus Operator's CRDs: the
// right group, versions, kinds and scope, but a schema that keeps any
// field. With them the API server checks that the chart's ServiceMonitor
// and PrometheusRule are well-formed objects of those kinds in the right
// namespace; what their specs mean is the operator's to check, and its
// real CRDs are not part of this repository.
const monitoringCRDs = `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: prometheusrules.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules, singular: prometheusrule}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
`

// applier sends objects to the API server through the dynamic client.
type applier struct {
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newApplier(t testing.TB, c *bed.ControlPlane) *applier {
	t.Helper()
	cfg := c.RESTConfig()
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{
		dyn:    dyn,
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.Client().Discovery())),
	}
}

// create creates obj (in namespace ns if it is namespaced), with strict
// field validation: a field the API does not know is an error, not a
// warning.
func (a *applier) create(ctx context.Context, obj *unstructured.Unstructured, ns string) error {
	ri, err := a.resource(obj, ns)
	if err != nil {
		return err
	}
	_, err = ri.Create(ctx, obj, metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict})
	return err
}

// dryRun sends obj with dryRun=All and strict field validation: the API
// server runs defaulting, admission (policies included) and validation on
// the object as it would be stored, and stores nothing. An object that
// exists already (the real install) is dry-run replaced instead, as a whole,
// so what is checked is the rendered object, not a merge with the stored one.
func (a *applier) dryRun(ctx context.Context, obj *unstructured.Unstructured, ns string) error {
	ri, err := a.resource(obj, ns)
	if err != nil {
		return err
	}
	_, err = ri.Create(ctx, obj, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: metav1.FieldValidationStrict})
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	cur, err := ri.Get(ctx, obj.GetName(), metav1.GetOptions{})
	if err != nil {
		return err
	}
	obj = obj.DeepCopy()
	obj.SetResourceVersion(cur.GetResourceVersion())
	_, err = ri.Update(ctx, obj, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: metav1.FieldValidationStrict})
	return err
}

// resource is the dynamic client for obj's kind, in namespace ns (unless
// obj names its own) when the kind is namespaced.
func (a *applier) resource(obj *unstructured.Unstructured, ns string) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	mapping, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", gvk, err)
	}
	if mapping.Scope.Name() != meta.RESTScopeNameNamespace {
		return a.dyn.Resource(mapping.Resource), nil
	}
	if obj.GetNamespace() == "" {
		obj.SetNamespace(ns)
	}
	return a.dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace()), nil
}

// createAll creates every object of a YAML stream and waits until the API
// server serves the CRDs among them.
func (a *applier) createAll(t testing.TB, text, ns string) {
	t.Helper()
	ctx := t.Context()
	for _, obj := range decodeObjects(t, text) {
		if err := a.create(ctx, obj, ns); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
	}
	a.mapper.Reset()
}

// TestChartAcceptedByAPIServer sends every object of every variant, and
// the plain manifests, to the real kube-apiserver as a server-side dry run
// (admission, validation and strict field checks, nothing stored), installs
// the default variant for real with `helm install` as a user would (unless
// an earlier test of the package did), and checks the result: the objects
// exist and the admission policy's CEL type-checks. The examples in
// deployments/examples/ are dry-run too.
func TestChartAcceptedByAPIServer(t *testing.T) {
	c := bed.Cluster(t)
	ctx := t.Context()
	a := newApplier(t, c)
	ensureNamespace(t, c)
	// The "everything" variant puts the dashboard in its own namespace.
	a.createAll(t, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: monitoring\n", "")
	a.createAll(t, monitoringCRDs, "")
	bed.Eventually(t, 30*time.Second, "monitoring CRDs served", func(ctx context.Context) error {
		a.mapper.Reset()
		for _, k := range []string{"ServiceMonitor", "PrometheusRule"} {
			if _, err := a.mapper.RESTMapping(schema.GroupKind{Group: "monitoring.coreos.com", Kind: k}, "v1"); err != nil {
				return err
			}
		}
		return nil
	})

	rendered := map[string]map[string]bool{} // variant -> kinds rendered
	for _, v := range helmchart.Variants(t) {
		t.Run("dry-run "+v.Name, func(t *testing.T) {
			text := helmchart.Template(t, helmBin(t), v)
			if v.Name == "defaults" {
				// Exactly what users without Helm apply.
				file, err := os.ReadFile(filepath.Join(helmchart.RepoRoot(t), helmchart.ManifestsFile))
				if err != nil {
					t.Fatal(err)
				}
				text = string(file)
			}
			objs := decodeObjects(t, text)
			rendered[v.Name] = map[string]bool{}
			for _, obj := range objs {
				rendered[v.Name][obj.GetKind()] = true
				if err := a.dryRun(ctx, obj, releaseNamespace); err != nil {
					t.Errorf("API server refuses %s %s: %v", obj.GetKind(), obj.GetName(), err)
				}
			}
			t.Logf("%d objects accepted: %v", len(objs), sortedKeys(rendered[v.Name]))
		})
	}
	// Each variant renders what it promises.
	want := map[string][]string{
		"defaults":      {"ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Service", "DaemonSet", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"},
		"nvidia-dropin": {"ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Service", "DaemonSet"},
		"everything":    {"ValidatingAdmissionPolicy"},
	}
	// The DeviceClasses and monitoring objects come from files other
	// issues write; the chart renders whatever is there.
	if repoHas(t, "deployments/deviceclasses/*.yaml") {
		want["defaults"] = append(want["defaults"], "DeviceClass")
		want["everything"] = append(want["everything"], "DeviceClass")
	}
	if repoHas(t, "deployments/monitoring/*") {
		want["everything"] = append(want["everything"], "ServiceMonitor", "PrometheusRule")
	}
	for variant, kinds := range want {
		for _, k := range kinds {
			if !rendered[variant][k] {
				t.Errorf("variant %s renders no %s (renders %v)", variant, k, sortedKeys(rendered[variant]))
			}
		}
	}
	for _, k := range []string{"DeviceClass", "ValidatingAdmissionPolicy"} {
		if rendered["nvidia-dropin"][k] {
			t.Errorf("the NVIDIA drop-in preset renders a %s; it should install nothing of DRA", k)
		}
	}

	installChart(t, c)

	// The policy's expressions are type-checked by the API server after it
	// is stored; a misspelt field shows up here, not at admission time.
	name := helmchart.PolicyName
	bed.Eventually(t, 30*time.Second, "ValidatingAdmissionPolicy type-checked", func(ctx context.Context) error {
		p, err := c.Client().AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.ObservedGeneration != p.Generation || p.Status.TypeChecking == nil {
			return fmt.Errorf("not type-checked yet (status %+v)", p.Status)
		}
		if w := p.Status.TypeChecking.ExpressionWarnings; len(w) > 0 {
			t.Fatalf("policy %s: type-checking warnings: %+v", name, w)
		}
		return nil
	})
	if _, err := c.Client().AppsV1().DaemonSets(releaseNamespace).Get(ctx, releaseName, metav1.GetOptions{}); err != nil {
		t.Errorf("after helm install: %v", err)
	}

	// The examples the README points to are valid objects too.
	t.Run("examples", func(t *testing.T) {
		ns := c.Namespace(t)
		files, err := filepath.Glob(filepath.Join(helmchart.RepoRoot(t), "deployments", "examples", "*.yaml"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no examples: %v", err)
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, obj := range decodeObjects(t, string(data)) {
				if err := a.dryRun(ctx, obj, ns); err != nil {
					t.Errorf("%s: API server refuses %s %s: %v", filepath.Base(f), obj.GetKind(), obj.GetName(), err)
				}
			}
		}
	})
}

var (
	installMu   sync.Mutex
	installDone bool
)

// installChart installs the chart with default values for real, once per
// test process: `helm install` with the bed's admin kubeconfig, the way a
// platform team does. The DaemonSet's pods would land only on nodes labelled
// nvidia.com/gpu.present=true, which the bed's nodes are not.
func installChart(t testing.TB, c *bed.ControlPlane) {
	t.Helper()
	installMu.Lock()
	defer installMu.Unlock()
	if installDone {
		return
	}
	ensureNamespace(t, c)
	helmchart.Run(t, helmBin(t), "install", releaseName, helmchart.ChartDir, "--namespace", releaseNamespace,
		"--kubeconfig", c.AdminKubeconfig(), "--timeout", "2m")
	installDone = true
	// The binding is enforced once the API server's policy informer has
	// it; admission tests wait for that themselves.
	_, err := c.Client().AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Get(t.Context(),
		helmchart.PolicyName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("after helm install: %v", err)
	}
}

// ensureNamespace creates the release namespace, labelled for Pod Security
// "privileged" as the chart's README asks (host paths, root).
func ensureNamespace(t testing.TB, c *bed.ControlPlane) {
	t.Helper()
	_, err := c.Client().CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: releaseNamespace, Labels: map[string]string{
			"pod-security.kubernetes.io/enforce": "privileged",
		}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", releaseNamespace, err)
	}
}

// repoHas reports whether any file of the repository matches the glob.
func repoHas(t testing.TB, glob string) bool {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(helmchart.RepoRoot(t), glob))
	if err != nil {
		t.Fatal(err)
	}
	return len(m) > 0
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
