package deviceplugin

import (
	"sort"

	"github.com/NVIDIA/go-gpuallocator/gpuallocator"
)

// allocator answers GetPreferredAllocation for one resource. Everything it
// needs (the GPU topology for go-gpuallocator, each device's physical
// device) is built once, when the server is; a call only filters.
type allocator struct {
	res    Resource
	byID   map[string]Device
	policy gpuallocator.Policy
	// gpus are go-gpuallocator's devices by GPU UUID, linked as the
	// inventory says. Only used for whole, unshared GPUs.
	gpus map[string]*gpuallocator.Device
}

// topologyAware reports whether the resource is whole, unshared GPUs: the
// case NVLink placement matters for.
func (a *allocator) topologyAware() bool { return a.gpus != nil }

func newAllocator(res Resource) *allocator {
	a := &allocator{res: res, byID: make(map[string]Device, len(res.Devices)), policy: gpuallocator.NewBestEffortPolicy()}
	whole := res.Replicas == 1
	for _, d := range res.Devices {
		a.byID[d.ID] = d
		if d.Slices != nil {
			whole = false
		}
	}
	if whole && len(res.Devices) > 0 {
		a.gpus = make(map[string]*gpuallocator.Device, len(res.Devices))
	}
	return a
}

// setLinks builds go-gpuallocator's view of the GPUs: links maps a pair of
// GPU indexes to their NVLink count (0 for PCIe only). Links are made
// symmetric, which the best-effort policy requires.
func (a *allocator) setLinks(links func(i, j int) int) {
	if !a.topologyAware() {
		return
	}
	byIndex := make(map[int]*gpuallocator.Device, len(a.res.Devices))
	for _, d := range a.res.Devices {
		g := &gpuallocator.Device{Index: d.Index, Links: map[int][]gpuallocator.P2PLink{}}
		g.UUID = d.UUID
		a.gpus[d.UUID] = g
		byIndex[d.Index] = g
	}
	for i, gi := range byIndex {
		for j, gj := range byIndex {
			if i == j {
				continue
			}
			n := min(links(i, j), links(j, i))
			if n <= 0 {
				continue
			}
			l := gpuallocator.P2PLink{GPU: gj}
			setLinkType(&l.Type, nvlinkType(n))
			gi.Links[j] = append(gi.Links[j], l)
		}
	}
}

// nvlinkType is go-gpuallocator's link type for n NVLinks between two GPUs
// (its SingleNVLINKLink is 7, one more for each further link, up to 18).
func nvlinkType(n int) uint {
	return uint(6 + min(n, 18))
}

// setLinkType sets a go-gpuallocator link type, whose named type lives in
// an internal package of that module.
func setLinkType[T ~uint](t *T, v uint) { *t = T(v) }

// preferred picks size devices from available, including mustInclude.
// Unknown IDs are ignored.
func (a *allocator) preferred(available, mustInclude []string, size int) []string {
	avail := make([]Device, 0, len(available))
	for _, id := range available {
		if d, ok := a.byID[id]; ok {
			avail = append(avail, d)
		}
	}
	var must []Device
	for _, id := range mustInclude {
		if d, ok := a.byID[id]; ok {
			must = append(must, d)
		}
	}
	if size <= len(must) || size > len(avail) {
		return ids(must)
	}
	switch {
	case a.topologyAware():
		if out := a.nvlinkClose(avail, must, size); out != nil {
			return out
		}
	case a.res.Replicas > 1:
		return ids(spread(avail, must, size))
	}
	return ids(packed(avail, must, size))
}

// nvlinkClose asks go-gpuallocator's best-effort policy for the set of
// GPUs with the most NVLink between them.
func (a *allocator) nvlinkClose(avail, must []Device, size int) []string {
	var av, req []*gpuallocator.Device
	for _, d := range avail {
		if g := a.gpus[d.UUID]; g != nil {
			av = append(av, g)
		}
	}
	for _, d := range must {
		if g := a.gpus[d.UUID]; g != nil {
			req = append(req, g)
		}
	}
	picked := a.policy.Allocate(av, req, size)
	if len(picked) != size {
		return nil
	}
	out := make([]string, len(picked))
	for i, g := range picked {
		out[i] = g.UUID
	}
	sort.Strings(out)
	return out
}

// spread picks replicas on as many different physical devices as it can,
// least-used devices first, so time-sliced pods share GPUs evenly.
func spread(avail, must []Device, size int) []Device {
	free := map[string]int{}
	for _, d := range avail {
		free[d.UUID]++
	}
	chosen := append([]Device(nil), must...)
	taken := map[string]bool{}
	perDevice := map[string]int{}
	for _, d := range must {
		taken[d.ID] = true
		perDevice[d.UUID]++
	}
	for len(chosen) < size {
		best := -1
		for i, d := range avail {
			if taken[d.ID] {
				continue
			}
			if best < 0 || better(d, avail[best], perDevice, free) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		d := avail[best]
		taken[d.ID] = true
		perDevice[d.UUID]++
		free[d.UUID]--
		chosen = append(chosen, d)
	}
	return chosen
}

// better orders candidate replicas: fewest already chosen on its device,
// then most free replicas left (least loaded), then lowest ID.
func better(a, b Device, perDevice, free map[string]int) bool {
	if perDevice[a.UUID] != perDevice[b.UUID] {
		return perDevice[a.UUID] < perDevice[b.UUID]
	}
	if free[a.UUID] != free[b.UUID] {
		return free[a.UUID] > free[b.UUID]
	}
	return a.ID < b.ID
}

// packed picks devices in order of GPU index and slice, after mustInclude:
// MIG devices of one GPU stay together.
func packed(avail, must []Device, size int) []Device {
	chosen := append([]Device(nil), must...)
	taken := map[string]bool{}
	for _, d := range must {
		taken[d.ID] = true
	}
	rest := make([]Device, 0, len(avail))
	for _, d := range avail {
		if !taken[d.ID] {
			rest = append(rest, d)
		}
	}
	sort.Slice(rest, func(i, j int) bool {
		if rest[i].Index != rest[j].Index {
			return rest[i].Index < rest[j].Index
		}
		return rest[i].ID < rest[j].ID
	})
	for _, d := range rest {
		if len(chosen) == size {
			break
		}
		chosen = append(chosen, d)
	}
	return chosen
}

func ids(devs []Device) []string {
	out := make([]string, len(devs))
	for i, d := range devs {
		out[i] = d.ID
	}
	return out
}
