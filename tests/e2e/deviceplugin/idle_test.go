package deviceplugin

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/gpulet/gpulet/tests/e2e/bed"
)

// idleConfig samples every 200ms and puts an Event on a pod whose GPU has
// stayed idle for 3s.
const idleConfig = `version: v1
gpulet:
  metrics:
    sampleInterval: 200ms
    idle:
      utilizationThreshold: 0.05
      eventAfter: 3s
`

// idleSeconds scrapes gpulet's /metrics and returns the
// gpulet_device_allocated_idle_seconds of namespace/pod, and whether the
// series exists.
func idleSeconds(ctx context.Context, port int, namespace, pod string) (float64, bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/metrics", port), nil)
	if err != nil {
		return 0, false, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, false, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return 0, false, fmt.Errorf("GET /metrics: %s: %s", resp.Status, b)
	}
	labels := []string{`namespace="` + namespace + `"`, `pod="` + pod + `"`}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "gpulet_device_allocated_idle_seconds{") {
			continue
		}
		if !strings.Contains(line, labels[0]) || !strings.Contains(line, labels[1]) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, false, fmt.Errorf("metric line %q: %w", line, err)
		}
		return v, true, nil
	}
	return 0, false, sc.Err()
}

// idleEvents returns the events.k8s.io Events gpulet put on the pod for
// an idle GPU.
func idleEvents(ctx context.Context, c *bed.ControlPlane, ns, pod string) ([]string, error) {
	list, err := c.Client().EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Name != pod || e.Reason != "GPUAllocatedIdle" {
			continue
		}
		if e.Regarding.Kind != "Pod" || e.ReportingController != "gpulet" || e.Type != corev1.EventTypeWarning {
			return nil, fmt.Errorf("unexpected event %s: regarding %s, controller %q, type %s", e.Name, e.Regarding.Kind, e.ReportingController, e.Type)
		}
		out = append(out, e.Note)
	}
	return out, nil
}

// TestIdleAllocatedGPU: a pod holds a GPU through the device plugin and
// the simulated GPU does nothing. gpulet learns who holds it from the
// kubelet's PodResources API, its idle gauge for the pod climbs, and the
// real API server gets exactly one Event on the pod; once the GPU is busy
// the gauge falls back to 0.
func TestIdleAllocatedGPU(t *testing.T) {
	c := bed.Cluster(t)
	node := c.StartNode(t, bed.NodeOptions{})
	state := writeFile(t, node, "state.yaml", "machine: dgx-h100\nnodeSeed: "+node.Name()+"\n")
	config := writeFile(t, node, "gpulet.yaml", idleConfig)
	port := bed.FreePort(t)
	node.StartGpulet(t, "--nvml=mock:"+state, "--config="+config, fmt.Sprintf("--metrics-address=127.0.0.1:%d", port))
	waitAllocatable(t, node, map[string]int64{"nvidia.com/gpu": 8})

	ns := c.Namespace(t)
	runPod(t, c, node, ns, "idle-0", corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("1")})

	// gpulet reads the holdings from PodResources every few seconds; the
	// gauge then climbs with the sampler.
	var first float64
	bed.Eventually(t, 60*time.Second, "idle gauge for idle-0 above 3s", func(ctx context.Context) error {
		v, ok, err := idleSeconds(ctx, port, ns, "idle-0")
		if err != nil {
			return err
		}
		if !ok || v < 3 {
			return fmt.Errorf("gpulet_device_allocated_idle_seconds for %s/idle-0: present %t, value %g", ns, ok, v)
		}
		first = v
		return nil
	})
	bed.Eventually(t, 30*time.Second, "one GPUAllocatedIdle Event on idle-0", func(ctx context.Context) error {
		notes, err := idleEvents(ctx, c, ns, "idle-0")
		if err != nil {
			return err
		}
		if len(notes) != 1 {
			return fmt.Errorf("%d events: %q", len(notes), notes)
		}
		if !strings.Contains(notes[0], "idle") {
			return fmt.Errorf("event note %q does not say idle", notes[0])
		}
		t.Logf("event on idle-0: %s", notes[0])
		return nil
	})
	// Still idle a while later: the gauge went on climbing, and no second
	// Event was sent for the same stretch of idleness.
	time.Sleep(3 * time.Second)
	v, ok, err := idleSeconds(t.Context(), port, ns, "idle-0")
	if err != nil || !ok || v <= first {
		t.Errorf("idle gauge after 3s more: %g (present %t, err %v), want above %g", v, ok, err, first)
	}
	if notes, err := idleEvents(t.Context(), c, ns, "idle-0"); err != nil || len(notes) != 1 {
		t.Errorf("events after 3s more: %q (err %v), want exactly one", notes, err)
	}

	// The workload starts: every GPU reports 90% utilization, and the gauge
	// drops to 0.
	busy := "machine: dgx-h100\nnodeSeed: " + node.Name() + "\ndevices:\n"
	for i := range 8 {
		busy += fmt.Sprintf("- index: %d\n  utilization: {gpu: 90}\n", i)
	}
	if err := os.WriteFile(state+".tmp", []byte(busy), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(state+".tmp", state); err != nil {
		t.Fatal(err)
	}
	bed.Eventually(t, 30*time.Second, "idle gauge for idle-0 back to 0", func(ctx context.Context) error {
		v, ok, err := idleSeconds(ctx, port, ns, "idle-0")
		if err != nil {
			return err
		}
		if !ok || v != 0 {
			return fmt.Errorf("gpulet_device_allocated_idle_seconds for %s/idle-0: present %t, value %g", ns, ok, v)
		}
		return nil
	})
}
