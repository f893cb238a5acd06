// Package deviceplugin drives gpulet's device plugin with the kubelet's
// own device-plugin code: its registration server and its plugin client
// (k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/plugin/v1beta1), over
// real unix sockets. It needs no cluster; the bed's tests cover the whole
// kubelet.
package deviceplugin

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	kubeletplugin "k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/plugin/v1beta1"

	configv1 "github.com/gpulet/gpulet/api/config/v1"
	"github.com/gpulet/gpulet/internal/deviceplugin"
	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/nvml/gpusim"
	"github.com/gpulet/gpulet/internal/simnode"
)

// kubelet is the kubelet's side: its registration server with a handler
// that records what the kubelet's plugin clients report.
type kubelet struct {
	t      *testing.T
	dir    string
	server kubeletplugin.Server

	mu          sync.Mutex
	plugins     map[string]kubeletplugin.DevicePlugin
	devices     map[string][]*pluginapi.Device
	connects    map[string]int
	disconnects map[string]int
	changed     chan struct{}
}

func newKubelet(t *testing.T, dir string) *kubelet {
	k := &kubelet{
		t: t, dir: dir,
		plugins: map[string]kubeletplugin.DevicePlugin{}, devices: map[string][]*pluginapi.Device{},
		connects: map[string]int{}, disconnects: map[string]int{}, changed: make(chan struct{}, 1),
	}
	k.start()
	t.Cleanup(k.stop)
	return k
}

// start starts the registration server the way the kubelet does on boot:
// it cleans the plugin directory (removing every plugin's socket) and
// listens on kubelet.sock.
func (k *kubelet) start() {
	logger := klog.Background()
	s, err := kubeletplugin.NewServer(logger, filepath.Join(k.dir, "kubelet.sock"), k, k)
	if err != nil {
		k.t.Fatal(err)
	}
	if err := s.Start(logger); err != nil {
		k.t.Fatal(err)
	}
	k.server = s
}

func (k *kubelet) stop() {
	if k.server != nil {
		_ = k.server.Stop(klog.Background())
		k.server = nil
	}
}

// CleanupPluginDirectory removes the sockets in the directory, as the
// kubelet's device manager does when it starts.
func (k *kubelet) CleanupPluginDirectory(_ klog.Logger, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

func (k *kubelet) PluginConnected(_ context.Context, resource string, p kubeletplugin.DevicePlugin) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.plugins[resource] = p
	k.connects[resource]++
	k.notify()
	return nil
}

func (k *kubelet) PluginDisconnected(_ klog.Logger, resource, _ string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.plugins, resource)
	k.disconnects[resource]++
	k.notify()
}

func (k *kubelet) PluginListAndWatchReceiver(_ klog.Logger, resource string, resp *pluginapi.ListAndWatchResponse) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.devices[resource] = resp.Devices
	k.notify()
}

func (k *kubelet) notify() {
	select {
	case k.changed <- struct{}{}:
	default:
	}
}

// waitFor waits until cond holds on the kubelet's view.
func (k *kubelet) waitFor(what string, timeout time.Duration, cond func() bool) {
	k.t.Helper()
	deadline := time.After(timeout)
	for {
		k.mu.Lock()
		ok := cond()
		k.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-k.changed:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			k.t.Fatalf("%s: not within %v", what, timeout)
		}
	}
}

// healthy counts a resource's devices by health.
func (k *kubelet) counts(resource string) (healthy, unhealthy int) {
	for _, d := range k.devices[resource] {
		if d.Health == pluginapi.Healthy {
			healthy++
		} else {
			unhealthy++
		}
	}
	return
}

func (k *kubelet) plugin(resource string) kubeletplugin.DevicePlugin {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.plugins[resource]
}

// gpulet runs gpulet's health monitor and device-plugin manager for a
// simulated node against the socket directory.
type gpulet struct {
	node    *simnode.Node
	manager *deviceplugin.Manager
	ledger  *ledger.Ledger
}

