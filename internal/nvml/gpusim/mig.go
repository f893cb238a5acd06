package gpusim

import (
	"slices"
	"sort"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// gpuInstance is a simulated MIG GPU instance.
type gpuInstance struct {
	mock.GpuInstance
	dev       *device
	id        int
	profile   nvml.GpuInstanceProfileInfo
	placement nvml.GpuInstancePlacement

	// Guarded by sim.mu.
	cis       map[int]*computeInstance
	destroyed bool
}

// computeInstance is a simulated MIG compute instance; with its GPU
// instance it is a MIG device, whose handle it keeps so that every lookup
// returns the same handle.
type computeInstance struct {
	mock.ComputeInstance
	gi        *gpuInstance
	id        int
	profile   nvml.ComputeInstanceProfileInfo
	placement nvml.ComputeInstancePlacement
	handle    *migDevice

	destroyed bool // guarded by sim.mu
}

var (
	_ nvml.GpuInstance     = (*gpuInstance)(nil)
	_ nvml.ComputeInstance = (*computeInstance)(nil)
)

// rebuildMIG destroys the GPU's MIG instances and creates the layout of
// cfg, which validation has already placed. Callers hold sim.mu.
func (d *device) rebuildMIG(cfg DeviceState) {
	for _, gi := range d.gis {
		gi.destroyLocked()
	}
	d.gis = map[int]*gpuInstance{}
	d.migEnabled = cfg.MIGEnabled
	if !cfg.MIGEnabled {
		return
	}
	planned, _ := d.sim.m.planMIG(cfg.MIG, "mig")
	for _, p := range planned {
		gi := d.newGI(p.profile, p.placement)
		for _, c := range p.cis {
			gi.newCI(c.profile, c.placement)
		}
	}
}

func (d *device) newGI(profile nvml.GpuInstanceProfileInfo, placement nvml.GpuInstancePlacement) *gpuInstance {
	id := giIDFor(profile.SliceCount, placement.Start, func(id int) bool { return d.gis[id] != nil })
	gi := &gpuInstance{dev: d, id: id, profile: profile, placement: placement, cis: map[int]*computeInstance{}}
	fillStubs(&gi.GpuInstance, func() nvml.Return {
		defer d.sim.lock()()
		if r := gi.ready(); r != nvml.SUCCESS {
			return r
		}
		return nvml.ERROR_NOT_SUPPORTED
	})
	d.gis[id] = gi
	return gi
}

func (gi *gpuInstance) newCI(profile nvml.ComputeInstanceProfileInfo, placement nvml.ComputeInstancePlacement) *computeInstance {
	ci := &computeInstance{gi: gi, id: int(placement.Start), profile: profile, placement: placement}
	for gi.cis[ci.id] != nil { // placement starts are unique; stay safe anyway
		ci.id++
	}
	fillStubs(&ci.ComputeInstance, func() nvml.Return { return nvml.ERROR_NOT_SUPPORTED })
	ci.handle = newMigDevice(ci)
	gi.cis[ci.id] = ci
	return ci
}

func (gi *gpuInstance) destroyLocked() {
	for _, ci := range gi.cis {
		ci.destroyed = true
	}
	gi.cis = map[int]*computeInstance{}
	gi.destroyed = true
	delete(gi.dev.gis, gi.id)
}

// migDevicesLocked lists the GPU's MIG devices (compute instances) in
// index order: by GPU-instance id, then compute-instance id.
func (d *device) migDevicesLocked() []*computeInstance {
	var out []*computeInstance
	for _, gi := range d.gis {
		for _, ci := range gi.cis {
			out = append(out, ci)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].gi.id != out[j].gi.id {
			return out[i].gi.id < out[j].gi.id
		}
		return out[i].id < out[j].id
	})
	return out
}

// migReady is ready plus MIG mode on.
func (d *device) migReady() nvml.Return {
	if r := d.ready(); r != nvml.SUCCESS {
		return r
	}
	if !d.migEnabled {
		return nvml.ERROR_NOT_SUPPORTED
	}
	return nvml.SUCCESS
}

func migMode(on bool) int {
	if on {
		return nvml.DEVICE_MIG_ENABLE
	}
	return nvml.DEVICE_MIG_DISABLE
}

// GetMigMode returns the current and pending MIG mode (always equal: mode
// changes take effect at once).
func (d *device) GetMigMode() (int, int, nvml.Return) {
	on, r := answer(d, func() bool { return d.migEnabled })
	return migMode(on), migMode(on), r
}

