package dra

import (
	"fmt"
	"sort"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/dynamic-resource-allocation/resourceslice"

	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/ledger"
)

// Limits of one ResourceSlice (k8s.io/api/resource/v1): counter sets live in
// slices of their own (a slice has devices or shared counters, never
// both), at most 8 to a slice; a slice whose devices consume counters or
// carry taints holds at most 64 of them.
const (
	maxCounterSetsPerSlice = resourceapi.ResourceSliceMaxCounterSets
	maxDevicesPerSlice     = resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures
)

// Taint keys, under the driver's name ("gpu.gpulet.dev/unhealthy").
const (
	// taintUnhealthy marks a device health reports unhealthy; its value is
	// the reason (gpu-lost, xid, ecc-double-bit, ...).
	taintUnhealthy = "unhealthy"
	// taintDevicePlugin marks a device the device plugin has handed to a
	// pod: it stays published (so people see why it is not allocatable)
	// but no new claim gets it.
	taintDevicePlugin = "device-plugin"
	// taintMIGInUse marks a device that overlaps a MIG device this driver
	// did not create for a claim (a static layout, another tool's).
	taintMIGInUse = "mig-in-use"
)

// publication is everything one ResourceSlice publication depends on.
type publication struct {
	driver string
	pool   string
	cat    *catalog
	// health is every device's state by UUID; missing means healthy.
	health map[string]health.State
	// records are the ledger's holdings, of both APIs.
	records []ledger.Record
	// pcieRoots maps GPU UUIDs to their root complex; missing leaves the
	// attribute out.
	pcieRoots map[string]string
}

// buildResources turns a publication into the pool the resourceslice
// controller publishes: first the counter-set slices, then whole GPUs,
// their shared twins and the MIG placements, in inventory order (the
// scheduler tries slices in that order, so a claim that fits a whole GPU
// never fragments a MIG GPU). It is a pure function of its input.
func buildResources(p publication) resourceslice.DriverResources {
	inv := p.cat.inv
	var counterSets []resourceapi.CounterSet
	totals := map[string]map[string]int64{}
	for i := range inv.GPUs {
		g := &inv.GPUs[i]
		if !p.cat.partitioned[g.UUID] {
			continue
		}
		totals[g.UUID] = counterTotals(g)
		counterSets = append(counterSets, resourceapi.CounterSet{Name: counterSetName(g), Counters: counters(totals[g.UUID])})
	}

	taints := deviceTaints(p)
	devices := make([]resourceapi.Device, 0, len(p.cat.devices))
	for _, d := range p.cat.devices {
		dev := resourceapi.Device{Name: d.name}
		root := p.pcieRoots[d.gpu.UUID]
		switch d.kind {
		case KindGPU:
			dev.Attributes = gpuAttributes(d.gpu, inv.System, root)
			dev.Capacity = gpuCapacity(d.gpu)
		case KindShared:
			dev.Attributes = gpuAttributes(d.gpu, inv.System, root)
			dev.Capacity = sharedCapacity(d.gpu)
			dev.AllowMultipleAllocations = new(true)
		case KindMIG:
			dev.Attributes = migAttributes(d.gpu, d.placement, inv.System, root)
			dev.Capacity = migCapacity(d.placement)
		}
		if t, ok := totals[d.gpu.UUID]; ok {
			use := t // a whole GPU, or its shared twin, takes everything
			if d.kind == KindMIG {
				use = placementCounters(d.placement, t)
			}
			dev.ConsumesCounters = []resourceapi.DeviceCounterConsumption{{CounterSet: counterSetName(d.gpu), Counters: counters(use)}}
		}
		dev.Taints = taints[d.name]
		devices = append(devices, dev)
	}

	var slices []resourceslice.Slice
	for start := 0; start < len(counterSets); start += maxCounterSetsPerSlice {
		slices = append(slices, resourceslice.Slice{SharedCounters: counterSets[start:min(start+maxCounterSetsPerSlice, len(counterSets))]})
	}
	for _, chunk := range chunkDevices(devices) {
		slices = append(slices, resourceslice.Slice{Devices: chunk})
	}
	return resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{p.pool: {Slices: slices}}}
}

