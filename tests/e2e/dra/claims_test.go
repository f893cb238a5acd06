package dra

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/gpulet/gpulet/tests/e2e/bed"
)

// claimSpecPath is where gpulet writes a claim's CDI spec.
func claimSpecPath(node *bed.Node, uid string) string {
	return filepath.Join(node.CDIRoot(), "gpulet.dev-claim_"+uid+".json")
}

func waitGone(t *testing.T, path string) {
	t.Helper()
	bed.Eventually(t, 60*time.Second, path+" removed", func(context.Context) error {
		if _, err := os.Stat(path); err == nil {
			return fmt.Errorf("%s still exists", path)
		}
		return nil
	})
}

func deletePod(t *testing.T, c *bed.ControlPlane, ns, name string) {
	t.Helper()
	if err := c.Client().CoreV1().Pods(ns).Delete(t.Context(), name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
}

// waitLog waits for a line of gpulet's log that contains every one of
// the strings.
func waitLog(t *testing.T, g *gpuletNode, parts ...string) {
	t.Helper()
	bed.Eventually(t, 60*time.Second, fmt.Sprintf("gpulet log line with %q", parts), func(context.Context) error {
		data, err := os.ReadFile(g.gpulet.LogPath())
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(data), "\n") {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				return nil
			}
		}
		return fmt.Errorf("no such line yet")
	})
}

// TestCELClaimPreparedAndInjected: a claim that selects a GPU with CEL on
// gpulet's attributes and memory capacity is allocated by the real
// scheduler; the real kubelet has gpulet prepare it; the container the CRI
// stub receives names the claim's CDI device, and the CDI library turns it
// into exactly that GPU. Deleting the pod unprepares the claim.
func TestCELClaimPreparedAndInjected(t *testing.T) {
	c := bed.Cluster(t)
	g := startGpulet(t, c, stateH100, false)
	node := g.node
	ns := c.Namespace(t)
	claimTemplate(t, c, ns, "h100", "gpu.gpulet.dev",
		`device.attributes["gpu.gpulet.dev"].productName == "NVIDIA H100 80GB HBM3" && `+
			`device.capacity["gpu.gpulet.dev"].memory.compareTo(quantity("79Gi")) >= 0 && `+
			`device.attributes["gpu.gpulet.dev"].index == 5`, "")
	createPod(t, c, node, ns, "trainer", "h100")
	pod := waitRunning(t, c, ns, "trainer")
	claim := podClaim(t, c, pod)
	res := claim.Status.Allocation.Devices.Results[0]
	if res.Driver != driver || res.Pool != node.Name() {
		t.Fatalf("allocated %s/%s/%s", res.Driver, res.Pool, res.Device)
	}
	attrs := deviceAttributes(t, c, node.Name(), res.Device)
	if integer(attrs, "index") != 5 {
		t.Errorf("the scheduler picked %s, GPU index %d; the selector asks for 5", res.Device, integer(attrs, "index"))
	}

	rec := node.CRI().WaitPodContainer(t, 30*time.Second, ns, "trainer", "main")
	want := "gpulet.dev/gpu=" + string(claim.UID) + "-" + res.Device
	if !slices.Equal(rec.CDIDevices, []string{want}) {
		t.Fatalf("container CDI devices %v, want [%s]", rec.CDIDevices, want)
	}
	spec := inject(t, node, rec.CDIDevices)
	if got, w := gpuNodes(spec), []string{fmt.Sprintf("/dev/nvidia%d", integer(attrs, "minor"))}; !slices.Equal(got, w) {
		t.Errorf("the container gets GPU nodes %v, want %v", got, w)
	}
	if got := env(spec, "NVIDIA_VISIBLE_DEVICES"); got != str(attrs, "uuid") {
		t.Errorf("NVIDIA_VISIBLE_DEVICES=%q, want the GPU's UUID %s", got, str(attrs, "uuid"))
	}

	deletePod(t, c, ns, "trainer")
	waitGone(t, claimSpecPath(node, string(claim.UID)))
}

