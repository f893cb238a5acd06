package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	configv1 "github.com/gpulet/gpulet/api/config/v1"
	"github.com/gpulet/gpulet/internal/nvml"
)

// configMap mimics how the kubelet mounts a ConfigMap: dir/config.yaml is a
// symlink to ..data/config.yaml, and an update swaps the ..data symlink to
// a new timestamped directory.
type configMap struct {
	dir string
	n   int
}

func (c *configMap) path() string { return filepath.Join(c.dir, "config.yaml") }

func (c *configMap) write(t *testing.T, content string) {
	t.Helper()
	c.n++
	ts := filepath.Join(c.dir, fmt.Sprintf("..2026_11_23_%02d", c.n))
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ts, "config.yaml"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(c.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(c.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if c.n == 1 {
		if err := os.Symlink(filepath.Join("..data", "config.yaml"), c.path()); err != nil {
			t.Fatal(err)
		}
	}
}

const migNode = `
machine: dgx-a100
gpus: 4
devices:
- {index: 0, migEnabled: true, mig: [{profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}]}
`

func timeSlicedConfig(replicas int) string {
	return fmt.Sprintf(`version: v1
flags: {migStrategy: mixed}
sharing:
  timeSlicing:
    resources: [{name: nvidia.com/mig-1g.10gb, replicas: %d}]
`, replicas)
}

// watchStream opens a ListAndWatch stream and reports, on the returned
// channel, when it ends: a server that is restarted ends its streams.
func watchStream(t *testing.T, socket string) <-chan error {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := pluginapi.NewDevicePluginClient(conn).ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				ended <- err
				return
			}
		}
	}()
	return ended
}

// deviceCount asks a resource server for its device list.
func deviceCount(t *testing.T, socket string) int {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return -1
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	stream, err := pluginapi.NewDevicePluginClient(conn).ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		return -1
	}
	resp, err := stream.Recv()
	if err != nil {
		return -1
	}
	return len(resp.Devices)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 15s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestConfigReloadRestartsOnlyWhatChanged runs gpulet serve's agent on a
// simulated node with a ConfigMap-style config file and changes it: 4 to 8
// replicas of the MIG resource rebuilds that server only; replicas: -1 is
// rejected and the last good config stays.
func TestConfigReloadRestartsOnlyWhatChanged(t *testing.T) {
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
	opts := Options{
		NVML: spec, ConfigFile: cm.path(), NodeName: "node-a",
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

	sockets := filepath.Join(opts.KubeletRoot, "device-plugins")
	gpuSock := filepath.Join(sockets, "gpulet-nvidia.com_gpu.sock")
	migSock := filepath.Join(sockets, "gpulet-nvidia.com_mig-1g.10gb.sock")
	eventually(t, "3 MIG devices x 4 replicas", func() bool { return deviceCount(t, migSock) == 12 })
	eventually(t, "3 whole GPUs", func() bool { return deviceCount(t, gpuSock) == 3 })
	gpuStream, migStream := watchStream(t, gpuSock), watchStream(t, migSock)

	cm.write(t, timeSlicedConfig(8))
	eventually(t, "3 MIG devices x 8 replicas", func() bool { return deviceCount(t, migSock) == 24 })
	select {
	case err := <-migStream:
		t.Logf("MIG stream ended by the rebuild: %v", err)
	case <-time.After(5 * time.Second):
		t.Error("the MIG resource server was not rebuilt: its stream is still open")
	}
	select {
	case err := <-gpuStream:
		t.Errorf("the whole-GPU server was restarted though its devices did not change: %v", err)
	default:
	}

	migStream = watchStream(t, migSock)
	cm.write(t, timeSlicedConfig(-1))
	time.Sleep(time.Second) // more than the watcher's debounce and a reload
	if n := deviceCount(t, migSock); n != 24 {
		t.Errorf("after a bad config: %d devices, want the last good 24", n)
	}
	select {
	case err := <-migStream:
		t.Errorf("a bad config restarted the MIG server: %v", err)
	case err := <-gpuStream:
		t.Errorf("a bad config restarted the whole-GPU server: %v", err)
	default:
	}
	cm.write(t, timeSlicedConfig(2))
	eventually(t, "a good config after a bad one", func() bool { return deviceCount(t, migSock) == 6 })
}

// TestNoDriverIsNotAZombie starts serve on real NVML on a machine without
// the driver: it must neither exit nor advertise anything, and must keep
// retrying, saying why.
func TestNoDriverIsNotAZombie(t *testing.T) {
	if _, err := os.Stat("/dev/nvidiactl"); err == nil {
		t.Skip("this machine has an NVIDIA driver")
	}
	root, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
	ctx, cancel := context.WithTimeout(klog.NewContext(context.Background(), logger), 2500*time.Millisecond)
	defer cancel()
	opts := Options{NodeName: "node-a", KubeletRoot: filepath.Join(root, "kubelet"), StateDir: filepath.Join(root, "state")}
	start := time.Now()
	if err := Run(ctx, opts); err != nil {
		t.Fatalf("Run returned %v: want it to wait for the driver", err)
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Fatalf("Run returned after %v, before its context ended", took)
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "kubelet", "device-plugins")); len(entries) != 0 {
		t.Errorf("advertised something without NVML: %v", entries)
	}
	logs := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
	if n := strings.Count(logs, "NVML is not available"); n < 2 || !strings.Contains(logs, "libnvidia-ml.so.1") {
		t.Errorf("want at least two retries logged naming the library, got %d:\n%s", n, logs)
	}
}

func TestNeedsRestart(t *testing.T) {
	parse := func(y string) *configv1.Config {
		t.Helper()
		cfg, _, err := configv1.Parse([]byte(y), "test")
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	base := parse("version: v1\n")
	for _, tt := range []struct {
		next string
		want []string
	}{
		{"version: v1\nsharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}\n", nil},
		{"version: v1\ngpulet: {metrics: {sampleInterval: 5s}, health: {recoveryQuietPeriod: 1s}}\n", nil},
		{"version: v1\ngpulet: {dra: {enabled: true}}\n", []string{"gpulet.dra"}},
		{"version: v1\ngpulet: {devicePlugin: {enabled: false}, health: {disabled: true}}\n", []string{"gpulet.devicePlugin.enabled", "gpulet.health.disabled"}},
	} {
		if got := needsRestart(base, parse(tt.next)); !slices.Equal(got, tt.want) {
			t.Errorf("%q: needsRestart = %v, want %v", tt.next, got, tt.want)
		}
	}
}

func TestSendLatest(t *testing.T) {
	ch := make(chan int, 1)
	sendLatest(ch, 1)
	sendLatest(ch, 2) // replaces 1, which nobody took
	if got := <-ch; got != 2 {
		t.Errorf("got %d, want the latest, 2", got)
	}
	select {
	case v := <-ch:
		t.Errorf("a second value %d", v)
	default:
	}
}