// counterSetName names a GPU's counter set after the GPU's device name.
func counterSetName(g *inventory.GPU) string { return g.Name }

// chunkDevices splits devices into slices of at most maxDevicesPerSlice,
// starting a new slice where the kind changes and keeping one GPU's MIG
// placements together where they fit, so a slice reads as one thing.
func chunkDevices(devices []resourceapi.Device) [][]resourceapi.Device {
	var out [][]resourceapi.Device
	var cur []resourceapi.Device
	flush := func() {
		if len(cur) > 0 {
			out = append(out, cur)
			cur = nil
		}
	}
	group := func(d resourceapi.Device) string {
		if v := d.Attributes[attrParentUUID].StringValue; v != nil {
			return "mig/" + *v
		}
		return "gpu"
	}
	for i := 0; i < len(devices); {
		g := group(devices[i])
		j := i
		for j < len(devices) && group(devices[j]) == g {
			j++
		}
		run := devices[i:j]
		if len(cur) > 0 && (group(cur[0]) == "gpu") != (g == "gpu") {
			flush()
		}
		if len(cur)+len(run) > maxDevicesPerSlice {
			flush()
		}
		for len(run) > maxDevicesPerSlice {
			out = append(out, run[:maxDevicesPerSlice])
			run = run[maxDevicesPerSlice:]
		}
		cur = append(cur, run...)
		i = j
	}
	flush()
	return out
}

// deviceTaints decides each device's taints: unhealthy (NoExecute when the
// GPU is lost, NoSchedule otherwise), held by the device plugin, or
// overlapping a MIG device no claim of this driver holds.
func deviceTaints(p publication) map[string][]resourceapi.DeviceTaint {
	var dpHeld, draHeld []ledger.Resource
	for _, r := range p.records {
		switch r.API {
		case ledger.DevicePlugin:
			dpHeld = append(dpHeld, r.Resources...)
		case ledger.DRA:
			draHeld = append(draHeld, r.Resources...)
		}
	}
	// MIG devices that exist and that no DRA claim holds.
	var foreign []ledger.Resource
	for i := range p.cat.inv.GPUs {
		g := &p.cat.inv.GPUs[i]
		if !p.cat.partitioned[g.UUID] {
			continue
		}
		for _, m := range g.MigDevices {
			r := ledger.Resource{GPU: g.UUID, Slices: &ledger.Slices{Start: m.Placement.Start, Size: m.Placement.Size}, Device: m.Name}
			if !overlapsAny(r, draHeld) {
				foreign = append(foreign, r)
			}
		}
	}

	out := map[string][]resourceapi.DeviceTaint{}
	for _, d := range p.cat.devices {
		var ts []resourceapi.DeviceTaint
		if st, ok := deviceHealth(d, p.health); !ok {
			effect := resourceapi.DeviceTaintEffectNoSchedule
			if st.Reason == health.ReasonLost {
				effect = resourceapi.DeviceTaintEffectNoExecute
			}
			ts = append(ts, resourceapi.DeviceTaint{Key: p.driver + "/" + taintUnhealthy, Value: labelValue(string(st.Reason)), Effect: effect})
		}
		res := d.resource()
		if overlapsAny(res, dpHeld) {
			ts = append(ts, resourceapi.DeviceTaint{Key: p.driver + "/" + taintDevicePlugin, Effect: resourceapi.DeviceTaintEffectNoSchedule})
		}
		for _, f := range foreign {
			// The one placement that is exactly the existing MIG device
			// stays usable: preparing it uses the device as it is.
			if overlaps(res, f) && (d.kind != KindMIG || d.name != f.Device) {
				ts = append(ts, resourceapi.DeviceTaint{Key: p.driver + "/" + taintMIGInUse, Effect: resourceapi.DeviceTaintEffectNoSchedule})
				break
			}
		}
		if len(ts) > 0 {
			sort.Slice(ts, func(i, j int) bool { return ts[i].Key < ts[j].Key })
			out[d.name] = ts
		}
	}
	return out
}

