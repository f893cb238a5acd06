package dra

import (
	"sort"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/dynamic-resource-allocation/deviceattribute"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/nvml"
)

// Attribute and capacity names. Unqualified names are in the driver's own
// domain (device.attributes["gpu.gpulet.dev"].productName in CEL); the
// standard ones carry their resource.kubernetes.io prefix.
const (
	attrType                  = "type"
	attrUUID                  = "uuid"
	attrProductName           = "productName"
	attrBrand                 = "brand"
	attrArchitecture          = "architecture"
	attrCUDAComputeCapability = "cudaComputeCapability"
	attrDriverVersion         = "driverVersion"
	attrCUDADriverVersion     = "cudaDriverVersion"
	attrIndex                 = "index"
	attrMinor                 = "minor"
	attrMIGCapable            = "migCapable"
	attrMIGEnabled            = "migEnabled"
	attrNVLinkDomain          = "nvlinkDomain"
	attrProfile               = "profile"
	attrParentUUID            = "parentUUID"
	attrParentIndex           = "parentIndex"
	attrPlacementStart        = "placementStart"
	attrPlacementSize         = "placementSize"
	attrCopyEngines           = "copyEngines"
	attrDecoders              = "decoders"
	attrEncoders              = "encoders"
	attrJPEGs                 = "jpegs"
	attrOFAs                  = "ofas"

	capMemory          = "memory"
	capMultiprocessors = "multiprocessors"
)

// sharedMemoryStep is the granularity of a shared GPU's memory requests:
// a claim asks for whole GiB, and gets at least one.
var sharedMemoryStep = resource.MustParse("1Gi")

// PCIeRootFunc finds the PCIe root complex ("pci0000:00") of the device at
// a PCI bus ID, for the standard resource.kubernetes.io/pcieRoot
// attribute.
type PCIeRootFunc func(pciBusID string) (string, error)

// SysfsPCIeRoot reads the root complex from sysfs under root ("/" on a
// node), as the kubelet and other drivers do.
func SysfsPCIeRoot(root string) PCIeRootFunc {
	return func(busID string) (string, error) {
		a, err := deviceattribute.GetPCIeRootAttributeByPCIBusID(busID, deviceattribute.WithFSFromRoot(root))
		if err != nil {
			return "", err
		}
		return *a.Value.StringValue, nil
	}
}

// TopologyPCIeRoots derives root complexes from NVML's PCIe topology, for
// nodes whose sysfs does not know the GPUs (the simulator): GPUs whose
// nearest common PCIe ancestor is at most a host bridge share a root
// complex, which is named after the lowest bus ID among them
// ("pci0000:07"). The grouping is NVML's; only the name is made up.
func TopologyPCIeRoots(inv *inventory.Inventory) map[string]string {
	parent := map[string]string{}
	var find func(string) string
	find = func(u string) string {
		p, ok := parent[u]
		if !ok || p == u {
			return u
		}
		r := find(p)
		parent[u] = r
		return r
	}
	for _, g := range inv.GPUs {
		parent[g.UUID] = g.UUID
	}
	for _, g := range inv.GPUs {
		for _, l := range g.Links {
			switch l.PCIe {
			case nvml.PCIeSameBoard, nvml.PCIeSwitch, nvml.PCIeMultiSwitch, nvml.PCIeHostBridge:
				if _, ok := parent[l.PeerUUID]; ok {
					parent[find(g.UUID)] = find(l.PeerUUID)
				}
			}
		}
	}
	lowest := map[string]string{}
	for _, g := range inv.GPUs {
		r := find(g.UUID)
		if b, ok := lowest[r]; !ok || g.PCIBusID < b {
			lowest[r] = g.PCIBusID
		}
	}
	roots := map[string]string{}
	for _, g := range inv.GPUs {
		bus := lowest[find(g.UUID)]
		if i := strings.LastIndexByte(bus, ':'); i > 0 {
			roots[g.UUID] = "pci" + bus[:i]
		}
	}
	return roots
}

type attributes map[resourceapi.QualifiedName]resourceapi.DeviceAttribute

func (a attributes) str(name, v string) {
	if v != "" && len(v) <= resourceapi.DeviceAttributeMaxValueLength {
		a[resourceapi.QualifiedName(name)] = resourceapi.DeviceAttribute{StringValue: &v}
	}
}

