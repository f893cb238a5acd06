package dra

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/gpulet/gpulet/tests/e2e/bed"
)

// bothNode is a node whose gpulet serves the device plugin and the DRA
// driver at once, on a simulated DGX H100 whose state file the test edits.
type bothNode struct {
	node   *bed.Node
	gpulet *bed.Gpulet
	state  string
}

const bothConfig = `version: v1
gpulet:
  devicePlugin:
    enabled: true
  dra:
    enabled: true
  health:
    recoveryQuietPeriod: 2s
`

func startBoth(t *testing.T, c *bed.ControlPlane) *bothNode {
	t.Helper()
	ensureDeviceClasses(t, c)
	node := c.StartNode(t, bed.NodeOptions{})
	state := filepath.Join(node.Dir(), "state.yaml")
	writeState(t, state, node.Name(), "")
	config := filepath.Join(node.Dir(), "gpulet.yaml")
	if err := os.WriteFile(config, []byte(bothConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	g := node.StartGpulet(t, "--nvml=mock:"+state, "--config="+config)
	b := &bothNode{node: node, gpulet: g, state: state}
	b.waitAllocatable(t, 8)
	b.waitSlices(t, c, 8)
	return b
}

// writeState writes the simulated node's state file; devices is YAML for
// its devices list ("" for none).
func writeState(t *testing.T, path, seed, devices string) {
	t.Helper()
	content := "machine: dgx-h100\nnodeSeed: " + seed + "\n"
	if devices != "" {
		content += "devices: " + devices + "\n"
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// registrations counts gpulet's registrations of nvidia.com/gpu with the
// kubelet, from its log.
func (b *bothNode) registrations(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile(b.gpulet.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, `"Registered with the kubelet"`) && strings.Contains(line, `resource="nvidia.com/gpu"`) {
			n++
		}
	}
	return n
}

func (b *bothNode) waitAllocatable(t *testing.T, want int64) {
	t.Helper()
	bed.Eventually(t, 90*time.Second, fmt.Sprintf("allocatable nvidia.com/gpu=%d", want), func(ctx context.Context) error {
		n, err := b.node.Object(ctx)
		if err != nil {
			return err
		}
		if q := n.Status.Allocatable["nvidia.com/gpu"]; q.Value() != want {
			return fmt.Errorf("allocatable nvidia.com/gpu=%s", q.String())
		}
		return nil
	})
}

// waitSlices waits for the node's whole-GPU devices to be published.
func (b *bothNode) waitSlices(t *testing.T, c *bed.ControlPlane, gpus int) {
	t.Helper()
	bed.Eventually(t, 90*time.Second, fmt.Sprintf("%d GPUs in the slices", gpus), func(ctx context.Context) error {
		n := len(b.publishedGPUs(ctx, t, c))
		if n != gpus {
			return fmt.Errorf("%d GPUs published", n)
		}
		return nil
	})
}

// publishedGPUs returns the node's published whole GPUs by name.
func (b *bothNode) publishedGPUs(ctx context.Context, t *testing.T, c *bed.ControlPlane) map[string]resourceapi.Device {
	list, err := c.Client().ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + b.node.Name()})
	if err != nil {
		t.Logf("list slices: %v", err)
		return nil
	}
	out := map[string]resourceapi.Device{}
	for _, s := range list.Items {
		for _, d := range s.Spec.Devices {
			if str(d.Attributes, "type") == "gpu" && !strings.HasSuffix(d.Name, "-shared") {
				out[d.Name] = d
			}
		}
	}
	return out
}

// waitDevicePluginTaints waits until n whole GPUs in the node's slices
// carry the taint that says the device plugin holds them: from then on the
// scheduler will not hand those GPUs to a claim. A DRA pod created before
// that may race a device-plugin pod for one GPU (case 6 covers that race).
func (b *bothNode) waitDevicePluginTaints(t *testing.T, c *bed.ControlPlane, n int) {
	t.Helper()
	bed.Eventually(t, 60*time.Second, fmt.Sprintf("%d GPUs tainted as held by the device plugin", n), func(ctx context.Context) error {
		got := 0
		for _, d := range b.publishedGPUs(ctx, t, c) {
			for _, taint := range d.Taints {
				if taint.Key == "gpu.gpulet.dev/device-plugin" {
					got++
				}
			}
		}
		if got != n {
			return fmt.Errorf("%d GPUs tainted", got)
		}
		return nil
	})
}

// gpuPod makes a pod asking for one GPU through the device plugin.
func gpuPod(t *testing.T, c *bed.ControlPlane, node *bed.Node, ns, name string) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			NodeSelector: map[string]string{"kubernetes.io/hostname": node.Name()},
			Containers: []corev1.Container{{Name: "main", Image: "registry.example/cuda:1",
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("1")}}}},
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To[int64](1),
		},
	}
	if _, err := c.Client().CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// runningGPUs maps each running container of the node to the GPU device