func startGpulet(t *testing.T, dir, state string, cfg deviceplugin.Config) *gpulet {
	t.Helper()
	node := simnode.New(t, state)
	l, err := ledger.Open("")
	if err != nil {
		t.Fatal(err)
	}
	var devices []health.Device
	for _, g := range node.Inventory.GPUs {
		devices = append(devices, health.Device{UUID: g.UUID})
		for _, m := range g.MigDevices {
			devices = append(devices, health.Device{UUID: m.UUID, Parent: g.UUID, GIID: m.GIID, CIID: m.CIID})
		}
	}
	mon := health.New(node.Adapter, devices, health.Options{QuietPeriod: 200 * time.Millisecond, ProbeInterval: 20 * time.Millisecond, WaitSlice: 20 * time.Millisecond})
	m := deviceplugin.NewManager(deviceplugin.Options{
		SocketDir: dir, Ledger: l, Health: mon, RegisterTimeout: time.Second,
		CDIName: func(uuid string) string { return "gpulet.dev/gpu=" + uuid },
	})
	m.Update(node.Inventory, cfg)
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = mon.Run(ctx) }()
	go func() {
		defer wg.Done()
		if err := m.Run(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	for mon.Watches() == 0 {
		time.Sleep(time.Millisecond)
	}
	return &gpulet{node: node, manager: m, ledger: l}
}

// socketDir is a fresh directory with a path short enough for sockets.
func socketDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "kdp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func TestKubeletDrivesTheDevicePlugin(t *testing.T) {
	dir := socketDir(t)
	k := newKubelet(t, dir)
	g := startGpulet(t, dir, "machine: dgx-h100\ntopology: islands", deviceplugin.Config{})
	const gpu = "nvidia.com/gpu"
	k.waitFor("8 healthy nvidia.com/gpu", 10*time.Second, func() bool { h, _ := k.counts(gpu); return h == 8 })

	p := k.plugin(gpu)
	ctx := context.Background()
	opts, err := p.API().GetDevicePluginOptions(ctx, &pluginapi.Empty{})
	if err != nil || !opts.GetPreferredAllocationAvailable {
		t.Fatalf("options = %+v, %v", opts, err)
	}
	var all []string
	for _, d := range k.devices[gpu] {
		all = append(all, d.ID)
	}
	pref, err := p.API().GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{
		{AvailableDeviceIDs: all, AllocationSize: 4},
	}})
	if err != nil {
		t.Fatal(err)
	}
	island := map[int]bool{}
	for _, id := range pref.ContainerResponses[0].DeviceIDs {
		g, _ := g.node.Inventory.GPU(id)
		island[g.Index/4] = true
	}
	if len(island) != 1 || len(pref.ContainerResponses[0].DeviceIDs) != 4 {
		t.Errorf("preferred 4 = %v: want one NVLink island", pref.ContainerResponses[0].DeviceIDs)
	}
	picked := pref.ContainerResponses[0].DeviceIDs[:2]
	resp, err := p.API().Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: picked}}})
	if err != nil {
		t.Fatal(err)
	}
	var cdi []string
	for _, d := range resp.ContainerResponses[0].CdiDevices {
		cdi = append(cdi, d.Name)
	}
	sort.Strings(picked)
	if want := "gpulet.dev/gpu=" + picked[0] + ",gpulet.dev/gpu=" + picked[1]; strings.Join(cdi, ",") != want {
		t.Errorf("CDI devices = %v, want %s", cdi, want)
	}
	if _, err := p.API().PreStartContainer(ctx, &pluginapi.PreStartContainerRequest{DevicesIds: picked}); err != nil {
		t.Errorf("PreStartContainer: %v", err)
	}

	// XID 79 on GPU 6 reaches the kubelet as Unhealthy, and the GPU comes
	// back once the fault has cleared.
	sick := g.node.Inventory.GPUs[6].UUID
	st, err := gpusim.Parse([]byte("machine: dgx-h100\ntopology: islands\ndevices: [{index: 6, xids: [{id: a, xid: 79}]}]"), "edit")
	if err != nil {
		t.Fatal(err)
	}
	if err := g.node.Sim.Apply(st); err != nil {
		t.Fatal(err)
	}
	healthOf := func(id string) string {
		for _, d := range k.devices[gpu] {
			if d.ID == id {
				return d.Health
			}
		}
		return ""
	}
	k.waitFor("GPU 6 Unhealthy", 5*time.Second, func() bool { return healthOf(sick) == pluginapi.Unhealthy })
	k.waitFor("GPU 6 Healthy again", 10*time.Second, func() bool { return healthOf(sick) == pluginapi.Healthy })
}

