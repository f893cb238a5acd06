// Package deviceplugin is case 3 of the end-to-end bed: the real gpulet
// binary serving the device-plugin API to a real kubelet, pods scheduled
// by the real scheduler, and what the CRI stub receives.
package deviceplugin

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/gpulet/gpulet/tests/e2e/bed"
)

func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }

// gpu is what `gpulet inventory -o json` says of a GPU.
type gpu struct {
	Index        int    `json:"index"`
	UUID         string `json:"uuid"`
	Minor        int    `json:"minor"`
	NVLinkDomain string `json:"nvlinkDomain"`
}

// inventory runs the real CLI on a state file.
func inventory(t *testing.T, state string) map[string]gpu {
	t.Helper()
	bin, err := bed.GpuletBinary()
	if err != nil {
		t.Skip(err)
	}
	out, err := exec.Command(bin, "inventory", "--nvml=mock:"+state, "-o", "json").Output()
	if err != nil {
		t.Fatalf("gpulet inventory: %v", err)
	}
	var inv struct {
		GPUs []gpu `json:"gpus"`
	}
	if err := json.Unmarshal(out, &inv); err != nil {
		t.Fatal(err)
	}
	byUUID := map[string]gpu{}
	for _, g := range inv.GPUs {
		byUUID[g.UUID] = g
	}
	return byUUID
}

// writeFile writes content into the node's directory and returns its path.
func writeFile(t *testing.T, node *bed.Node, name, content string) string {
	t.Helper()
	path := filepath.Join(node.Dir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func waitAllocatable(t *testing.T, node *bed.Node, want map[string]int64) {
	t.Helper()
	bed.Eventually(t, 90*time.Second, fmt.Sprintf("allocatable %v", want), func(ctx context.Context) error {
		n, err := node.Object(ctx)
		if err != nil {
			return err
		}
		for name, v := range want {
			if q := n.Status.Allocatable[corev1.ResourceName(name)]; q.Value() != v {
				return fmt.Errorf("allocatable %s=%s, want %d (all: %v)", name, q.String(), v, n.Status.Allocatable)
			}
		}
		return nil
	})
}

// runPod creates a pod with one container asking for limits on node and
// waits for it to run.
func runPod(t *testing.T, c *bed.ControlPlane, node *bed.Node, ns, name string, limits corev1.ResourceList) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{"kubernetes.io/hostname": node.Name()},
			Containers:                    []corev1.Container{{Name: "main", Image: "registry.example/cuda:1", Resources: corev1.ResourceRequirements{Limits: limits}}},
			TerminationGracePeriodSeconds: ptr.To[int64](1),
		},
	}
	if _, err := c.Client().CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bed.Eventually(t, 60*time.Second, "pod "+name+" running", func(ctx context.Context) error {
		p, err := c.Client().CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("phase %s: %v %v", p.Status.Phase, p.Status.Conditions, p.Status.ContainerStatuses)
		}
		return nil
	})
}

