package dra

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/gpulet/gpulet/internal/cdi"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/nvml/gpusim"
	"github.com/gpulet/gpulet/internal/simnode"
)

const testNode = "node-a"

// testBed is a simulated node with a driver over it. Everything the
// driver writes goes under dir: the ledger's checkpoint in dir/state, the
// CDI specs in dir/cdi.
type testBed struct {
	t      testing.TB
	ctx    context.Context
	node   *simnode.Node
	dir    string
	cdi    *cdi.Generator
	ledger *ledger.Ledger
	driver *Driver
	opts   Options
}

func (b *testBed) stateDir() string       { return filepath.Join(b.dir, "state") }
func (b *testBed) cdiDir() string         { return filepath.Join(b.dir, "cdi") }
func (b *testBed) checkpointPath() string { return filepath.Join(b.stateDir(), "ledger.json") }

// newTestBed starts a simulated node from state and a driver over it.
// mod may change the driver's options.
func newTestBed(t testing.TB, state string, mod func(*Options)) *testBed {
	t.Helper()
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(2)))
	b := &testBed{t: t, ctx: klog.NewContext(context.Background(), logger), dir: t.TempDir()}
	b.node = simnode.New(t, state)
	st, err := gpusim.Parse([]byte(state), "state.yaml")
	if err != nil {
		t.Fatal(err)
	}
	driverRoot := filepath.Join(b.dir, "driver-root")
	if err := gpusim.WriteDriverRoot(driverRoot, st); err != nil {
		t.Fatal(err)
	}
	// nvcdi over the simulator, as gpulet serve runs: full edits (device
	// nodes, driver libraries, hooks) from the mock driver root.
	b.cdi, err = cdi.New(b.ctx, cdi.Options{Root: b.cdiDir(), DriverRoot: driverRoot, NVML: b.node.Adapter})
	if err != nil {
		t.Fatal(err)
	}
	b.opts = Options{
		NodeName:  testNode,
		NVML:      b.node.Adapter,
		Inventory: b.node.Inventory,
		CDI:       b.cdi,
		PCIeRoots: TopologyPCIeRoots(b.node.Inventory),
	}
	if mod != nil {
		mod(&b.opts)
	}
	b.restart()
	return b
}

// restart opens the ledger from disk and starts a fresh driver, as a new
// gpulet process would after the old one died. The simulator (the
// hardware) and the CDI directory stay as they are.
func (b *testBed) restart() {
	b.t.Helper()
	led, err := ledger.Open(b.checkpointPath())
	if err != nil {
		b.t.Fatal(err)
	}
	b.ledger = led
	inv, err := inventory.Discover(b.node.Adapter)
	if err != nil {
		b.t.Fatal(err)
	}
	opts := b.opts
	opts.Ledger = led
	opts.Inventory = inv
	opts.CheckpointPath = b.checkpointPath()
	d, err := New(b.ctx, opts)
	if err != nil {
		b.t.Fatal(err)
	}
	b.driver = d
}

// gpu returns the inventory's GPU at an index.
func (b *testBed) gpu(i int) *inventory.GPU { return &b.node.Inventory.GPUs[i] }

// prepare prepares claims through the driver, as the helper calls it.
func (b *testBed) prepare(claims ...*resourceapi.ResourceClaim) map[types.UID]kubeletplugin.PrepareResult {
	b.t.Helper()
	res, err := b.driver.PrepareResourceClaims(b.ctx, claims)
	if err != nil {
		b.t.Fatal(err)
	}
	return res
}

// unprepare unprepares claims by UID.
func (b *testBed) unprepare(claims ...*resourceapi.ResourceClaim) map[types.UID]error {
	b.t.Helper()
	objs := make([]kubeletplugin.NamespacedObject, len(claims))
	for i, c := range claims {
		objs[i] = kubeletplugin.NamespacedObject{UID: c.UID, NamespacedName: types.NamespacedName{Namespace: c.Namespace, Name: c.Name}}
	}
	res, err := b.driver.UnprepareResourceClaims(b.ctx, objs)
	if err != nil {
		b.t.Fatal(err)
	}
	return res
}

// migDevices lists the MIG devices the simulator has now, as
// "<gpu index>:<profile>@<start>".
func (b *testBed) migDevices() []string {
	b.t.Helper()
	inv, err := inventory.Discover(b.node.Adapter)
	if err != nil {
		b.t.Fatal(err)
	}
	var out []string
	for _, g := range inv.GPUs {
		for _, m := range g.MigDevices {
			out = append(out, migKey(g.Index, m.Profile, m.Placement.Start))
		}
	}
	sort.Strings(out)
	return out
}

func migKey(gpu int, profile string, start int) string {
	return fmt.Sprintf("%d:%s@%d", gpu, profile, start)
}

// claimSpecs lists the UIDs of the claim CDI specs on disk.
func (b *testBed) claimSpecs() []string {
	b.t.Helper()
	uids, err := b.cdi.ClaimSpecUIDs()
	if err != nil {
		b.t.Fatal(err)
	}
	return uids
}

// draRecords lists the UIDs the ledger holds for DRA.
func (b *testBed) draRecords() []string {
	var out []string
	for _, r := range b.ledger.Records() {
		if r.API == ledger.DRA {
			out = append(out, r.ID)
		}
	}
	return out
}

// result is one allocation result for a claim builder.
type result struct {
	request  string
	device   string
	shareID  string
	memory   string
	pool     string
	driver   string
	adminAcc bool
}

// config is one opaque configuration for a claim builder.
type config struct {
	requests  []string
	fromClass bool
	driver    string
	params    string
}

// allocatedClaim builds a claim as the scheduler leaves it: allocated on
// the test node with the given results and configurations.
func allocatedClaim(uid, name string, results []result, configs ...config) *resourceapi.ResourceClaim {
	c := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID(uid)},
		Status:     resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{}},
	}
	for _, r := range results {
		ar := resourceapi.DeviceRequestAllocationResult{Request: r.request, Driver: DefaultDriverName, Pool: testNode, Device: r.device}
		if r.pool != "" {
			ar.Pool = r.pool
		}
		if r.driver != "" {
			ar.Driver = r.driver
		}
		if r.shareID != "" {
			ar.ShareID = new(types.UID(r.shareID))
		}
		if r.memory != "" {
			ar.ConsumedCapacity = map[resourceapi.QualifiedName]resource.Quantity{capMemory: resource.MustParse(r.memory)}
		}
		if r.adminAcc {
			ar.AdminAccess = new(true)
		}
		c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results, ar)
	}
	for _, cfg := range configs {
		ac := resourceapi.DeviceAllocationConfiguration{Source: resourceapi.AllocationConfigSourceClaim, Requests: cfg.requests}
		if cfg.fromClass {
			ac.Source = resourceapi.AllocationConfigSourceClass
		}
		driver := cfg.driver
		if driver == "" {
			driver = DefaultDriverName
		}
		ac.Opaque = &resourceapi.OpaqueDeviceConfiguration{Driver: driver, Parameters: runtime.RawExtension{Raw: []byte(cfg.params)}}
		c.Status.Allocation.Devices.Config = append(c.Status.Allocation.Devices.Config, ac)
	}
	return c
}

// readSpec reads a claim's CDI spec file as text.
func (b *testBed) readSpec(uid string) string {
	b.t.Helper()
	p, err := b.cdi.ClaimSpecPath(uid)
	if err != nil {
		b.t.Fatal(err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		b.t.Fatal(err)
	}
	return string(data)
}
