// Package dra is the DRA path of the end-to-end bed: gpulet's ResourceSlices
// accepted by a real API server, claims allocated by the real scheduler
// with CEL, prepared by the real gpulet binary when the real kubelet admits
// the pod, and what the CRI stub and the CDI library make of it.
package dra

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/gpulet/gpulet/internal/dra"
	"github.com/gpulet/gpulet/internal/simnode"
	"github.com/gpulet/gpulet/tests/e2e/bed"
)

func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }

const driver = "gpu.gpulet.dev"

// Simulated machines: every GPU of the A100 in MIG mode.
const (
	stateH100    = "machine: dgx-h100\n"
	stateB200    = "machine: dgx-b200\n"
	stateA100MIG = "machine: dgx-a100\ndevices:\n" +
		"- {index: 0, migEnabled: true}\n- {index: 1, migEnabled: true}\n- {index: 2, migEnabled: true}\n- {index: 3, migEnabled: true}\n" +
		"- {index: 4, migEnabled: true}\n- {index: 5, migEnabled: true}\n- {index: 6, migEnabled: true}\n- {index: 7, migEnabled: true}\n"
)

// TestSlicesAccepted: the ResourceSlices gpulet builds for each machine
// (whole GPUs, shared twins, MIG placements with their counter sets) are
// created through a real API server, admission and validation included,
// and read back unchanged; and the real gpulet binary, on a real node,
// gets all of them published.
func TestSlicesAccepted(t *testing.T) {
	c := bed.Cluster(t)
	for _, tc := range []struct{ name, state string }{
		{"dgx-h100", stateH100},
		{"dgx-a100-mig", stateA100MIG},
		{"dgx-b200", stateB200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := simnode.New(t, tc.state)
			nodeName := "accept-" + tc.name
			objs := dra.SliceObjects(dra.BuildResources(node.Inventory, dra.PublishOptions{
				DriverName: driver, NodeName: nodeName, ConsumableCapacity: true, PCIeRoots: dra.TopologyPCIeRoots(node.Inventory),
			}), driver, nodeName)
			devices := 0
			for _, o := range objs {
				o.TypeMeta = metav1.TypeMeta{}
				got, err := c.Client().ResourceV1().ResourceSlices().Create(t.Context(), o, metav1.CreateOptions{})
				if err != nil {
					t.Fatalf("slice %s (%d devices, %d counter sets) refused: %v", o.Name, len(o.Spec.Devices), len(o.Spec.SharedCounters), err)
				}
				t.Cleanup(func() {
					_ = c.Client().ResourceV1().ResourceSlices().Delete(context.Background(), got.Name, metav1.DeleteOptions{})
				})
				if len(got.Spec.Devices) != len(o.Spec.Devices) || len(got.Spec.SharedCounters) != len(o.Spec.SharedCounters) {
					t.Errorf("slice %s came back with %d devices and %d counter sets, sent %d and %d (fields dropped?)",
						o.Name, len(got.Spec.Devices), len(got.Spec.SharedCounters), len(o.Spec.Devices), len(o.Spec.SharedCounters))
				}
				for i, d := range got.Spec.Devices {
					sent := o.Spec.Devices[i]
					if len(d.ConsumesCounters) != len(sent.ConsumesCounters) || len(d.Attributes) != len(sent.Attributes) ||
						(sent.AllowMultipleAllocations != nil) != (d.AllowMultipleAllocations != nil) {
						t.Errorf("device %s came back changed: %+v", d.Name, d)
					}
				}
				devices += len(o.Spec.Devices)
			}
			t.Logf("%d slices, %d devices accepted", len(objs), devices)

			// And as the real gpulet publishes them through the
			// resourceslice controller (startGpulet waits for them all).
			g := startGpulet(t, c, tc.state, true)
			t.Logf("gpulet published %d devices for node %s", g.devices, g.node.Name())
		})
	}
}

// gpuletNode is a node running the real gpulet binary with the DRA driver
// on and the device plugin off.
type gpuletNode struct {
	node    *bed.Node
	gpulet  *bed.Gpulet
	devices int
}