// TestWholeGPUsNVLinkPaired: on a board of two NVLink islands, a pod asking
// for two GPUs gets exactly two GPUs' CDI devices, from one island (the
// kubelet asked GetPreferredAllocation), and the CDI library injects
// exactly those two device nodes.
func TestWholeGPUsNVLinkPaired(t *testing.T) {
	c := bed.Cluster(t)
	node := c.StartNode(t, bed.NodeOptions{})
	state := writeFile(t, node, "islands.yaml", "machine: dgx-h100\ntopology: islands\nnodeSeed: "+node.Name()+"\n")
	gpus := inventory(t, state)
	node.StartGpulet(t, "--nvml=mock:"+state)
	waitAllocatable(t, node, map[string]int64{"nvidia.com/gpu": 8})

	ns := c.Namespace(t)
	// Take GPU pairs until three pods hold six GPUs: each pair must come
	// from one island even as the islands fill up.
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("pair-%d", i)
		runPod(t, c, node, ns, name, corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("2")})
		rec := node.CRI().WaitPodContainer(t, 30*time.Second, ns, name, "main")
		if len(rec.CDIDevices) != 2 {
			t.Fatalf("%s: CDI devices %v, want 2", name, rec.CDIDevices)
		}
		var uuids []string
		for _, d := range rec.CDIDevices {
			uuid, ok := strings.CutPrefix(d, "gpulet.dev/gpu=")
			if !ok {
				t.Fatalf("%s: CDI device %q is not gpulet's", name, d)
			}
			uuids = append(uuids, uuid)
		}
		a, b := gpus[uuids[0]], gpus[uuids[1]]
		if a.UUID == "" || b.UUID == "" || a.Index/4 != b.Index/4 {
			t.Errorf("%s: GPUs %d and %d are not in one NVLink island", name, a.Index, b.Index)
		}

		// The runtime's side: the CDI library reads gpulet's spec and
		// gives the container exactly these GPUs' nodes.
		cache, err := cdi.NewCache(cdi.WithSpecDirs(node.CDIRoot()), cdi.WithAutoRefresh(false))
		if err != nil {
			t.Fatal(err)
		}
		spec := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
		if _, err := cache.InjectDevices(spec, rec.CDIDevices...); err != nil {
			t.Fatalf("%s: inject %v: %v", name, rec.CDIDevices, err)
		}
		var gpuNodes []string
		for _, d := range spec.Linux.Devices {
			if rest, ok := strings.CutPrefix(d.Path, "/dev/nvidia"); ok && rest != "" && rest[0] >= '0' && rest[0] <= '9' {
				gpuNodes = append(gpuNodes, d.Path)
			}
		}
		slices.Sort(gpuNodes)
		want := []string{fmt.Sprintf("/dev/nvidia%d", min(a.Minor, b.Minor)), fmt.Sprintf("/dev/nvidia%d", max(a.Minor, b.Minor))}
		if !slices.Equal(gpuNodes, want) {
			t.Errorf("%s: container gets GPU nodes %v, want %v", name, gpuNodes, want)
		}
	}
}

// TestMIGAndTimeSlicingResources: the resources a NVIDIA device plugin
// config asks for show up in the node's allocatable, and a pod asking for
// a MIG slice gets that MIG device.
func TestMIGAndTimeSlicingResources(t *testing.T) {
	c := bed.Cluster(t)
	node := c.StartNode(t, bed.NodeOptions{})
	state := writeFile(t, node, "mig.yaml", `machine: dgx-a100
nodeSeed: `+node.Name()+`
devices:
- {index: 0, migEnabled: true, mig: [{profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}]}
- {index: 1, migEnabled: true, mig: [{profile: 3g.40gb}, {profile: 3g.40gb}]}
`)
	// NVIDIA's config format, as a user's ConfigMap would hold it.
	config := writeFile(t, node, "config.yaml", `version: v1
flags:
  migStrategy: mixed
sharing:
  timeSlicing:
    renameByDefault: true
    resources:
    - name: nvidia.com/gpu
      replicas: 4
`)
	node.StartGpulet(t, "--nvml=mock:"+state, "--config="+config)
	waitAllocatable(t, node, map[string]int64{
		"nvidia.com/gpu.shared":  6 * 4,
		"nvidia.com/mig-1g.10gb": 7,
		"nvidia.com/mig-3g.40gb": 2,
	})
	ns := c.Namespace(t)
	runPod(t, c, node, ns, "mig", corev1.ResourceList{"nvidia.com/mig-3g.40gb": resource.MustParse("1")})
	rec := node.CRI().WaitPodContainer(t, 30*time.Second, ns, "mig", "main")
	if len(rec.CDIDevices) != 1 || !strings.HasPrefix(rec.CDIDevices[0], "gpulet.dev/gpu=MIG-") {
		t.Errorf("MIG pod got CDI devices %v, want one MIG device", rec.CDIDevices)
	}
	runPod(t, c, node, ns, "shared", corev1.ResourceList{"nvidia.com/gpu.shared": resource.MustParse("1")})
	rec = node.CRI().WaitPodContainer(t, 30*time.Second, ns, "shared", "main")
	if len(rec.CDIDevices) != 1 || !strings.HasPrefix(rec.CDIDevices[0], "gpulet.dev/gpu=GPU-") {
		t.Errorf("shared pod got CDI devices %v, want one GPU", rec.CDIDevices)
	}
}