// nodes the CDI library gives it, and fails the test if a GPU is in two.
func runningGPUs(t *testing.T, node *bed.Node) map[string][]string {
	t.Helper()
	owner := map[string]string{}
	out := map[string][]string{}
	for _, rec := range node.CRI().Containers() {
		if !rec.Running() || len(rec.CDIDevices) == 0 {
			continue
		}
		who := rec.PodNamespace + "/" + rec.PodName
		nodes := gpuNodes(inject(t, node, rec.CDIDevices))
		out[who] = nodes
		for _, n := range nodes {
			if prev, ok := owner[n]; ok && prev != who {
				t.Errorf("GPU %s is in two running containers: %s and %s", n, prev, who)
			}
			owner[n] = who
		}
	}
	return out
}

// TestBothAPIsNeverShareAGPU (case 6): the device plugin and the DRA
// driver run on one node of 8 GPUs; 7 pods ask for nvidia.com/gpu and 7
// for a ResourceClaim, all at once, more than the node has. No GPU is
// ever in two containers, and every pod that does not run says why.
//
// The node fills up to at least 7 of its 8 GPUs, not always 8: the
// scheduler allocates a claim before the kubelet admits the pod, so in a
// burst the device plugin can hand out a GPU a claim is already
// allocated to, and that claim's pod then waits on it while another GPU
// may sit free (a known gap: the device plugin would have to withdraw
// GPUs as soon as claims are allocated to them, not when prepared).
func TestBothAPIsNeverShareAGPU(t *testing.T) {
	c := bed.Cluster(t)
	b := startBoth(t, c)
	ns := c.Namespace(t)
	claimTemplate(t, c, ns, "one-gpu", "gpu.gpulet.dev", "", "")

	var wg sync.WaitGroup
	for i := 0; i < 7; i++ {
		wg.Add(2)
		go func() { defer wg.Done(); gpuPod(t, c, b.node, ns, fmt.Sprintf("dp-%d", i)) }()
		go func() { defer wg.Done(); createPod(t, c, b.node, ns, fmt.Sprintf("dra-%d", i), "one-gpu") }()
	}
	wg.Wait()

	// The node fills up (see above): at least 7 containers run, each with
	// its own GPU.
	var running int
	bed.Eventually(t, 180*time.Second, "at least 7 running containers, one GPU each", func(context.Context) error {
		held := runningGPUs(t, b.node)
		gpus := map[string]bool{}
		for _, nodes := range held {
			for _, n := range nodes {
				gpus[n] = true
			}
		}
		if len(held) < 7 || len(gpus) != len(held) {
			return fmt.Errorf("%d running containers hold %d GPUs", len(held), len(gpus))
		}
		running = len(held)
		return nil
	})
	// It stays so: nothing starts on a GPU someone else holds, and
	// nothing that ran stops.
	time.Sleep(10 * time.Second)
	held := runningGPUs(t, b.node)
	if len(held) < running {
		t.Errorf("%d running containers after 10s more, were %d", len(held), running)
	}
	t.Logf("%d of 8 GPUs in use by running containers", len(held))

	// Every pod that does not run says why: unschedulable, refused at
	// admission, or its claim refused at prepare, naming the holder.
	pods, err := c.Client().CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	events, err := c.Client().CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodRunning {
			continue
		}
		reason := p.Status.Reason + " " + p.Status.Message
		for _, cond := range p.Status.Conditions {
			if cond.Status == corev1.ConditionFalse {
				reason += " " + cond.Reason + " " + cond.Message
			}
		}
		for _, ev := range events.Items {
			if ev.InvolvedObject.Name == p.Name && ev.Type == corev1.EventTypeWarning {
				reason += " " + ev.Reason + ": " + ev.Message
			}
		}
		if strings.TrimSpace(reason) == "" {
			t.Errorf("pod %s is %s with no reason given", p.Name, p.Status.Phase)
		}
		t.Logf("pod %s %s: %s", p.Name, p.Status.Phase, reason)
	}
}

