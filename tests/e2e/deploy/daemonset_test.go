package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpulet/gpulet/tests/e2e/bed"
	"github.com/gpulet/gpulet/tests/e2e/helmchart"
)

// TestChartDaemonSetOnARealNode installs the chart (a release of its own)
// so that its DaemonSet selects one real kubelet of the bed, and checks
// what the real DaemonSet controller, scheduler and kubelet make of it:
// the pod lands on the node with the chart's priority class, the container
// the CRI stub is asked to create has GPULET_NODE_NAME from the downward
// API, the host paths, and the tight security context; and the
// service-account token the kubelet mounted into it names the node, so the
// admission policy lets it write that node's ResourceSlices and no other's.
func TestChartDaemonSetOnARealNode(t *testing.T) {
	c := bed.Cluster(t)
	ctx := t.Context()
	admin := c.Client()

	node := c.StartNode(t, bed.NodeOptions{Labels: map[string]string{"e2e.gpulet.dev/chart": "true"}})
	const release, ns = "gpulet-node", "gpulet-node"
	// The node's kubelet keeps its files under its own directory; point
	// the chart's host paths there too, so nothing is created on the host
	// machine's /var/lib or /var/run. The DeviceClasses are cluster-wide
	// and belong to the release installChart makes.
	values := filepath.Join(t.TempDir(), "values.yaml")
	err := os.WriteFile(values, fmt.Appendf(nil, `dra:
  deviceClasses:
    enabled: false
nodeSelector:
  nvidia.com/gpu.present: null
  e2e.gpulet.dev/chart: "true"
host:
  kubeletRoot: %q
  cdiRoot: %q
  stateDir: %q
`, node.RootDir(), node.CDIRoot(), filepath.Join(node.Dir(), "gpulet-state")), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	helmchart.Run(t, helmBin(t), "install", release, helmchart.ChartDir, "--namespace", ns, "--create-namespace",
		"--kubeconfig", c.AdminKubeconfig(), "-f", values)
	t.Cleanup(func() {
		out, err := helmchart.Output(t, helmBin(t), "uninstall", release, "--namespace", ns, "--kubeconfig", c.AdminKubeconfig())
		if err != nil {
			t.Logf("helm uninstall: %v\n%s", err, out)
		}
	})

	var pod *corev1.Pod
	bed.Eventually(t, 90*time.Second, "the DaemonSet's pod on node "+node.Name(), func(ctx context.Context) error {
		pods, err := admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node.Name()})
		if err != nil {
			return err
		}
		if len(pods.Items) != 1 {
			ds, _ := admin.AppsV1().DaemonSets(ns).Get(ctx, release, metav1.GetOptions{})
			return fmt.Errorf("%d pods on the node; DaemonSet status %+v", len(pods.Items), ds.Status)
		}
		pod = &pods.Items[0]
		return nil
	})
	if pod.Spec.PriorityClassName != "system-node-critical" || pod.Spec.Priority == nil || *pod.Spec.Priority < 2_000_000_000 {
		t.Errorf("pod priority class %q, priority %v: want system-node-critical", pod.Spec.PriorityClassName, pod.Spec.Priority)
	}

	rec := node.CRI().WaitPodContainer(t, 90*time.Second, ns, pod.Name, "gpulet")
	if got := rec.Env["GPULET_NODE_NAME"]; got != node.Name() {
		t.Errorf("GPULET_NODE_NAME=%q, want the node's name %q", got, node.Name())
	}
	if got, want := rec.Env["GPULET_KUBELET_ROOT"], node.RootDir(); got != want {
		t.Errorf("GPULET_KUBELET_ROOT=%q, want %q", got, want)
	}
	for hostPath, containerPath := range map[string]string{
		filepath.Join(node.RootDir(), "plugins_registry"):          filepath.Join(node.RootDir(), "plugins_registry"),
		filepath.Join(node.RootDir(), "plugins", "gpu.gpulet.dev"): filepath.Join(node.RootDir(), "plugins", "gpu.gpulet.dev"),
		node.CDIRoot(): node.CDIRoot(),
	} {
		if !slices.ContainsFunc(rec.Mounts, func(m bed.Mount) bool { return m.HostPath == hostPath && m.ContainerPath == containerPath }) {
			t.Errorf("no mount of %s at %s in %+v", hostPath, containerPath, rec.Mounts)
		}
	}
	sc := rec.Request.GetConfig().GetLinux().GetSecurityContext()
	switch {
	case sc.GetPrivileged():
		t.Error("container is privileged; the defaults need no privileges")
	case !slices.Equal(sc.GetCapabilities().GetDropCapabilities(), []string{"ALL"}) || len(sc.GetCapabilities().GetAddCapabilities()) > 0:
		t.Errorf("capabilities %+v, want all dropped and none added", sc.GetCapabilities())
	case !sc.GetReadonlyRootfs() || !sc.GetNoNewPrivs():
		t.Errorf("readonly rootfs %v, no new privileges %v: want both", sc.GetReadonlyRootfs(), sc.GetNoNewPrivs())
	case sc.GetRunAsUser() == nil || sc.GetRunAsUser().GetValue() != 0:
		t.Errorf("runs as %v, want uid 0 (root-owned host paths)", sc.GetRunAsUser())
	}

	// The token the kubelet mounted, read where the kubelet wrote it.
	i := slices.IndexFunc(rec.Mounts, func(m bed.Mount) bool {
		return m.ContainerPath == "/var/run/secrets/kubernetes.io/serviceaccount"
	})
	if i < 0 {
		t.Fatalf("no service-account token volume in %+v", rec.Mounts)
	}
	var token string
	bed.Eventually(t, 30*time.Second, "the pod's service-account token", func(context.Context) error {
		data, err := node.ReadKubeletFile(filepath.Join(rec.Mounts[i].HostPath, "token"))
		if err != nil {
			return err
		}
		if token = strings.TrimSpace(string(data)); token == "" {
			return errors.New("empty token file")
		}
		return nil
	})
	gpulet := clientFor(t, c, token)
	review, err := gpulet.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := review.Status.UserInfo.Extra[nodeNameKey]; len(got) != 1 || got[0] != node.Name() {
		t.Fatalf("the DaemonSet pod's token has %s = %v, want [%s]; user %+v", nodeNameKey, got, node.Name(), review.Status.UserInfo)
	}

	t.Logf("pod %s on node %s (priority %d); its kubelet-mounted token authenticates as %s with %s=%v",
		pod.Name, node.Name(), *pod.Spec.Priority, review.Status.UserInfo.Username, nodeNameKey, review.Status.UserInfo.Extra[nodeNameKey])

	other := createNode(t, admin, "not-"+node.Name())
	policy := release + "-node-resourceslices"
	bed.Eventually(t, 60*time.Second, "the policy refuses the pod's token a slice of another node", func(ctx context.Context) error {
		s, err := gpulet.ResourceV1().ResourceSlices().Create(ctx, slice(other.Name, driverName), metav1.CreateOptions{})
		if err == nil {
			_ = admin.ResourceV1().ResourceSlices().Delete(ctx, s.Name, metav1.DeleteOptions{})
			return errors.New("created; policy not in force yet")
		}
		if !strings.Contains(err.Error(), policy) {
			return fmt.Errorf("refused, but not by %s: %w", policy, err)
		}
		return nil
	})
	s, err := gpulet.ResourceV1().ResourceSlices().Create(ctx, slice(node.Name(), driverName), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("the DaemonSet pod's token may not create a slice of its own node: %v", err)
	}
	if err := gpulet.ResourceV1().ResourceSlices().Delete(ctx, s.Name, metav1.DeleteOptions{}); err != nil {
		t.Errorf("delete its own slice: %v", err)
	}
}
