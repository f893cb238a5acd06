package metrics

import (
	"cmp"
	"context"
	"slices"
	"strings"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/podresources"
)

// deviceRef is a device as metrics label it.
type deviceRef struct {
	Name string
	UUID string
}

// deviceIndex resolves the names the two APIs use for a device (a UUID, a
// time-sliced replica "<uuid>::<n>", a DRA device name, a MIG placement
// on a GPU) to the inventory's devices.
type deviceIndex struct {
	byKey    map[string]deviceRef
	bySlices map[sliceKey]deviceRef
}

type sliceKey struct {
	gpu         string
	start, size int
}

func newDeviceIndex(inv *inventory.Inventory) *deviceIndex {
	ix := &deviceIndex{byKey: map[string]deviceRef{}, bySlices: map[sliceKey]deviceRef{}}
	if inv == nil {
		return ix
	}
	for _, g := range inv.GPUs {
		ref := deviceRef{Name: g.Name, UUID: g.UUID}
		ix.byKey[g.UUID], ix.byKey[g.Name] = ref, ref
		for _, m := range g.MigDevices {
			mref := deviceRef{Name: m.Name, UUID: m.UUID}
			ix.byKey[m.UUID], ix.byKey[m.Name] = mref, mref
			ix.bySlices[sliceKey{g.UUID, m.Placement.Start, m.Placement.Size}] = mref
		}
	}
	return ix
}

// resolve finds a device by UUID, replica ID or device name.
func (ix *deviceIndex) resolve(id string) (deviceRef, bool) {
	if base, _, ok := strings.Cut(id, "::"); ok {
		id = base
	}
	ref, ok := ix.byKey[id]
	return ref, ok
}

// resolveResource finds the device a ledger resource holds: by its
// device name, else by the MIG slices it occupies on its GPU.
func (ix *deviceIndex) resolveResource(r ledger.Resource) (deviceRef, bool) {
	if ref, ok := ix.resolve(r.Device); ok {
		return ref, true
	}
	if r.Slices != nil {
		ref, ok := ix.bySlices[sliceKey{r.GPU, r.Slices.Start, r.Slices.Size}]
		return ref, ok
	}
	return ix.resolve(r.GPU)
}

// attribute merges what the kubelet reports (authoritative for pod and
// container) with the ledger (which also knows holders the kubelet has not
// reported yet, and claims before their pod starts). It returns the
// allocations, sorted and without duplicates, and the device identifiers
// that are nobody's in the inventory (a MIG device created since the
// inventory was built).
func attribute(ix *deviceIndex, records []ledger.Record, pods []podresources.Pod, draDriver string) ([]Allocation, []string) {
	var (
		out     []Allocation
		unknown []string
		// What the kubelet reported, to drop the ledger's copy of it.
		reportedIDs    = map[string]bool{}    // device-plugin device IDs
		reportedClaims = map[[3]string]bool{} // namespace, claim, device UUID
		// What the DRA driver recorded for each claim's devices: it
		// resolves names the inventory lacks (a GPU's shared twin).
		claimed = map[[3]string]ledger.Resource{} // namespace, claim, device name
	)
	for _, rec := range records {
		if rec.API == ledger.DRA {
			for _, res := range rec.Resources {
				claimed[[3]string{rec.Namespace, rec.Name, res.Device}] = res
			}
		}
	}
	for _, p := range pods {
		for _, c := range p.Containers {
			for _, d := range c.Devices {
				for _, id := range d.IDs {
					ref, ok := ix.resolve(id)
					if !ok {
						// Another plugin's device (or a vanished one): not ours to report.
						continue
					}
					reportedIDs[id] = true
					out = append(out, Allocation{Device: ref.Name, UUID: ref.UUID, API: ledger.DevicePlugin,
						Namespace: p.Namespace, Pod: p.Name, Container: c.Name})
				}
			}
			for _, cl := range c.Claims {
				for _, d := range cl.Devices {
					if d.Driver != draDriver {
						continue
					}
					ns := cmp.Or(cl.Namespace, p.Namespace)
					ref, ok := ix.resolve(d.Device)
					if res, recorded := claimed[[3]string{ns, cl.Name, d.Device}]; !ok && recorded {
						ref, ok = ix.resolveResource(res)
					}
					if !ok {
						unknown = append(unknown, d.Device)
						continue
					}
					reportedClaims[[3]string{ns, cl.Name, ref.UUID}] = true
					out = append(out, Allocation{Device: ref.Name, UUID: ref.UUID, API: ledger.DRA,
						Namespace: ns, Pod: p.Name, Container: c.Name, Claim: cl.Name})
				}
			}
		}
	}
	for _, rec := range records {
		for _, res := range rec.Resources {
			ref, ok := ix.resolveResource(res)
			if !ok {
				unknown = append(unknown, res.Device)
				continue
			}
			a := Allocation{Device: ref.Name, UUID: ref.UUID, API: rec.API,
				Namespace: rec.Namespace, Pod: rec.Pod, Container: rec.Container}
			switch rec.API {
			case ledger.DRA:
				a.Claim = rec.Name
				if reportedClaims[[3]string{rec.Namespace, rec.Name, ref.UUID}] {
					continue
				}
			case ledger.DevicePlugin:
				if reportedIDs[rec.ID] {
					continue
				}
			}
			out = append(out, a)
		}
	}
	slices.SortFunc(out, compareAllocations)
	return slices.Compact(out), unknown
}

func compareAllocations(a, b Allocation) int {
	return cmp.Or(
		cmp.Compare(a.Device, b.Device),
		cmp.Compare(a.UUID, b.UUID),
		cmp.Compare(a.API, b.API),
		cmp.Compare(a.Namespace, b.Namespace),
		cmp.Compare(a.Pod, b.Pod),
		cmp.Compare(a.Container, b.Container),
		cmp.Compare(a.Claim, b.Claim),
	)
}

// podMemory sums the memory of each container's processes per device,
// naming pods through resolve (nil: pods are left unnamed).
func podMemory(ctx context.Context, devices []DeviceSample, procs *procReader, pods PodResolver) []PodMemory {
	sums := map[PodMemory]uint64{}
	live := map[uint32]bool{}
	for _, d := range devices {
		if !d.ProcessesOK {
			continue
		}
		for _, p := range d.Processes {
			live[p.PID] = true
			pc, ok := procs.lookup(p.PID)
			if !ok {
				continue
			}
			key := PodMemory{Device: d.Name, UUID: d.UUID, PodUID: pc.PodUID}
			if pods != nil {
				if info, ok := pods.ResolvePod(ctx, pc.PodUID, pc.ContainerID); ok {
					key.Namespace, key.Pod, key.Container = info.Namespace, info.Name, info.Container
				}
			}
			sums[key] += p.UsedMemoryBytes
		}
	}
	procs.retain(live)
	out := make([]PodMemory, 0, len(sums))
	for k, v := range sums {
		k.Bytes = v
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b PodMemory) int {
		return cmp.Or(cmp.Compare(a.Device, b.Device), cmp.Compare(a.Namespace, b.Namespace),
			cmp.Compare(a.Pod, b.Pod), cmp.Compare(a.PodUID, b.PodUID), cmp.Compare(a.Container, b.Container))
	})
	return out
}