// TestFaults (case 5): on a node serving both APIs, with pods holding GPUs
// through each: an XID and its recovery, a kubelet restart, gpulet killed
// and restarted during prepares, and the API server gone for 60s. After
// each, nothing is lost or double-allocated, slices are republished and
// health is reported.
func TestFaults(t *testing.T) {
	c := bed.Cluster(t)
	b := startBoth(t, c)
	ns := c.Namespace(t)
	claimTemplate(t, c, ns, "one-gpu", "gpu.gpulet.dev", "", "")
	gpuPod(t, c, b.node, ns, "dp-0")
	waitRunning(t, c, ns, "dp-0")
	b.waitDevicePluginTaints(t, c, 1)
	createPod(t, c, b.node, ns, "dra-0", "one-gpu")
	draPod := waitRunning(t, c, ns, "dra-0")
	claim := podClaim(t, c, draPod)
	draGPU := claim.Status.Allocation.Devices.Results[0].Device

	t.Run("xid and recovery", func(t *testing.T) {
		// The DRA pod's GPU gets XID 79: its slice device is tainted, the
		// kubelet reports it in the pod's status; then it recovers.
		attrs := deviceAttributes(t, c, b.node.Name(), draGPU)
		index := integer(attrs, "index")
		writeState(t, b.state, b.node.Name(), fmt.Sprintf("[{index: %d, xids: [{id: e2e-1, xid: 79}]}]", index))
		bed.Eventually(t, 60*time.Second, "taint on "+draGPU, func(ctx context.Context) error {
			d, ok := b.publishedGPUs(ctx, t, c)[draGPU]
			if !ok || len(d.Taints) == 0 {
				return fmt.Errorf("device %s has no taint", draGPU)
			}
			return nil
		})
		bed.Eventually(t, 60*time.Second, "unhealthy device in pod status", func(ctx context.Context) error {
			p, err := c.Client().CoreV1().Pods(ns).Get(ctx, "dra-0", metav1.GetOptions{})
			if err != nil {
				return err
			}
			for _, cs := range p.Status.ContainerStatuses {
				for _, rs := range cs.AllocatedResourcesStatus {
					for _, r := range rs.Resources {
						if r.Health == corev1.ResourceHealthStatusUnhealthy {
							return nil
						}
					}
				}
			}
			return fmt.Errorf("container statuses: %+v", p.Status.ContainerStatuses)
		})
		// Recovery: the quiet period (2s) passes with no new XID.
		bed.Eventually(t, 60*time.Second, "taint removed from "+draGPU, func(ctx context.Context) error {
			d, ok := b.publishedGPUs(ctx, t, c)[draGPU]
			if !ok || len(d.Taints) != 0 {
				return fmt.Errorf("device %s: taints %v", draGPU, d.Taints)
			}
			return nil
		})
	})

	t.Run("kubelet restart", func(t *testing.T) {
		before := b.registrations(t)
		b.node.RestartKubelet(t)
		// A pod the restarted kubelet admits before gpulet has registered
		// again fails admission (the kubelet's rule, not gpulet's), and the
		// node's allocatable may still be the figure from before the
		// restart: wait for the registration itself.
		bed.Eventually(t, 60*time.Second, "nvidia.com/gpu registered again", func(context.Context) error {
			if n := b.registrations(t); n <= before {
				return fmt.Errorf("%d registrations, %d before the restart", n, before)
			}
			return nil
		})
		// One GPU each is held by dp-0 (counted in allocatable) and dra-0
		// (withdrawn from the device plugin).
		b.waitAllocatable(t, 7)
		gpuPod(t, c, b.node, ns, "dp-after-kubelet")
		waitRunning(t, c, ns, "dp-after-kubelet")
		b.waitDevicePluginTaints(t, c, 2)
		createPod(t, c, b.node, ns, "dra-after-kubelet", "one-gpu")
		waitRunning(t, c, ns, "dra-after-kubelet")
		waitRunning(t, c, ns, "dp-0")
		waitRunning(t, c, ns, "dra-0")
		runningGPUs(t, b.node)
	})

	t.Run("gpulet killed during prepares", func(t *testing.T) {
		for i := 0; i < 3; i++ {
			createPod(t, c, b.node, ns, fmt.Sprintf("dra-kill-%d", i), "one-gpu")
		}
		time.Sleep(300 * time.Millisecond)
		b.gpulet.Kill(t)
		b.gpulet.Start(t)
		for i := 0; i < 3; i++ {
			// The kubelet retries the failed prepares with backoff.
			waitRunningWithin(t, c, ns, fmt.Sprintf("dra-kill-%d", i), 5*time.Minute)
		}
		if held := runningGPUs(t, b.node); len(held) != 7 {
			t.Errorf("%d running containers, want 7", len(held))
		}
		b.waitSlices(t, c, 8)
	})

	t.Run("API server gone for 60s", func(t *testing.T) {
		c.StopAPIServer(t)
		time.Sleep(60 * time.Second)
		c.StartAPIServer(t)
		b.waitSlices(t, c, 8)
		createPod(t, c, b.node, ns, "dra-after-apiserver", "one-gpu")
		// The scheduler's and controllers' watches come back with backoff.
		waitRunningWithin(t, c, ns, "dra-after-apiserver", 5*time.Minute)
		if held := runningGPUs(t, b.node); len(held) != 8 {
			t.Errorf("%d running containers, want 8 (the node is full)", len(held))
		}
	})
}