// startGpulet starts a node and gpulet on a simulated machine, and waits
// until the API server has the node's ResourceSlices with all its devices.
func startGpulet(t *testing.T, c *bed.ControlPlane, state string, consumable bool) *gpuletNode {
	t.Helper()
	ensureDeviceClasses(t, c)
	node := c.StartNode(t, bed.NodeOptions{})
	statePath := filepath.Join(node.Dir(), "state.yaml")
	if err := os.WriteFile(statePath, []byte(state+"nodeSeed: "+node.Name()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf("version: v1\ngpulet:\n  devicePlugin:\n    enabled: false\n  dra:\n    enabled: true\n    sharing:\n      consumableCapacity:\n        enabled: %v\n", consumable)
	configPath := filepath.Join(node.Dir(), "gpulet.yaml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	// What gpulet will publish: the same machine, the same seed.
	sim := simnode.New(t, state+"nodeSeed: "+node.Name()+"\n")
	want := len(dra.BuildResources(sim.Inventory, dra.PublishOptions{DriverName: driver, NodeName: node.Name(), ConsumableCapacity: consumable}).Pools[node.Name()].Slices)
	wantDevices := 0
	for _, s := range dra.BuildResources(sim.Inventory, dra.PublishOptions{DriverName: driver, NodeName: node.Name(), ConsumableCapacity: consumable}).Pools[node.Name()].Slices {
		wantDevices += len(s.Devices)
	}
	g := node.StartGpulet(t, "--nvml=mock:"+statePath, "--config="+configPath)
	bed.Eventually(t, 90*time.Second, fmt.Sprintf("%d ResourceSlices of node %s", want, node.Name()), func(ctx context.Context) error {
		list, err := c.Client().ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node.Name()})
		if err != nil {
			return err
		}
		devices := 0
		for _, s := range list.Items {
			devices += len(s.Spec.Devices)
		}
		if len(list.Items) != want || devices != wantDevices {
			return fmt.Errorf("%d slices with %d devices, want %d with %d", len(list.Items), devices, want, wantDevices)
		}
		return nil
	})
	return &gpuletNode{node: node, gpulet: g, devices: wantDevices}
}

var deviceClassesOnce sync.Once

// ensureDeviceClasses creates the DeviceClasses of deployments/deviceclasses
// (cluster-scoped, shared by the package's tests).
func ensureDeviceClasses(t *testing.T, c *bed.ControlPlane) {
	t.Helper()
	var err error
	deviceClassesOnce.Do(func() {
		files, _ := filepath.Glob("../../../deployments/deviceclasses/*.yaml")
		if len(files) == 0 {
			err = errors.New("no DeviceClasses under deployments/deviceclasses")
			return
		}
		for _, f := range files {
			data, rerr := os.ReadFile(f)
			if rerr != nil {
				err = rerr
				return
			}
			var dc resourceapi.DeviceClass
			if uerr := yaml.UnmarshalStrict(data, &dc); uerr != nil {
				err = fmt.Errorf("%s: %w", f, uerr)
				return
			}
			if _, cerr := c.Client().ResourceV1().DeviceClasses().Create(context.Background(), &dc, metav1.CreateOptions{}); cerr != nil && !apierrors.IsAlreadyExists(cerr) {
				err = fmt.Errorf("%s: %w", f, cerr)
				return
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// claimTemplate creates a ResourceClaimTemplate with one exactly-one
// request.
func claimTemplate(t *testing.T, c *bed.ControlPlane, ns, name, class, selector, memory string) {
	t.Helper()
	req := resourceapi.ExactDeviceRequest{DeviceClassName: class, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1}
	if selector != "" {
		req.Selectors = []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: selector}}}
	}
	if memory != "" {
		req.Capacity = &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{"memory": resource.MustParse(memory)}}
	}
	tmpl := &resourceapi.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: resourceapi.ResourceClaimTemplateSpec{Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
			Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &req}},
		}}},
	}
	if _, err := c.Client().ResourceV1().ResourceClaimTemplates(ns).Create(t.Context(), tmpl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// createPod creates a pod on the node whose container uses one claim made
// from a template.
func createPod(t *testing.T, c *bed.ControlPlane, node *bed.Node, ns, name, template string) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			NodeSelector:   map[string]string{"kubernetes.io/hostname": node.Name()},
			ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: &template}},
			Containers: []corev1.Container{{
				Name: "main", Image: "registry.example/cuda:1",
				Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}},
			}},
			TerminationGracePeriodSeconds: ptr.To[int64](1),
		},
	}
	if _, err := c.Client().CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func waitRunning(t *testing.T, c *bed.ControlPlane, ns, name string) *corev1.Pod {
	t.Helper()
	return waitRunningWithin(t, c, ns, name, 90*time.Second)
}