func (a attributes) integer(name string, v int64) {
	a[resourceapi.QualifiedName(name)] = resourceapi.DeviceAttribute{IntValue: &v}
}

func (a attributes) boolean(name string, v bool) {
	a[resourceapi.QualifiedName(name)] = resourceapi.DeviceAttribute{BoolValue: &v}
}

// version publishes v as a semantic version when it reads as one
// (drivers report "535.104.05": leading zeros are dropped, missing parts
// are zero), and leaves the attribute out otherwise, so that its type is
// the same on every device.
func (a attributes) version(name, v string) {
	if s, ok := semver(v); ok {
		a[resourceapi.QualifiedName(name)] = resourceapi.DeviceAttribute{VersionValue: &s}
	}
}

func semver(v string) (string, bool) {
	parts := strings.Split(v, ".")
	if v == "" || len(parts) > 3 {
		return "", false
	}
	nums := []string{"0", "0", "0"}
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return "", false
		}
		nums[i] = strconv.FormatUint(n, 10)
	}
	return strings.Join(nums, "."), true
}

// commonAttributes are those a GPU and the MIG devices made of it share:
// what the silicon and the driver are, and where they sit.
func commonAttributes(g *inventory.GPU, sys nvml.System, pcieRoot string) attributes {
	a := attributes{}
	a.str(attrProductName, g.Device.Name)
	a.str(attrBrand, g.Brand)
	a.str(attrArchitecture, g.Architecture)
	a.version(attrCUDAComputeCapability, g.CUDAComputeCapability)
	a.version(attrDriverVersion, sys.DriverVersion)
	a.version(attrCUDADriverVersion, sys.CUDADriverVersion)
	a.str(string(deviceattribute.StandardDeviceAttributePCIBusID), g.PCIBusID)
	a.str(string(deviceattribute.StandardDeviceAttributePCIeRoot), pcieRoot)
	if g.NUMANode != nil && *g.NUMANode >= 0 {
		a.integer(string(deviceattribute.StandardDeviceAttributeNUMANode), int64(*g.NUMANode))
	}
	return a
}

// gpuAttributes are a whole GPU's (and its shared twin's) attributes.
func gpuAttributes(g *inventory.GPU, sys nvml.System, pcieRoot string) attributes {
	a := commonAttributes(g, sys, pcieRoot)
	a.str(attrType, string(KindGPU))
	a.str(attrUUID, g.UUID)
	a.integer(attrIndex, int64(g.Index))
	a.integer(attrMinor, int64(g.Minor))
	a.boolean(attrMIGCapable, g.MIG != nil)
	a.boolean(attrMIGEnabled, g.MigEnabled())
	a.str(attrNVLinkDomain, g.NVLinkDomain)
	return a
}

// migAttributes are a MIG placement's attributes.
func migAttributes(g *inventory.GPU, p *inventory.MigPlacement, sys nvml.System, pcieRoot string) attributes {
	a := commonAttributes(g, sys, pcieRoot)
	a.str(attrType, string(KindMIG))
	a.str(attrProfile, p.Profile.Name)
	a.str(attrParentUUID, g.UUID)
	a.integer(attrParentIndex, int64(g.Index))
	a.integer(attrPlacementStart, int64(p.Placement.Start))
	a.integer(attrPlacementSize, int64(p.Placement.Size))
	a.integer(attrCopyEngines, int64(p.Profile.CopyEngines))
	a.integer(attrDecoders, int64(p.Profile.Decoders))
	a.integer(attrEncoders, int64(p.Profile.Encoders))
	a.integer(attrJPEGs, int64(p.Profile.JPEGs))
	a.integer(attrOFAs, int64(p.Profile.OFAs))
	return a
}

func capacity(v int64) resourceapi.DeviceCapacity {
	return resourceapi.DeviceCapacity{Value: *resource.NewQuantity(v, resource.BinarySI)}
}

// gpuCapacity is a whole GPU's memory and multiprocessors.
func gpuCapacity(g *inventory.GPU) map[resourceapi.QualifiedName]resourceapi.DeviceCapacity {
	c := map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{capMemory: capacity(int64(g.MemoryBytes))}
	if g.Multiprocessors > 0 {
		c[capMultiprocessors] = resourceapi.DeviceCapacity{Value: *resource.NewQuantity(int64(g.Multiprocessors), resource.DecimalSI)}
	}
	return c
}

