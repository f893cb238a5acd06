package gpusim

import (
	"sort"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// ready says whether the GPU instance can be used: NVML initialised, the
// GPU on the bus and the instance not destroyed (a destroyed instance's
// handle is invalid). Callers hold sim.mu.
func (gi *gpuInstance) ready() nvml.Return {
	if r := gi.dev.ready(); r != nvml.SUCCESS {
		return r
	}
	if gi.destroyed {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	return nvml.SUCCESS
}

// GetInfo describes the GPU instance.
func (gi *gpuInstance) GetInfo() (nvml.GpuInstanceInfo, nvml.Return) {
	defer gi.dev.sim.lock()()
	if r := gi.ready(); r != nvml.SUCCESS {
		return nvml.GpuInstanceInfo{}, r
	}
	return nvml.GpuInstanceInfo{
		Device:    gi.dev,
		Id:        uint32(gi.id),
		ProfileId: gi.profile.Id,
		Placement: gi.placement,
	}, nvml.SUCCESS
}

// Destroy destroys the GPU instance; ERROR_IN_USE while it has compute
// instances.
func (gi *gpuInstance) Destroy() nvml.Return {
	defer gi.dev.sim.lock()()
	if r := gi.ready(); r != nvml.SUCCESS {
		return r
	}
	if len(gi.cis) > 0 {
		return nvml.ERROR_IN_USE
	}
	gi.destroyLocked()
	gi.dev.sim.deliverLocked(gi.dev, nvml.EventMigConfigChange, 0, uint32(gi.id), noInstance)
	return nvml.SUCCESS
}

// ciProfile looks up a compute-instance profile of this GPU instance. Only
// the shared engine profile exists, as on the real GPUs.
func (gi *gpuInstance) ciProfile(id, eng int) (nvml.ComputeInstanceProfileInfo, nvml.Return) {
	if id < 0 || id >= nvml.COMPUTE_INSTANCE_PROFILE_COUNT || eng < 0 || eng >= nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_COUNT {
		return nvml.ComputeInstanceProfileInfo{}, nvml.ERROR_INVALID_ARGUMENT
	}
	if eng != nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED {
		return nvml.ComputeInstanceProfileInfo{}, nvml.ERROR_NOT_SUPPORTED
	}
	p, ok := gi.dev.sim.m.gpu.MIGProfiles.ComputeInstanceProfiles[int(gi.profile.Id)][id]
	if !ok {
		return nvml.ComputeInstanceProfileInfo{}, nvml.ERROR_NOT_SUPPORTED
	}
	return p, nvml.SUCCESS
}

// GetComputeInstanceProfileInfo returns a compute-instance profile.
func (gi *gpuInstance) GetComputeInstanceProfileInfo(id, eng int) (nvml.ComputeInstanceProfileInfo, nvml.Return) {
	defer gi.dev.sim.lock()()
	if r := gi.ready(); r != nvml.SUCCESS {
		return nvml.ComputeInstanceProfileInfo{}, r
	}
	return gi.ciProfile(id, eng)
}

func (gi *gpuInstance) ciPlacements(info *nvml.ComputeInstanceProfileInfo) ([]nvml.ComputeInstancePlacement, nvml.Return) {
	if info == nil {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	if _, r := gi.ciProfile(int(info.Id), nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED); r != nvml.SUCCESS {
		return nil, r
	}
	return gi.dev.sim.m.ciPlacements(int(gi.profile.Id), int(info.Id)), nvml.SUCCESS
}

// GetComputeInstancePossiblePlacements returns every placement of a
// compute-instance profile in this GPU instance.
func (gi *gpuInstance) GetComputeInstancePossiblePlacements(info *nvml.ComputeInstanceProfileInfo) ([]nvml.ComputeInstancePlacement, nvml.Return) {
	defer gi.dev.sim.lock()()
	if r := gi.ready(); r != nvml.SUCCESS {
		return nil, r
	}
	pls, r := gi.ciPlacements(info)
	return append([]nvml.ComputeInstancePlacement(nil), pls...), r
}

// usedCI returns the compute instances' placements and how many have the
// profile.
func (gi *gpuInstance) usedCI(profile uint32) ([]span, uint32) {
	var used []span
	n := uint32(0)
	for _, ci := range gi.cis {
		used = append(used, ciSpan(ci.placement))
		if ci.profile.Id == profile {
			n++
		}
	}
	return used, n
}

// GetComputeInstanceRemainingCapacity returns how many more compute
// instances of a profile could be created now.
func (gi *gpuInstance) GetComputeInstanceRemainingCapacity(info *nvml.ComputeInstanceProfileInfo) (int, nvml.Return) {
	defer gi.dev.sim.lock()()
	if r := gi.ready(); r != nvml.SUCCESS {
		return 0, r
	}
	pls, r := gi.ciPlacements(info)
	if r != nvml.SUCCESS {
		return 0, r
	}
	p, _ := gi.ciProfile(int(info.Id), nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
	used, n := gi.usedCI(p.Id)
	count := 0
	for _, pl := range pls {
		if n+uint32(count) < p.InstanceCount && fits(ciSpan(pl), used) {
			used = append(used, ciSpan(pl))
			count++
		}
	}
	return count, nvml.SUCCESS
}

// CreateComputeInstance creates a compute instance in the first free
// placement.
func (gi *gpuInstance) CreateComputeInstance(info *nvml.ComputeInstanceProfileInfo) (nvml.ComputeInstance, nvml.Return) {
	return gi.createCI(info, nil)
}

// CreateComputeInstanceWithPlacement creates a compute instance at a
// placement; ERROR_INSUFFICIENT_RESOURCES if it overlaps another.
func (gi *gpuInstance) CreateComputeInstanceWithPlacement(info *nvml.ComputeInstanceProfileInfo, placement *nvml.ComputeInstancePlacement) (nvml.ComputeInstance, nvml.Return) {
	if placement == nil {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	return gi.createCI(info, placement)
}

func (gi *gpuInstance) createCI(info *nvml.ComputeInstanceProfileInfo, want *nvml.ComputeInstancePlacement) (nvml.ComputeInstance, nvml.Return) {
	defer gi.dev.sim.lock()()
	if r := gi.ready(); r != nvml.SUCCESS {
		return nil, r
	}
	pls, r := gi.ciPlacements(info)
	if r != nvml.SUCCESS {
		return nil, r
	}
	p, _ := gi.ciProfile(int(info.Id), nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
	if want != nil {
		var match []nvml.ComputeInstancePlacement
		for _, pl := range pls {
			if pl.Start == want.Start && (want.Size == 0 || pl.Size == want.Size) {
				match = append(match, pl)
			}
		}
		if len(match) == 0 {
			return nil, nvml.ERROR_INVALID_ARGUMENT
		}
		pls = match
	}
	used, n := gi.usedCI(p.Id)
	if n >= p.InstanceCount {
		return nil, nvml.ERROR_INSUFFICIENT_RESOURCES
	}
	for _, pl := range pls {
		if fits(ciSpan(pl), used) {
			ci := gi.newCI(p, pl)
			gi.dev.sim.deliverLocked(gi.dev, nvml.EventMigConfigChange, 0, uint32(gi.id), uint32(ci.id))
			return ci, nvml.SUCCESS
		}
	}
	return nil, nvml.ERROR_INSUFFICIENT_RESOURCES
}

// GetComputeInstances lists the compute instances of a profile, by id.
func (gi *gpuInstance) GetComputeInstances(info *nvml.ComputeInstanceProfileInfo) ([]nvml.ComputeInstance, nvml.Return) {
	defer gi.dev.sim.lock()()
	if r := gi.ready(); r != nvml.SUCCESS {
		return nil, r
	}
	if _, r := gi.ciPlacements(info); r != nvml.SUCCESS {
		return nil, r
	}
	ids := make([]int, 0, len(gi.cis))
	for id, ci := range gi.cis {
		if ci.profile.Id == info.Id {
			ids = append(ids, id)
		}
	}
	sort.Ints(ids)
	out := make([]nvml.ComputeInstance, len(ids))
	for i, id := range ids {
		out[i] = gi.cis[id]
	}
	return out, nvml.SUCCESS
}

// GetComputeInstanceById returns a compute instance; ERROR_NOT_FOUND if
// none has the id.
func (gi *gpuInstance) GetComputeInstanceById(id int) (nvml.ComputeInstance, nvml.Return) {
	defer gi.dev.sim.lock()()
	if r := gi.ready(); r != nvml.SUCCESS {
		return nil, r
	}
	ci, ok := gi.cis[id]
	if !ok {
		return nil, nvml.ERROR_NOT_FOUND
	}
	return ci, nvml.SUCCESS
}

// ready says whether the compute instance can be used. Callers hold
// sim.mu.
func (ci *computeInstance) ready() nvml.Return {
	if r := ci.gi.dev.ready(); r != nvml.SUCCESS {
		return r
	}
	if ci.destroyed {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	return nvml.SUCCESS
}

// GetInfo describes the compute instance.
func (ci *computeInstance) GetInfo() (nvml.ComputeInstanceInfo, nvml.Return) {
	defer ci.gi.dev.sim.lock()()
	if r := ci.ready(); r != nvml.SUCCESS {
		return nvml.ComputeInstanceInfo{}, r
	}
	return nvml.ComputeInstanceInfo{
		Device:      ci.gi.dev,
		GpuInstance: ci.gi,
		Id:          uint32(ci.id),
		ProfileId:   ci.profile.Id,
		Placement:   ci.placement,
	}, nvml.SUCCESS
}

// Destroy destroys the compute instance; ERROR_IN_USE while the state
// lists a process on it.
func (ci *computeInstance) Destroy() nvml.Return {
	d := ci.gi.dev
	defer d.sim.lock()()
	if r := ci.ready(); r != nvml.SUCCESS {
		return r
	}
	for _, p := range d.cfg.Processes {
		if ptrOr(p.GPUInstance, noInstance) == uint32(ci.gi.id) && ptrOr(p.ComputeInstance, noInstance) == uint32(ci.id) {
			return nvml.ERROR_IN_USE
		}
	}
	ci.destroyed = true
	delete(ci.gi.cis, ci.id)
	d.sim.deliverLocked(d, nvml.EventMigConfigChange, 0, uint32(ci.gi.id), uint32(ci.id))
	return nvml.SUCCESS
}