func TestMIGStrategiesAndTimeSlicing(t *testing.T) {
	const mixedNode = `
machine: dgx-a100
devices:
- {index: 0, migEnabled: true, mig: [{profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}]}
- {index: 1, migEnabled: true, mig: [{profile: 3g.40gb}, {profile: 3g.40gb}]}
`
	const singleNode = `
machine: dgx-a100
gpus: 2
devices:
- {index: 0, migEnabled: true, mig: [{profile: 3g.40gb}, {profile: 3g.40gb}]}
- {index: 1, migEnabled: true, mig: [{profile: 3g.40gb}, {profile: 3g.40gb}]}
`
	timeSlicing := func(yaml string) *configv1.ReplicatedResources {
		cfg, _, err := configv1.Parse([]byte(yaml), "test")
		if err != nil {
			t.Fatal(err)
		}
		return cfg.Sharing.TimeSlicing
	}
	tests := []struct {
		name  string
		state string
		cfg   deviceplugin.Config
		want  map[string]int
	}{
		{"none", mixedNode, deviceplugin.Config{MigStrategy: configv1.MigStrategyNone}, map[string]int{"nvidia.com/gpu": 8}},
		{"mixed", mixedNode, deviceplugin.Config{MigStrategy: configv1.MigStrategyMixed}, map[string]int{"nvidia.com/gpu": 6, "nvidia.com/mig-1g.10gb": 7, "nvidia.com/mig-3g.40gb": 2}},
		{"single", singleNode, deviceplugin.Config{MigStrategy: configv1.MigStrategySingle}, map[string]int{"nvidia.com/gpu": 4}},
		{"time-slicing 4", "machine: dgx-h100", deviceplugin.Config{TimeSlicing: timeSlicing("sharing: {timeSlicing: {resources: [{name: gpu, replicas: 4}]}}")}, map[string]int{"nvidia.com/gpu": 32}},
		{"time-slicing renamed", "machine: dgx-h100", deviceplugin.Config{TimeSlicing: timeSlicing("sharing: {timeSlicing: {renameByDefault: true, resources: [{name: gpu, replicas: 4}]}}")}, map[string]int{"nvidia.com/gpu.shared": 32}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := socketDir(t)
			k := newKubelet(t, dir)
			startGpulet(t, dir, tt.state, tt.cfg)
			k.waitFor(fmt.Sprint(tt.want), 10*time.Second, func() bool {
				if len(k.plugins) != len(tt.want) {
					return false
				}
				for res, n := range tt.want {
					if h, _ := k.counts(res); h != n {
						return false
					}
				}
				return true
			})
		})
	}
}

