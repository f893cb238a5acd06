// Package deviceplugin serves the kubelet's device-plugin API (v1beta1):
// one gRPC server per resource name (nvidia.com/gpu, nvidia.com/mig-1g.10gb,
// time-sliced replicas), registered with the kubelet and re-registered when
// the kubelet restarts. Allocations go through the node's ledger, so the
// device plugin and the DRA driver never hand out one device twice.
package deviceplugin

import (
	"fmt"
	"sort"
	"strings"

	configv1 "github.com/gpulet/gpulet/api/config/v1"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/ledger"
)

// Config is the part of gpulet's configuration the device plugin uses.
type Config struct {
	MigStrategy configv1.MigStrategy
	// TimeSlicing replicates resources; nil replicates none.
	TimeSlicing *configv1.ReplicatedResources
	// DeviceListStrategy is cdi-cri (CDI names in CdiDevices) or envvar
	// (NVIDIA_VISIBLE_DEVICES).
	DeviceListStrategy configv1.DeviceListStrategy
}

// replicaSep joins a physical device's UUID and a replica number in a
// replica's device ID, as NVIDIA's plugin does: "GPU-...::3".
const replicaSep = "::"

// Resource is one resource name and the devices advertised under it.
type Resource struct {
	Name string
	// Devices are sorted by ID.
	Devices []Device
	// Replicas is how many devices each physical device is advertised as.
	Replicas                   int
	FailRequestsGreaterThanOne bool
}

// Device is one advertised device: a whole GPU, a MIG device, or a replica
// of either.
type Device struct {
	// ID is what the kubelet sees: the UUID, or "<uuid>::<n>" for a replica.
	ID string
	// UUID is the physical device (GPU or MIG device).
	UUID string
	// GPU is the UUID of the physical GPU (the UUID itself for a whole GPU).
	GPU string
	// Index is the GPU's NVML index, for topology-aware allocation.
	Index int
	// Slices is set for a MIG device: the memory slices it occupies.
	Slices *ledger.Slices
	// NUMANode is nil when unknown.
	NUMANode *int
	// Shared is true for replicas.
	Shared bool
}

// resource returns the ledger resource a device holds.
func (d Device) resource() ledger.Resource {
	return ledger.Resource{GPU: d.GPU, Slices: d.Slices, Device: d.UUID, Shared: d.Shared}
}

// Plan decides which resources the node advertises under cfg: pure, so it
// is tested with tables and diffed to restart only what changed. Problems
// that leave a resource out (a single-strategy node whose GPUs are split
// differently) are returned as warnings.
func Plan(inv *inventory.Inventory, cfg Config) ([]Resource, []string) {
	physical := map[string][]Device{}
	var warnings []string
	add := func(name string, d Device) { physical[name] = append(physical[name], d) }

	switch cfg.MigStrategy {
	case configv1.MigStrategyMixed:
		for _, g := range inv.GPUs {
			if !g.MigEnabled() {
				add("nvidia.com/gpu", wholeGPU(g))
				continue
			}
			for _, m := range g.MigDevices {
				add("nvidia.com/mig-"+m.Profile, migDevice(g, m))
			}
		}
	case configv1.MigStrategySingle:
		profiles := map[string]bool{}
		allMIG := true
		for _, g := range inv.GPUs {
			if !g.MigEnabled() {
				allMIG = false
				continue
			}
			for _, m := range g.MigDevices {
				profiles[m.Profile] = true
			}
		}
		switch {
		case len(inv.GPUs) > 0 && !allMIG:
			warnings = append(warnings, "migStrategy single: not every GPU is in MIG mode; advertising no nvidia.com/gpu (use mixed)")
		case len(profiles) > 1:
			warnings = append(warnings, fmt.Sprintf("migStrategy single: GPUs are split into different MIG profiles (%s); advertising no nvidia.com/gpu (use mixed)", strings.Join(sortedKeys(profiles), ", ")))
		default:
			for _, g := range inv.GPUs {
				for _, m := range g.MigDevices {
					add("nvidia.com/gpu", migDevice(g, m))
				}
			}
		}
		if _, ok := physical["nvidia.com/gpu"]; !ok {
			physical["nvidia.com/gpu"] = nil
		}
	default: // none
		for _, g := range inv.GPUs {
			add("nvidia.com/gpu", wholeGPU(g))
		}
	}

	var out []Resource
	for name, devs := range physical {
		shared, _ := cfg.TimeSlicing.ReplicasFor(name)
		r := Resource{Name: shared.Name, Replicas: max(shared.Replicas, 1), FailRequestsGreaterThanOne: shared.FailRequestsGreaterThanOne}
		for _, d := range devs {
			if r.Replicas == 1 {
				r.Devices = append(r.Devices, d)
				continue
			}
			for i := 0; i < r.Replicas; i++ {
				rd := d
				rd.ID = fmt.Sprintf("%s%s%d", d.UUID, replicaSep, i)
				rd.Shared = true
				r.Devices = append(r.Devices, rd)
			}
		}
		sort.Slice(r.Devices, func(i, j int) bool { return r.Devices[i].ID < r.Devices[j].ID })
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, warnings
}

func wholeGPU(g inventory.GPU) Device {
	return Device{ID: g.UUID, UUID: g.UUID, GPU: g.UUID, Index: g.Index, NUMANode: g.NUMANode}
}

func migDevice(g inventory.GPU, m inventory.MigDevice) Device {
	return Device{
		ID: m.UUID, UUID: m.UUID, GPU: g.UUID, Index: g.Index, NUMANode: g.NUMANode,
		Slices: &ledger.Slices{Start: m.Placement.Start, Size: m.Placement.Size},
	}
}

// equal reports whether two plans of one resource advertise the same thing,
// so its server can keep running.
func (r Resource) equal(o Resource) bool {
	if r.Name != o.Name || r.Replicas != o.Replicas || r.FailRequestsGreaterThanOne != o.FailRequestsGreaterThanOne || len(r.Devices) != len(o.Devices) {
		return false
	}
	for i := range r.Devices {
		a, b := r.Devices[i], o.Devices[i]
		if a.ID != b.ID || a.UUID != b.UUID || a.GPU != b.GPU || a.Index != b.Index {
			return false
		}
	}
	return true
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