// SetMigMode switches MIG mode at once. Turning it off while GPU instances
// exist is refused with ERROR_IN_USE. The state file's migEnabled wins
// again when that GPU's MIG settings next change.
func (d *device) SetMigMode(mode int) (nvml.Return, nvml.Return) {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return r, r
	}
	switch mode {
	case nvml.DEVICE_MIG_ENABLE:
		d.migEnabled = true
	case nvml.DEVICE_MIG_DISABLE:
		if len(d.gis) > 0 {
			return nvml.ERROR_IN_USE, nvml.ERROR_IN_USE
		}
		d.migEnabled = false
	default:
		return nvml.ERROR_INVALID_ARGUMENT, nvml.ERROR_INVALID_ARGUMENT
	}
	return nvml.SUCCESS, nvml.SUCCESS
}

// giProfile looks up a GPU-instance profile by id: ERROR_INVALID_ARGUMENT
// past the profile range, ERROR_NOT_SUPPORTED for one the GPU lacks.
func (d *device) giProfile(id int) (nvml.GpuInstanceProfileInfo, nvml.Return) {
	if id < 0 || id >= nvml.GPU_INSTANCE_PROFILE_COUNT {
		return nvml.GpuInstanceProfileInfo{}, nvml.ERROR_INVALID_ARGUMENT
	}
	p, ok := d.sim.m.gpu.MIGProfiles.GpuInstanceProfiles[id]
	if !ok {
		return nvml.GpuInstanceProfileInfo{}, nvml.ERROR_NOT_SUPPORTED
	}
	return p, nvml.SUCCESS
}

// GetGpuInstanceProfileInfo returns a GPU-instance profile (MIG mode need
// not be on).
func (d *device) GetGpuInstanceProfileInfo(id int) (nvml.GpuInstanceProfileInfo, nvml.Return) {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return nvml.GpuInstanceProfileInfo{}, r
	}
	return d.giProfile(id)
}

// GetGpuInstancePossiblePlacements returns every placement of a profile,
// free or not.
func (d *device) GetGpuInstancePossiblePlacements(info *nvml.GpuInstanceProfileInfo) ([]nvml.GpuInstancePlacement, nvml.Return) {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return nil, r
	}
	if info == nil {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	if _, r := d.giProfile(int(info.Id)); r != nvml.SUCCESS {
		return nil, r
	}
	return append([]nvml.GpuInstancePlacement(nil), d.sim.m.gpu.MIGProfiles.GpuInstancePlacements[int(info.Id)]...), nvml.SUCCESS
}

// freeGIPlacement returns the first free placement of a profile, or the
// given one if it is free; the Return says why not.
func (d *device) freeGIPlacement(p nvml.GpuInstanceProfileInfo, want *nvml.GpuInstancePlacement) (nvml.GpuInstancePlacement, nvml.Return) {
	n := uint32(0)
	var used []span
	for _, gi := range d.gis {
		used = append(used, giSpan(gi.placement))
		if gi.profile.Id == p.Id {
			n++
		}
	}
	possible := d.sim.m.gpu.MIGProfiles.GpuInstancePlacements[int(p.Id)]
	if want != nil {
		// A placement must be one the profile offers; a size of 0 matches
		// any size at that start.
		i := slices.IndexFunc(possible, func(pl nvml.GpuInstancePlacement) bool {
			return pl.Start == want.Start && (want.Size == 0 || pl.Size == want.Size)
		})
		if i < 0 {
			return nvml.GpuInstancePlacement{}, nvml.ERROR_INVALID_ARGUMENT
		}
		possible = possible[i : i+1]
	}
	if n >= p.InstanceCount {
		return nvml.GpuInstancePlacement{}, nvml.ERROR_INSUFFICIENT_RESOURCES
	}
	for _, pl := range possible {
		if fits(giSpan(pl), used) {
			return pl, nvml.SUCCESS
		}
	}
	return nvml.GpuInstancePlacement{}, nvml.ERROR_INSUFFICIENT_RESOURCES
}

// GetGpuInstanceRemainingCapacity returns how many more instances of a
// profile could be created now.
func (d *device) GetGpuInstanceRemainingCapacity(info *nvml.GpuInstanceProfileInfo) (int, nvml.Return) {
	defer d.sim.lock()()
	if r := d.migReady(); r != nvml.SUCCESS {
		return 0, r
	}
	if info == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	p, r := d.giProfile(int(info.Id))
	if r != nvml.SUCCESS {
		return 0, r
	}
	var used []span
	n := uint32(0)
	for _, gi := range d.gis {
		used = append(used, giSpan(gi.placement))
		if gi.profile.Id == p.Id {
			n++
		}
	}
	count := 0
	for _, pl := range d.sim.m.gpu.MIGProfiles.GpuInstancePlacements[int(p.Id)] {
		if n+uint32(count) < p.InstanceCount && fits(giSpan(pl), used) {
			used = append(used, giSpan(pl))
			count++
		}
	}
	return count, nvml.SUCCESS
}

