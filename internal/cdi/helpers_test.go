package cdi

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/nvml"
	"github.com/gpulet/gpulet/internal/nvml/gpusim"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// requireRoot skips tests that need real character devices in the mock
// driver root.
func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("skipping: nvcdi takes only character devices, and creating them in the mock driver root (mknod) needs root")
	}
}

// simNode is a simulated node: the adapter over the simulator, its mock
// driver root and its inventory.
type simNode struct {
	adapter    *nvml.Adapter
	driverRoot string
	inv        *inventory.Inventory
}

// newSimNode starts the simulator on a state (inline YAML, or a machine
// name for its default state) and writes its mock driver root.
func newSimNode(tb testing.TB, state string) *simNode {
	tb.Helper()
	var (
		st  *gpusim.State
		err error
	)
	if strings.Contains(state, "\n") || strings.Contains(state, ":") {
		st, err = gpusim.Parse([]byte(strings.TrimSpace(state)+"\n"), "test.yaml")
	} else {
		st, err = gpusim.DefaultState(state)
	}
	if err != nil {
		tb.Fatal(err)
	}
	dir := filepath.Join(tb.TempDir(), "driver-root")
	if err := gpusim.WriteDriverRoot(dir, st); err != nil {
		tb.Fatal(err)
	}
	sim, err := gpusim.New(st)
	if err != nil {
		tb.Fatal(err)
	}
	a := nvml.New(sim.Interface())
	if err := a.Init(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = a.Shutdown() })
	n := &simNode{adapter: a, driverRoot: dir}
	n.rediscover(tb)
	return n
}

func (n *simNode) rediscover(tb testing.TB) {
	tb.Helper()
	inv, err := inventory.Discover(n.adapter)
	if err != nil {
		tb.Fatal(err)
	}
	n.inv = inv
}

// newTestGenerator returns a Generator writing to a fresh CDI root, with
// its log in the test log.
func newTestGenerator(tb testing.TB, opts Options) (context.Context, *Generator) {
	tb.Helper()
	// Verbosity 2 keeps nvcdi's many warnings about optional files out.
	logger := ktesting.NewLogger(tb, ktesting.NewConfig(ktesting.Verbosity(2), ktesting.BufferLogs(true)))
	ctx := klog.NewContext(context.Background(), logger)
	if opts.Root == "" {
		opts.Root = filepath.Join(tb.TempDir(), "cdi")
	}
	g, err := New(ctx, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return ctx, g
}

// simGenerator is a Generator over a simulated node's NVML and mock driver root.
func simGenerator(tb testing.TB, n *simNode) (context.Context, *Generator) {
	tb.Helper()
	return newTestGenerator(tb, Options{DriverRoot: n.driverRoot, NVML: n.adapter})
}

// readSpec reads a written spec through the CDI library.
func readSpec(t *testing.T, path string) *specs.Spec {
	t.Helper()
	s, err := cdi.ReadSpec(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	return s.Spec
}

func nodePaths(nodes []*specs.DeviceNode) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.Path)
	}
	return out
}

// gpuNodes lists the /dev/nvidiaN nodes among paths.
func gpuNodes(paths []string) []string {
	return slices.DeleteFunc(slices.Clone(paths), func(p string) bool {
		_, ok := gpuMinor(p)
		return !ok
	})
}

// countingFactory counts nvcdi's per-device queries.
type countingFactory struct {
	LibFactory
	deviceQueries atomic.Int32
}

func (f *countingFactory) NewCDILib(opts ...nvcdi.Option) (nvcdi.Interface, error) {
	lib, err := f.LibFactory.NewCDILib(opts...)
	if err != nil {
		return nil, err
	}
	return countingLib{Interface: lib, n: &f.deviceQueries}, nil
}

type countingLib struct {
	nvcdi.Interface
	n *atomic.Int32
}

func (l countingLib) GetDeviceSpecsByID(ids ...string) ([]specs.Device, error) {
	l.n.Add(1)
	return l.Interface.GetDeviceSpecsByID(ids...)
}

// fakeInventory is a node of n GPUs for tests that need no simulator.
func fakeInventory(n int) *inventory.Inventory {
	var devs []nvml.Device
	for i := range n {
		devs = append(devs, nvml.Device{
			Index: i, Minor: i,
			UUID: "GPU-" + strings.Repeat(string(rune('a'+i)), 8) + "-0000-0000-0000-000000000000",
			Name: "NVIDIA H100 80GB HBM3",
		})
	}
	return inventory.Build(nvml.System{DriverVersion: "550.54.15"}, devs)
}