// sharedCapacity is a shared GPU's memory, consumed by each claim: whole
// GiB, at least one, one GiB when the claim does not say. Multiprocessors
// are left out: time-slicing does not divide them, and a capacity without
// a request policy would be consumed whole by every claim.
func sharedCapacity(g *inventory.GPU) map[resourceapi.QualifiedName]resourceapi.DeviceCapacity {
	c := capacity(int64(g.MemoryBytes))
	step := sharedMemoryStep.DeepCopy()
	c.RequestPolicy = &resourceapi.CapacityRequestPolicy{
		Default: &step,
		ValidRange: &resourceapi.CapacityRequestPolicyRange{
			Min:  new(sharedMemoryStep.DeepCopy()),
			Step: new(sharedMemoryStep.DeepCopy()),
		},
	}
	return map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{capMemory: c}
}

// migCapacity is a MIG placement's memory and multiprocessors.
func migCapacity(p *inventory.MigPlacement) map[resourceapi.QualifiedName]resourceapi.DeviceCapacity {
	c := map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{capMemory: capacity(int64(p.Profile.MemoryBytes))}
	if p.Profile.Multiprocessors > 0 {
		c[capMultiprocessors] = resourceapi.DeviceCapacity{Value: *resource.NewQuantity(int64(p.Profile.Multiprocessors), resource.DecimalSI)}
	}
	return c
}

// Counter names in a GPU's counter set.
const (
	counterComputeSlices = "compute-slices"
	counterCopyEngines   = "copy-engines"
	counterDecoders      = "decoders"
	counterEncoders      = "encoders"
	counterJPEGs         = "jpegs"
	counterOFAs          = "ofas"
)

func memorySliceCounter(i int) string { return "memory-slice-" + strconv.Itoa(i) }

// counterTotals is what a partitioned GPU's counter set holds. Memory
// slices are counted one by one, so that placements which overlap can
// never be allocated together (a count of slices would let a 3g and a 4g
// placement that both start at slice 0 fit). Compute slices and engines
// are pooled. An engine total is the most any one profile can use at
// once (its count times its instance limit): the full profile reports
// fewer decoders than seven 1g instances have together, and the limit of
// one "+me" instance comes out of the JPEG and OFA totals. A GPU not in
// MIG mode (one with only a shared twin) is a single memory slice.
func counterTotals(g *inventory.GPU) map[string]int64 {
	t := map[string]int64{}
	if !g.MigEnabled() {
		t[memorySliceCounter(0)] = 1
		return t
	}
	for i := 0; i < g.MIG.MemorySlices; i++ {
		t[memorySliceCounter(i)] = 1
	}
	t[counterComputeSlices] = int64(g.MIG.ComputeSlices)
	for _, p := range g.MIG.Profiles {
		n := int64(max(p.MaxInstances, 1))
		for name, v := range engineCounts(p) {
			t[name] = max(t[name], n*int64(v))
		}
	}
	for name, v := range t {
		if v <= 0 {
			delete(t, name)
		}
	}
	return t
}

func engineCounts(p nvml.MigProfile) map[string]int {
	return map[string]int{
		counterCopyEngines: p.CopyEngines,
		counterDecoders:    p.Decoders,
		counterEncoders:    p.Encoders,
		counterJPEGs:       p.JPEGs,
		counterOFAs:        p.OFAs,
	}
}

// placementCounters is what a MIG placement consumes: its memory slices,
// its compute slices and its engines.
func placementCounters(p *inventory.MigPlacement, totals map[string]int64) map[string]int64 {
	c := map[string]int64{}
	for i := p.Placement.Start; i < p.Placement.Start+p.Placement.Size; i++ {
		c[memorySliceCounter(i)] = 1
	}
	c[counterComputeSlices] = int64(p.Profile.ComputeSlices)
	for name, v := range engineCounts(p.Profile) {
		c[name] = int64(v)
	}
	for name, v := range c {
		if _, ok := totals[name]; !ok || v <= 0 {
			delete(c, name)
		}
	}
	return c
}

func counters(m map[string]int64) map[string]resourceapi.Counter {
	out := make(map[string]resourceapi.Counter, len(m))
	for name, v := range m {
		out[name] = resourceapi.Counter{Value: *resource.NewQuantity(v, resource.DecimalSI)}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