// CreateGpuInstance creates a GPU instance in the first free placement.
func (d *device) CreateGpuInstance(info *nvml.GpuInstanceProfileInfo) (nvml.GpuInstance, nvml.Return) {
	return d.createGI(info, nil)
}

// CreateGpuInstanceWithPlacement creates a GPU instance at a placement:
// ERROR_INVALID_ARGUMENT for an unknown profile or impossible placement,
// ERROR_INSUFFICIENT_RESOURCES if it overlaps an instance or the profile's
// instance count is used up, ERROR_NOT_SUPPORTED with MIG off.
func (d *device) CreateGpuInstanceWithPlacement(info *nvml.GpuInstanceProfileInfo, placement *nvml.GpuInstancePlacement) (nvml.GpuInstance, nvml.Return) {
	if placement == nil {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.createGI(info, placement)
}

func (d *device) createGI(info *nvml.GpuInstanceProfileInfo, want *nvml.GpuInstancePlacement) (nvml.GpuInstance, nvml.Return) {
	defer d.sim.lock()()
	if r := d.migReady(); r != nvml.SUCCESS {
		return nil, r
	}
	if info == nil {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	p, r := d.giProfile(int(info.Id))
	if r == nvml.ERROR_NOT_SUPPORTED {
		r = nvml.ERROR_INVALID_ARGUMENT
	}
	if r != nvml.SUCCESS {
		return nil, r
	}
	pl, r := d.freeGIPlacement(p, want)
	if r != nvml.SUCCESS {
		return nil, r
	}
	gi := d.newGI(p, pl)
	d.sim.deliverLocked(d, nvml.EventMigConfigChange, 0, uint32(gi.id), noInstance)
	return gi, nvml.SUCCESS
}

// GetGpuInstances lists the GPU instances of a profile, by id.
func (d *device) GetGpuInstances(info *nvml.GpuInstanceProfileInfo) ([]nvml.GpuInstance, nvml.Return) {
	defer d.sim.lock()()
	if r := d.migReady(); r != nvml.SUCCESS {
		return nil, r
	}
	if info == nil {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	if _, r := d.giProfile(int(info.Id)); r != nvml.SUCCESS {
		return nil, r
	}
	ids := make([]int, 0, len(d.gis))
	for id, gi := range d.gis {
		if gi.profile.Id == info.Id {
			ids = append(ids, id)
		}
	}
	sort.Ints(ids)
	out := make([]nvml.GpuInstance, len(ids))
	for i, id := range ids {
		out[i] = d.gis[id]
	}
	return out, nvml.SUCCESS
}

// GetGpuInstanceById returns a GPU instance; ERROR_NOT_FOUND if none has
// the id.
func (d *device) GetGpuInstanceById(id int) (nvml.GpuInstance, nvml.Return) {
	defer d.sim.lock()()
	if r := d.migReady(); r != nvml.SUCCESS {
		return nil, r
	}
	gi, ok := d.gis[id]
	if !ok {
		return nil, nvml.ERROR_NOT_FOUND
	}
	return gi, nvml.SUCCESS
}

// GetMaxMigDeviceCount returns how many MIG devices the GPU can hold; 0
// with MIG off.
func (d *device) GetMaxMigDeviceCount() (int, nvml.Return) {
	return answer(d, func() int {
		if !d.migEnabled {
			return 0
		}
		return d.sim.m.maxMigDevices()
	})
}

// GetMigDeviceHandleByIndex returns the MIG device at an index:
// ERROR_INVALID_ARGUMENT past GetMaxMigDeviceCount, ERROR_NOT_FOUND for a
// free index.
func (d *device) GetMigDeviceHandleByIndex(i int) (nvml.Device, nvml.Return) {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return nil, r
	}
	if !d.migEnabled || i < 0 || i >= d.sim.m.maxMigDevices() {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	migs := d.migDevicesLocked()
	if i >= len(migs) {
		return nil, nvml.ERROR_NOT_FOUND
	}
	return migs[i].handle, nvml.SUCCESS
}