// waitRunningWithin waits for a pod to run. After a fault the kubelet and
// the controllers retry with backoff, which can take minutes.
func waitRunningWithin(t *testing.T, c *bed.ControlPlane, ns, name string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	bed.Eventually(t, timeout, "pod "+name+" running", func(ctx context.Context) error {
		p, err := c.Client().CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("phase %s: %v", p.Status.Phase, p.Status.Conditions)
		}
		pod = p
		return nil
	})
	return pod
}

// waitUnschedulable waits until the scheduler says the pod cannot be
// scheduled, and checks it stays so for a while.
func waitUnschedulable(t *testing.T, c *bed.ControlPlane, ns, name string) string {
	t.Helper()
	var msg string
	check := func(ctx context.Context) error {
		p, err := c.Client().CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Spec.NodeName != "" {
			return fmt.Errorf("pod %s was scheduled to %s", name, p.Spec.NodeName)
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionFalse && cond.Reason == corev1.PodReasonUnschedulable {
				msg = cond.Message
				return nil
			}
		}
		return fmt.Errorf("not marked unschedulable yet: %v", p.Status.Conditions)
	}
	bed.Eventually(t, 60*time.Second, "pod "+name+" unschedulable", check)
	time.Sleep(5 * time.Second)
	if err := check(t.Context()); err != nil {
		t.Fatal(err)
	}
	return msg
}

// podClaim returns the allocated claim of a pod's "gpu" claim.
func podClaim(t *testing.T, c *bed.ControlPlane, pod *corev1.Pod) *resourceapi.ResourceClaim {
	t.Helper()
	for _, s := range pod.Status.ResourceClaimStatuses {
		if s.Name == "gpu" && s.ResourceClaimName != nil {
			claim, err := c.Client().ResourceV1().ResourceClaims(pod.Namespace).Get(t.Context(), *s.ResourceClaimName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if claim.Status.Allocation == nil || len(claim.Status.Allocation.Devices.Results) != 1 {
				t.Fatalf("claim %s: allocation %+v", claim.Name, claim.Status.Allocation)
			}
			return claim
		}
	}
	t.Fatalf("pod %s has no claim status: %+v", pod.Name, pod.Status.ResourceClaimStatuses)
	return nil
}

// deviceAttributes finds a published device's attributes.
func deviceAttributes(t *testing.T, c *bed.ControlPlane, node, device string) map[resourceapi.QualifiedName]resourceapi.DeviceAttribute {
	t.Helper()
	list, err := c.Client().ResourceV1().ResourceSlices().List(t.Context(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list.Items {
		for _, d := range s.Spec.Devices {
			if d.Name == device {
				return d.Attributes
			}
		}
	}
	t.Fatalf("device %s is not published for node %s", device, node)
	return nil
}

// inject is the runtime's side: the CDI library resolves the container's
// CDI devices from gpulet's specs into an OCI spec.
func inject(t *testing.T, node *bed.Node, devices []string) *oci.Spec {
	t.Helper()
	cache, err := cdi.NewCache(cdi.WithSpecDirs(node.CDIRoot()), cdi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	spec := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
	if _, err := cache.InjectDevices(spec, devices...); err != nil {
		t.Fatalf("inject %v: %v", devices, err)
	}
	return spec
}

var gpuNode = regexp.MustCompile(`^/dev/nvidia[0-9]+$`)

func gpuNodes(s *oci.Spec) []string {
	var out []string
	for _, d := range s.Linux.Devices {
		if gpuNode.MatchString(d.Path) {
			out = append(out, d.Path)
		}
	}
	slices.Sort(out)
	return out
}

func env(s *oci.Spec, key string) string {
	v := ""
	for _, e := range s.Process.Env {
		if k, val, ok := strings.Cut(e, "="); ok && k == key {
			v = val
		}
	}
	return v
}

func str(a map[resourceapi.QualifiedName]resourceapi.DeviceAttribute, name string) string {
	if v := a[resourceapi.QualifiedName(name)].StringValue; v != nil {
		return *v
	}
	return ""
}

func integer(a map[resourceapi.QualifiedName]resourceapi.DeviceAttribute, name string) int64 {
	if v := a[resourceapi.QualifiedName(name)].IntValue; v != nil {
		return *v
	}
	return -1
}