// TestMIGOnDemand: a claim for a 1g.10gb placement gets a MIG device that
// gpulet creates on prepare; a claim for the whole parent GPU is not
// schedulable meanwhile (the GPU's counters are taken); when the first pod
// goes, gpulet destroys the MIG device and the whole-GPU claim is
// allocated and prepared.
func TestMIGOnDemand(t *testing.T) {
	c := bed.Cluster(t)
	g := startGpulet(t, c, "machine: dgx-a100\ngpus: 2\ndevices:\n- {index: 0, migEnabled: true}\n", false)
	node := g.node
	ns := c.Namespace(t)
	claimTemplate(t, c, ns, "small", "mig.gpulet.dev", `device.attributes["gpu.gpulet.dev"].profile == "1g.10gb"`, "")
	claimTemplate(t, c, ns, "whole0", "gpu.gpulet.dev", `device.attributes["gpu.gpulet.dev"].index == 0`, "")

	createPod(t, c, node, ns, "mig", "small")
	pod := waitRunning(t, c, ns, "mig")
	claim := podClaim(t, c, pod)
	res := claim.Status.Allocation.Devices.Results[0]
	attrs := deviceAttributes(t, c, node.Name(), res.Device)
	if str(attrs, "type") != "mig" || str(attrs, "profile") != "1g.10gb" || integer(attrs, "parentIndex") != 0 {
		t.Fatalf("allocated %s: %v", res.Device, attrs)
	}
	waitLog(t, g, "Created MIG device", res.Device)
	rec := node.CRI().WaitPodContainer(t, 30*time.Second, ns, "mig", "main")
	spec := inject(t, node, rec.CDIDevices)
	if v := env(spec, "NVIDIA_VISIBLE_DEVICES"); !strings.HasPrefix(v, "MIG-") {
		t.Errorf("NVIDIA_VISIBLE_DEVICES=%q, want the new MIG device's UUID", v)
	}
	caps := 0
	for _, d := range spec.Linux.Devices {
		if strings.HasPrefix(d.Path, "/dev/nvidia-caps/") {
			caps++
		}
	}
	if caps != 2 {
		t.Errorf("the container gets %d MIG capability nodes, want 2 (GPU instance and compute instance)", caps)
	}

	createPod(t, c, node, ns, "whole", "whole0")
	msg := waitUnschedulable(t, c, ns, "whole")
	t.Logf("whole-GPU pod while the MIG device is held: %s", msg)

	deletePod(t, c, ns, "mig")
	waitLog(t, g, "Destroyed MIG device", res.Device)
	waitGone(t, claimSpecPath(node, string(claim.UID)))
	pod = waitRunning(t, c, ns, "whole")
	whole := podClaim(t, c, pod).Status.Allocation.Devices.Results[0]
	wattrs := deviceAttributes(t, c, node.Name(), whole.Device)
	if str(wattrs, "uuid") != str(attrs, "parentUUID") {
		t.Errorf("the whole-GPU claim got %s, want the MIG device's parent %s", str(wattrs, "uuid"), str(attrs, "parentUUID"))
	}
	wrec := node.CRI().WaitPodContainer(t, 30*time.Second, ns, "whole", "main")
	if got, w := gpuNodes(inject(t, node, wrec.CDIDevices)), []string{fmt.Sprintf("/dev/nvidia%d", integer(wattrs, "minor"))}; !slices.Equal(got, w) {
		t.Errorf("the whole-GPU container gets %v, want %v", got, w)
	}
}

// TestConsumableCapacity: on a node with one GPU published for sharing,
// two claims of 30Gi each are allocated on it and prepared, each told its
// share; a third 30Gi claim does not fit the GPU's 80GB and is not
// scheduled.
func TestConsumableCapacity(t *testing.T) {
	c := bed.Cluster(t)
	g := startGpulet(t, c, "machine: dgx-h100\ngpus: 1\n", true)
	node := g.node
	ns := c.Namespace(t)
	claimTemplate(t, c, ns, "share", "shared-gpu.gpulet.dev", "", "30Gi")
	var devices, shares []string
	for _, name := range []string{"share-1", "share-2"} {
		createPod(t, c, node, ns, name, "share")
		pod := waitRunning(t, c, ns, name)
		res := podClaim(t, c, pod).Status.Allocation.Devices.Results[0]
		if res.ShareID == nil {
			t.Fatalf("%s: allocation of %s has no share ID", name, res.Device)
		}
		if q := res.ConsumedCapacity["memory"]; q.Cmp(resource.MustParse("30Gi")) != 0 {
			t.Errorf("%s consumes %s of memory, want 30Gi", name, q.String())
		}
		devices = append(devices, res.Device)
		shares = append(shares, string(*res.ShareID))
		rec := node.CRI().WaitPodContainer(t, 30*time.Second, ns, name, "main")
		spec := inject(t, node, rec.CDIDevices)
		if len(gpuNodes(spec)) != 1 {
			t.Errorf("%s: GPU nodes %v", name, gpuNodes(spec))
		}
		if got := env(spec, "GPULET_SHARED_MEMORY_BYTES"); got != "32212254720" {
			t.Errorf("%s: GPULET_SHARED_MEMORY_BYTES=%q", name, got)
		}
		if got := env(spec, "GPULET_SHARING_STRATEGY"); got != "TimeSlicing" {
			t.Errorf("%s: GPULET_SHARING_STRATEGY=%q", name, got)
		}
	}
	if devices[0] != devices[1] || !strings.HasSuffix(devices[0], "-shared") || shares[0] == shares[1] {
		t.Errorf("the two shares are on %v with share IDs %v; want one shared GPU, two shares", devices, shares)
	}
	createPod(t, c, node, ns, "share-3", "share")
	msg := waitUnschedulable(t, c, ns, "share-3")
	t.Logf("third share: %s", msg)
}

// TestExtendedResourceThroughDRA: a pod that asks for nvidia.com/gpu, as
// written for NVIDIA's device plugin, is served through DRA on a node
// without the device plugin: the scheduler allocates a GPU through the
// DeviceClass with extendedResourceName and gpulet prepares it.
func TestExtendedResourceThroughDRA(t *testing.T) {
	c := bed.Cluster(t)
	g := startGpulet(t, c, "machine: dgx-h100\ngpus: 2\n", false)
	node := g.node
	ns := c.Namespace(t)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "legacy", Namespace: ns},
		Spec: corev1.PodSpec{
			NodeSelector: map[string]string{"kubernetes.io/hostname": node.Name()},
			Containers: []corev1.Container{{Name: "main", Image: "registry.example/cuda:1",
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("1")}}}},
			TerminationGracePeriodSeconds: ptr.To[int64](1),
		},
	}
	if _, err := c.Client().CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, c, ns, "legacy")
	rec := node.CRI().WaitPodContainer(t, 30*time.Second, ns, "legacy", "main")
	if len(rec.CDIDevices) != 1 || !strings.HasPrefix(rec.CDIDevices[0], "gpulet.dev/gpu=") {
		t.Fatalf("container CDI devices %v, want one of gpulet's claim devices", rec.CDIDevices)
	}
	if got := gpuNodes(inject(t, node, rec.CDIDevices)); len(got) != 1 {
		t.Errorf("the container gets GPU nodes %v, want one", got)
	}
}