// TestKubeletRestarts restarts the kubelet's registration server 20 times;
// it wipes gpulet's sockets each time, as the kubelet does. Every resource
// must be served and registered again, with no goroutines left behind.
func TestKubeletRestarts(t *testing.T) {
	dir := socketDir(t)
	k := newKubelet(t, dir)
	cfg := deviceplugin.Config{MigStrategy: configv1.MigStrategyMixed}
	startGpulet(t, dir, "machine: dgx-a100\ndevices: [{index: 0, migEnabled: true, mig: [{profile: 3g.40gb}, {profile: 3g.40gb}]}]", cfg)
	resources := []string{"nvidia.com/gpu", "nvidia.com/mig-3g.40gb"}
	k.waitFor("registered", 10*time.Second, func() bool { return len(k.plugins) == 2 })

	var baseline int
	var took []time.Duration
	for i := 0; i < 20; i++ {
		k.stop()
		k.mu.Lock()
		before := map[string]int{}
		for _, r := range resources {
			before[r] = k.connects[r]
		}
		k.mu.Unlock()
		start := time.Now()
		k.start()
		// Correctness only: how fast it happens is logged, not asserted (a
		// loaded CI machine stretches it).
		k.waitFor(fmt.Sprintf("restart %d: every resource registered again", i), 30*time.Second, func() bool {
			for _, r := range resources {
				if k.connects[r] <= before[r] || k.plugins[r] == nil {
					return false
				}
			}
			h1, _ := k.counts(resources[0])
			h2, _ := k.counts(resources[1])
			return h1 == 7 && h2 == 2
		})
		took = append(took, time.Since(start))
		time.Sleep(50 * time.Millisecond) // let the old streams' goroutines end
		if i == 1 {
			runtime.GC()
			baseline = runtime.NumGoroutine()
		}
	}
	t.Logf("re-registration after a kubelet restart: median %v, slowest %v", median(took), slices.Max(took))
	runtime.GC()
	time.Sleep(200 * time.Millisecond)
	if n := runtime.NumGoroutine(); n > baseline+5 {
		t.Errorf("goroutines grew from %d to %d over 18 kubelet restarts", baseline, n)
	}
}

// TestConfigChangeKeepsUnchangedServers goes from 4 to 8 replicas of a MIG
// resource: the kubelet sees that resource re-register with 8 replicas,
// while the whole-GPU resource's server is not restarted.
func TestConfigChangeKeepsUnchangedServers(t *testing.T) {
	dir := socketDir(t)
	k := newKubelet(t, dir)
	replicated := func(n int) deviceplugin.Config {
		cfg, _, err := configv1.Parse([]byte(fmt.Sprintf("sharing: {timeSlicing: {resources: [{name: nvidia.com/mig-3g.40gb, replicas: %d}]}}", n)), "test")
		if err != nil {
			t.Fatal(err)
		}
		return deviceplugin.Config{MigStrategy: configv1.MigStrategyMixed, TimeSlicing: cfg.Sharing.TimeSlicing}
	}
	g := startGpulet(t, dir, "machine: dgx-a100\ndevices: [{index: 0, migEnabled: true, mig: [{profile: 3g.40gb}, {profile: 3g.40gb}]}]", replicated(4))
	k.waitFor("4 replicas", 10*time.Second, func() bool { h, _ := k.counts("nvidia.com/mig-3g.40gb"); return h == 8 })
	// The whole-GPU resource registers on its own schedule: take the
	// baseline once the kubelet is connected to it too.
	k.waitFor("7 whole GPUs", 10*time.Second, func() bool { h, _ := k.counts("nvidia.com/gpu"); return h == 7 })
	k.mu.Lock()
	gpuConnects, gpuDisconnects := k.connects["nvidia.com/gpu"], k.disconnects["nvidia.com/gpu"]
	k.mu.Unlock()

	g.manager.Update(g.node.Inventory, replicated(8))
	k.waitFor("8 replicas", 10*time.Second, func() bool { h, _ := k.counts("nvidia.com/mig-3g.40gb"); return h == 16 })
	time.Sleep(200 * time.Millisecond)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.connects["nvidia.com/gpu"] != gpuConnects || k.disconnects["nvidia.com/gpu"] != gpuDisconnects {
		t.Errorf("the whole-GPU resource reconnected (%d→%d connects, %d→%d disconnects) though it did not change",
			gpuConnects, k.connects["nvidia.com/gpu"], gpuDisconnects, k.disconnects["nvidia.com/gpu"])
	}
	if h, _ := k.counts("nvidia.com/gpu"); h != 7 {
		t.Errorf("whole GPUs: %d healthy, want 7", h)
	}
}

// median returns the middle of ds.
func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
