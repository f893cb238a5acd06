package dra

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"sigs.k8s.io/yaml"

	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/simnode"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// Simulated machines the golden files cover.
const (
	stateH100 = "machine: dgx-h100\n"
	stateB200 = "machine: dgx-b200\n"
	// Every GPU of an A100 in MIG mode; GPU 1 has a static 3g.40gb device
	// at slice 4 that no claim made.
	stateA100MIG = `machine: dgx-a100
devices:
- {index: 0, migEnabled: true}
- index: 1
  migEnabled: true
  mig: [{profile: 3g.40gb, start: 4}]
- {index: 2, migEnabled: true}
- {index: 3, migEnabled: true}
- {index: 4, migEnabled: true}
- {index: 5, migEnabled: true}
- {index: 6, migEnabled: true}
- {index: 7, migEnabled: true}
`
)

func TestResourceSlicesGolden(t *testing.T) {
	tests := []struct {
		name       string
		state      string
		consumable bool
		// faults builds health states and ledger records from the
		// inventory's GPU UUIDs.
		faults func(uuids []string) (map[string]health.State, []ledger.Record)
	}{
		{name: "dgx-h100", state: stateH100},
		{name: "dgx-h100-consumable-capacity", state: stateH100, consumable: true},
		{name: "dgx-a100-mig", state: stateA100MIG},
		{name: "dgx-b200", state: stateB200},
		{
			name:  "dgx-h100-taints",
			state: "machine: dgx-h100\ngpus: 4\n",
			faults: func(u []string) (map[string]health.State, []ledger.Record) {
				states := map[string]health.State{
					u[0]: {Healthy: false, Reason: health.ReasonXID, XID: 48},
					u[1]: {Healthy: false, Reason: health.ReasonLost},
					u[2]: {Healthy: true},
				}
				records := []ledger.Record{{ID: u[3], API: ledger.DevicePlugin, Resources: []ledger.Resource{{GPU: u[3], Device: u[3]}}}}
				return states, records
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := simnode.New(t, tt.state)
			cat := newCatalog(node.Inventory, tt.consumable)
			pub := publication{driver: "gpu.gpulet.dev", pool: "node-a", cat: cat, pcieRoots: TopologyPCIeRoots(node.Inventory)}
			if tt.faults != nil {
				var uuids []string
				for _, g := range node.Inventory.GPUs {
					uuids = append(uuids, g.UUID)
				}
				pub.health, pub.records = tt.faults(uuids)
			}
			objs := SliceObjects(buildResources(pub), pub.driver, pub.pool)
			for _, o := range objs {
				if err := checkSliceLimits(o); err != nil {
					t.Errorf("slice %s: %v", o.Name, err)
				}
			}
			if err := checkCounterReferences(objs); err != nil {
				t.Error(err)
			}
			var buf bytes.Buffer
			for _, o := range objs {
				b, err := yaml.Marshal(o)
				if err != nil {
					t.Fatal(err)
				}
				buf.WriteString("---\n")
				buf.Write(b)
			}
			compareGolden(t, filepath.Join("testdata", "slices", tt.name+".yaml"), buf.Bytes())
		})
	}
}

// checkSliceLimits checks the limits the API server's validation enforces
// on one ResourceSlice (k8s.io/kubernetes/pkg/apis/resource/validation), so
// a unit test fails before an API server would refuse the slice.
func checkSliceLimits(s *resourceapi.ResourceSlice) error {
	spec := s.Spec
	if len(spec.Devices) > 0 && len(spec.SharedCounters) > 0 {
		return fmt.Errorf("has both devices and shared counters")
	}
	if len(spec.SharedCounters) > resourceapi.ResourceSliceMaxCounterSets {
		return fmt.Errorf("%d counter sets", len(spec.SharedCounters))
	}
	for _, cs := range spec.SharedCounters {
		if len(cs.Counters) > resourceapi.ResourceSliceMaxCountersPerCounterSet || len(cs.Counters) == 0 {
			return fmt.Errorf("counter set %s: %d counters", cs.Name, len(cs.Counters))
		}
	}
	limit := resourceapi.ResourceSliceMaxDevices
	for _, d := range spec.Devices {
		if len(d.ConsumesCounters) > 0 || len(d.Taints) > 0 {
			limit = resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures
		}
	}
	if len(spec.Devices) > limit {
		return fmt.Errorf("%d devices, limit %d", len(spec.Devices), limit)
	}
	for _, d := range spec.Devices {
		if n := len(d.Attributes) + len(d.Capacity); n > resourceapi.ResourceSliceMaxAttributesAndCapacitiesPerDevice {
			return fmt.Errorf("device %s: %d attributes and capacities", d.Name, n)
		}
		if len(d.ConsumesCounters) > resourceapi.ResourceSliceMaxDeviceCounterConsumptionsPerDevice {
			return fmt.Errorf("device %s: %d counter consumptions", d.Name, len(d.ConsumesCounters))
		}
		for _, c := range d.ConsumesCounters {
			if len(c.Counters) > resourceapi.ResourceSliceMaxCountersPerDeviceCounterConsumption {
				return fmt.Errorf("device %s: %d counters consumed", d.Name, len(c.Counters))
			}
		}
		if len(d.Taints) > resourceapi.DeviceTaintsMaxLength {
			return fmt.Errorf("device %s: %d taints", d.Name, len(d.Taints))
		}
		if len(d.Name) > 63 {
			return fmt.Errorf("device %s: name longer than a DNS label", d.Name)
		}
	}
	return nil
}

// checkCounterReferences checks what the resourceslice controller checks
// across a pool: counter sets are unique and every consumed counter
// exists.
func checkCounterReferences(objs []*resourceapi.ResourceSlice) error {
	sets := map[string]resourceapi.CounterSet{}
	for _, o := range objs {
		for _, cs := range o.Spec.SharedCounters {
			if _, dup := sets[cs.Name]; dup {
				return fmt.Errorf("counter set %s twice", cs.Name)
			}
			sets[cs.Name] = cs
		}
	}
	for _, o := range objs {
		for _, d := range o.Spec.Devices {
			for _, c := range d.ConsumesCounters {
				cs, ok := sets[c.CounterSet]
				if !ok {
					return fmt.Errorf("device %s: no counter set %s", d.Name, c.CounterSet)
				}
				for name, v := range c.Counters {
					total, ok := cs.Counters[name]
					if !ok {
						return fmt.Errorf("device %s: counter set %s has no %s", d.Name, c.CounterSet, name)
					}
					if v.Value.Cmp(total.Value) > 0 {
						return fmt.Errorf("device %s consumes %s %s of %s", d.Name, v.Value.String(), name, total.Value.String())
					}
				}
			}
		}
	}
	return nil
}

// compareGolden compares got with the golden file, or rewrites the file
// under -update.
func compareGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		for i := 0; i < max(len(gl), len(wl)); i++ {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("%s differs from the output at line %d:\n  want: %s\n  got:  %s\n(run with -update if the change is intended)", path, i+1, w, g)
			}
		}
	}
}