// deviceHealth is the worst state among the device's GPU and, for a MIG
// placement, the MIG device that sits there now. ok is false when it is
// unhealthy.
func deviceHealth(d *device, states map[string]health.State) (health.State, bool) {
	if st, ok := states[d.gpu.UUID]; ok && !st.Healthy {
		return st, false
	}
	if d.kind == KindMIG {
		for _, m := range d.gpu.MigDevices {
			if m.Name != d.name {
				continue
			}
			if st, ok := states[m.UUID]; ok && !st.Healthy {
				return st, false
			}
		}
	}
	return health.State{Healthy: true}, true
}

// overlaps reports whether two holdings take any of the same GPU: the
// same GPU, and not two MIG spans that are apart.
func overlaps(a, b ledger.Resource) bool {
	if a.GPU != b.GPU {
		return false
	}
	if a.Slices == nil || b.Slices == nil {
		return true
	}
	return a.Slices.Start < b.Slices.Start+b.Slices.Size && b.Slices.Start < a.Slices.Start+a.Slices.Size
}

func overlapsAny(r ledger.Resource, others []ledger.Resource) bool {
	for _, o := range others {
		if overlaps(r, o) {
			return true
		}
	}
	return false
}

// labelValue makes s a valid label value (a taint's value must be one).
func labelValue(s string) string {
	if len(validation.IsValidLabelValue(s)) == 0 {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if r < 0x80 && (r == '-' || r == '_' || r == '.' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')) {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	v := strings.Trim(b.String(), "-_.")
	if len(v) > validation.LabelValueMaxLength {
		v = strings.Trim(v[:validation.LabelValueMaxLength], "-_.")
	}
	return v
}

// SliceObjects renders a pool's slices as the ResourceSlice objects the
// resourceslice controller writes for a node (names aside: the
// controller's come from generateName), for golden files and for tests that
// hand them to an API server.
func SliceObjects(res resourceslice.DriverResources, driver, node string) []*resourceapi.ResourceSlice {
	var out []*resourceapi.ResourceSlice
	for _, poolName := range sortedKeys(res.Pools) {
		pool := res.Pools[poolName]
		for i, s := range pool.Slices {
			rs := &resourceapi.ResourceSlice{
				TypeMeta:   metav1.TypeMeta{APIVersion: resourceapi.SchemeGroupVersion.String(), Kind: "ResourceSlice"},
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%s-%d", node, strings.ReplaceAll(driver, ".", "-"), i)},
				Spec: resourceapi.ResourceSliceSpec{
					Driver:         driver,
					Pool:           resourceapi.ResourcePool{Name: poolName, Generation: 1, ResourceSliceCount: int64(len(pool.Slices))},
					NodeName:       new(node),
					Devices:        s.Devices,
					SharedCounters: s.SharedCounters,
				},
			}
			out = append(out, rs)
		}
	}
	return out
}

// PublishOptions are what BuildResources publishes a node's devices with.
type PublishOptions struct {
	// DriverName is the driver; default DefaultDriverName.
	DriverName string
	// NodeName is the node and the pool's name.
	NodeName string
	// ConsumableCapacity publishes a shared twin of every GPU.
	ConsumableCapacity bool
	// PCIeRoots gives GPUs' root complexes by UUID.
	PCIeRoots map[string]string
	// Health is every device's state by UUID (missing: healthy).
	Health map[string]health.State
	// Records are the ledger's holdings.
	Records []ledger.Record
}

// BuildResources is the pool the driver publishes for an inventory: what
// Driver.Run hands the resourceslice controller, for tests and tools that
// want to see or submit the slices without running the driver.
func BuildResources(inv *inventory.Inventory, o PublishOptions) resourceslice.DriverResources {
	if o.DriverName == "" {
		o.DriverName = DefaultDriverName
	}
	return buildResources(publication{
		driver:    o.DriverName,
		pool:      o.NodeName,
		cat:       newCatalog(inv, o.ConsumableCapacity),
		health:    o.Health,
		records:   o.Records,
		pcieRoots: o.PCIeRoots,
	})
}
