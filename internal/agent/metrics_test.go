package agent

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/nvml"
)

// TestServeMetrics runs the agent on a simulated node and scrapes its
// endpoint: device metrics from the sampler, config reloads counted, and
// readiness that waits for the kubelet (there is none here).
func TestServeMetrics(t *testing.T) {
	root, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	state := filepath.Join(root, "node.yaml")
	if err := os.WriteFile(state, []byte(migNode), 0o644); err != nil {
		t.Fatal(err)
	}
	cm := &configMap{dir: filepath.Join(root, "config")}
	if err := os.Mkdir(cm.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cm.write(t, timeSlicedConfig(4))
	spec, err := nvml.ParseSpec("mock:" + state)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	opts := Options{
		NVML: spec, ConfigFile: cm.path(), NodeName: "node-a", MetricsAddress: addr, Kubeconfig: filepath.Join(root, "no-kubeconfig"),
		KubeletRoot: filepath.Join(root, "kubelet"), CDIRoot: filepath.Join(root, "cdi"), StateDir: filepath.Join(root, "state"),
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := Run(ctx, opts); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	defer func() { cancel(); wg.Wait() }()

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	eventually(t, "4 GPUs and 3 MIG devices on /metrics", func() bool {
		_, body := get("/metrics")
		return strings.Count(body, "gpulet_device_info{") == 7
	})
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]kubelet-registration") || !strings.Contains(body, "[+]nvml ok") {
		t.Errorf("/readyz = %d %q; want 503 waiting for the kubelet, NVML ok", code, body)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}

	cm.write(t, timeSlicedConfig(8))
	eventually(t, "the reload counted", func() bool {
		_, body := get("/metrics")
		return strings.Contains(body, `gpulet_config_reloads_total{result="ok"} 1`)
	})
	cm.write(t, timeSlicedConfig(-1))
	eventually(t, "the rejected reload counted", func() bool {
		_, body := get("/metrics")
		return strings.Contains(body, `gpulet_config_reloads_total{result="failed"} 1`) &&
			strings.Contains(body, "gpulet_config_last_reload_successful 0")
	})

	// The sample interval is reloaded live: at one minute the sample time
	// stands still, and moves again within seconds once it is 100ms.
	sampleTime := func() string {
		_, body := get("/metrics")
		for _, line := range strings.Split(body, "\n") {
			if v, ok := strings.CutPrefix(line, "gpulet_sample_timestamp_seconds "); ok {
				return v
			}
		}
		return ""
	}
	cm.write(t, timeSlicedConfig(8)+"gpulet: {metrics: {sampleInterval: 1m}}\n")
	eventually(t, "the slow-interval reload counted", func() bool {
		_, body := get("/metrics")
		return strings.Contains(body, `gpulet_config_reloads_total{result="ok"} 2`)
	})
	time.Sleep(1500 * time.Millisecond) // a sample in flight at 1s lands
	slow := sampleTime()
	time.Sleep(1500 * time.Millisecond)
	if now := sampleTime(); now != slow || slow == "" {
		t.Errorf("sample time moved from %q to %q with a 1m interval", slow, now)
	}
	cm.write(t, timeSlicedConfig(8)+"gpulet: {metrics: {sampleInterval: 100ms}}\n")
	eventually(t, "samples again after the interval went to 100ms", func() bool {
		now := sampleTime()
		return now != "" && now != slow
	})
}

// TestServeMetricsBadWebConfig: a web config file that is not there stops
// gpulet serve at start with an error naming it.
func TestServeMetricsBadWebConfig(t *testing.T) {
	root := t.TempDir()
	state := filepath.Join(root, "node.yaml")
	if err := os.WriteFile(state, []byte("machine: dgx-h100\ngpus: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := nvml.ParseSpec("mock:" + state)
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(root, "web-config.yml")
	opts := Options{
		NVML: spec, NodeName: "node-a", MetricsAddress: "127.0.0.1:0", WebConfigFile: missing, Kubeconfig: filepath.Join(root, "none"),
		KubeletRoot: filepath.Join(root, "kubelet"), CDIRoot: filepath.Join(root, "cdi"), StateDir: filepath.Join(root, "state"),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = Run(ctx, opts)
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Run = %v; want an error naming %s", err, missing)
	}
	if ctx.Err() != nil {
		t.Fatal("Run did not stop by itself")
	}
}
