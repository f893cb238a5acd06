package nvml

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
)

// fullCIProfile maps a GPU instance's compute-slice count to the compute
// instance profile that spans all of it: the one a MIG device gets when it
// is created as a single GI+CI pair, as NVIDIA's tools do.
var fullCIProfile = map[int]int{
	1: gonvml.COMPUTE_INSTANCE_PROFILE_1_SLICE,
	2: gonvml.COMPUTE_INSTANCE_PROFILE_2_SLICE,
	3: gonvml.COMPUTE_INSTANCE_PROFILE_3_SLICE,
	4: gonvml.COMPUTE_INSTANCE_PROFILE_4_SLICE,
	6: gonvml.COMPUTE_INSTANCE_PROFILE_6_SLICE,
	7: gonvml.COMPUTE_INSTANCE_PROFILE_7_SLICE,
	8: gonvml.COMPUTE_INSTANCE_PROFILE_8_SLICE,
}

// readMIG reads a GPU's MIG capability: nil, nil when the GPU is not MIG
// capable.
func (a *Adapter) readMIG(h gonvml.Device, d Device) (*MIG, error) {
	current, pending, ret := h.GetMigMode()
	if ret == gonvml.ERROR_NOT_SUPPORTED {
		return nil, nil
	}
	if ret != gonvml.SUCCESS {
		return nil, check(ret, "get MIG mode", d.UUID)
	}
	m := &MIG{
		Enabled:        current == gonvml.DEVICE_MIG_ENABLE,
		PendingEnabled: pending == gonvml.DEVICE_MIG_ENABLE,
	}
	profiles, err := a.readProfiles(h, d)
	if err != nil {
		return nil, err
	}
	m.Profiles = profiles
	for _, p := range profiles {
		m.ComputeSlices = max(m.ComputeSlices, p.ComputeSlices)
		for _, pl := range p.Placements {
			m.MemorySlices = max(m.MemorySlices, pl.Start+pl.Size)
		}
	}
	if m.Enabled {
		if m.Devices, err = a.readMigDevices(h, d, profiles); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// readProfiles lists the GPU-instance profiles a GPU supports, each with
// its possible placements, sorted by size then name.
func (a *Adapter) readProfiles(h gonvml.Device, d Device) ([]MigProfile, error) {
	var profiles []MigProfile
	for id := 0; id < gonvml.GPU_INSTANCE_PROFILE_COUNT; id++ {
		info, ret := h.GetGpuInstanceProfileInfo(id)
		if ret == gonvml.ERROR_NOT_SUPPORTED || ret == gonvml.ERROR_INVALID_ARGUMENT {
			continue
		}
		if ret != gonvml.SUCCESS {
			return nil, check(ret, fmt.Sprintf("get GPU instance profile %d", id), d.UUID)
		}
		ciID, ok := fullCIProfile[int(info.SliceCount)]
		if !ok {
			continue
		}
		name, err := a.devlib.NewMigProfile(id, ciID, gonvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, info.MemorySizeMB, d.MemoryBytes)
		if err != nil {
			// A profile go-nvlib cannot name is one no workload can ask for.
			continue
		}
		placements, ret := h.GetGpuInstancePossiblePlacements(&info)
		if ret != gonvml.SUCCESS {
			return nil, check(ret, "get placements of profile "+name.String(), d.UUID)
		}
		p := MigProfile{
			Name:            name.String(),
			GIProfileID:     id,
			CIProfileID:     ciID,
			ComputeSlices:   int(info.SliceCount),
			MemoryBytes:     info.MemorySizeMB << 20,
			Multiprocessors: int(info.MultiprocessorCount),
			CopyEngines:     int(info.CopyEngineCount),
			Decoders:        int(info.DecoderCount),
			Encoders:        int(info.EncoderCount),
			JPEGs:           int(info.JpegCount),
			OFAs:            int(info.OfaCount),
			MaxInstances:    int(info.InstanceCount),
		}
		for _, pl := range placements {
			p.Placements = append(p.Placements, Placement{Start: int(pl.Start), Size: int(pl.Size)})
		}
		profiles = append(profiles, p)
	}
	disambiguate(profiles)
	sort.Slice(profiles, func(i, j int) bool {
		if profiles[i].ComputeSlices != profiles[j].ComputeSlices {
			return profiles[i].ComputeSlices < profiles[j].ComputeSlices
		}
		if profiles[i].MemoryBytes != profiles[j].MemoryBytes {
			return profiles[i].MemoryBytes < profiles[j].MemoryBytes
		}
		return profiles[i].Name < profiles[j].Name
	})
	return profiles, nil
}

// disambiguate renames profiles whose go-nvlib names collide. go-nvlib
// rounds memory to eighths of the GPU, which can give two profiles of one
// GPU the same name (a 1g profile with 18 GB and one with 35 GB of a
// 141 GB GPU both round to 35 GB); those are named by their memory in
// whole GiB instead, as nvidia-smi does.
func disambiguate(profiles []MigProfile) {
	count := map[string]int{}
	for _, p := range profiles {
		count[p.Name]++
	}
	for i, p := range profiles {
		if count[p.Name] < 2 {
			continue
		}
		_, suffix, _ := strings.Cut(p.Name, "gb")
		gib := (p.MemoryBytes + 1<<29) >> 30
		profiles[i].Name = fmt.Sprintf("%dg.%dgb%s", p.ComputeSlices, gib, suffix)
	}
}

// readMigDevices lists the MIG devices that exist on a MIG-enabled GPU.
func (a *Adapter) readMigDevices(h gonvml.Device, d Device, profiles []MigProfile) ([]MigDevice, error) {
	n, ret := h.GetMaxMigDeviceCount()
	if ret != gonvml.SUCCESS {
		return nil, check(ret, "get max MIG device count", d.UUID)
	}
	var out []MigDevice
	for i := 0; i < n; i++ {
		mh, ret := h.GetMigDeviceHandleByIndex(i)
		if ret == gonvml.ERROR_NOT_FOUND || ret == gonvml.ERROR_INVALID_ARGUMENT {
			continue
		}
		if ret != gonvml.SUCCESS {
			return nil, check(ret, fmt.Sprintf("get MIG device %d", i), d.UUID)
		}
		md, err := a.readMigDevice(h, mh, d, profiles)
		if err != nil {
			return nil, err
		}
		md.Index = i
		out = append(out, md)
	}
	return out, nil
}

func (a *Adapter) readMigDevice(parent, mh gonvml.Device, d Device, profiles []MigProfile) (MigDevice, error) {
	md := MigDevice{ParentUUID: d.UUID}
	var ret gonvml.Return
	if md.UUID, ret = mh.GetUUID(); ret != gonvml.SUCCESS {
		return md, check(ret, "get MIG device uuid", d.UUID)
	}
	if md.GIID, ret = mh.GetGpuInstanceId(); ret != gonvml.SUCCESS {
		return md, check(ret, "get GPU instance id", md.UUID)
	}
	if md.CIID, ret = mh.GetComputeInstanceId(); ret != gonvml.SUCCESS {
		return md, check(ret, "get compute instance id", md.UUID)
	}
	if attrs, ret := mh.GetAttributes(); ret == gonvml.SUCCESS {
		md.MemoryBytes = attrs.MemorySizeMB << 20
		md.Multiprocessors = int(attrs.MultiprocessorCount)
	}
	gi, ret := parent.GetGpuInstanceById(md.GIID)
	if ret != gonvml.SUCCESS {
		return md, check(ret, fmt.Sprintf("get GPU instance %d", md.GIID), d.UUID)
	}
	giInfo, ret := gi.GetInfo()
	if ret != gonvml.SUCCESS {
		return md, check(ret, fmt.Sprintf("get info of GPU instance %d", md.GIID), d.UUID)
	}
	md.GIProfileID = int(giInfo.ProfileId)
	md.Placement = Placement{Start: int(giInfo.Placement.Start), Size: int(giInfo.Placement.Size)}
	ci, ret := gi.GetComputeInstanceById(md.CIID)
	if ret != gonvml.SUCCESS {
		return md, check(ret, fmt.Sprintf("get compute instance %d/%d", md.GIID, md.CIID), d.UUID)
	}
	ciInfo, ret := ci.GetInfo()
	if ret != gonvml.SUCCESS {
		return md, check(ret, fmt.Sprintf("get info of compute instance %d/%d", md.GIID, md.CIID), d.UUID)
	}
	md.CIProfileID = int(ciInfo.ProfileId)
	for _, p := range profiles {
		if p.GIProfileID != md.GIProfileID {
			continue
		}
		md.Profile = p.Name
		if md.MemoryBytes == 0 {
			md.MemoryBytes = p.MemoryBytes
		}
		if md.Multiprocessors == 0 {
			md.Multiprocessors = p.Multiprocessors
		}
		if md.CIProfileID != p.CIProfileID {
			// A compute instance smaller than its GPU instance: name it
			// the way NVIDIA does ("1c.2g.20gb").
			if name, err := a.devlib.NewMigProfile(md.GIProfileID, md.CIProfileID, gonvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, p.MemoryBytes>>20, d.MemoryBytes); err == nil {
				md.Profile = name.String()
			}
		}
		break
	}
	return md, nil
}

// CreateMigDevice creates a MIG device (a GPU instance of the given
// profile at the given placement start, holding one compute instance that
// spans it) on the GPU parentUUID. If a MIG device of that profile already
// sits at that placement it is returned as is, so a retried create after a
// crash is harmless. Nothing is left behind when creation fails.
func (a *Adapter) CreateMigDevice(parentUUID string, giProfileID, start int) (MigDevice, error) {
	a.mu.Lock()
	defer a.mu.Unlock()

	h, err := a.handle(parentUUID)
	if err != nil {
		return MigDevice{}, err
	}
	if existing, ok, err := a.findMigDevice(h, parentUUID, giProfileID, start); err != nil || ok {
		return existing, err
	}
	info, ret := h.GetGpuInstanceProfileInfo(giProfileID)
	if ret != gonvml.SUCCESS {
		return MigDevice{}, check(ret, fmt.Sprintf("get GPU instance profile %d", giProfileID), parentUUID)
	}
	ciID, ok := fullCIProfile[int(info.SliceCount)]
	if !ok {
		return MigDevice{}, fmt.Errorf("GPU instance profile %d on %s: no compute instance profile spans %d slices", giProfileID, parentUUID, info.SliceCount)
	}
	placement := gonvml.GpuInstancePlacement{Start: uint32(start), Size: 0}
	if pls, ret := h.GetGpuInstancePossiblePlacements(&info); ret == gonvml.SUCCESS {
		for _, pl := range pls {
			if int(pl.Start) == start {
				placement = pl
			}
		}
	}
	if placement.Size == 0 {
		return MigDevice{}, fmt.Errorf("GPU instance profile %d on %s: %d is not a valid placement start: %w", giProfileID, parentUUID, start, ErrInsufficientResources)
	}
	gi, ret := h.CreateGpuInstanceWithPlacement(&info, &placement)
	if ret != gonvml.SUCCESS {
		return MigDevice{}, check(ret, fmt.Sprintf("create GPU instance (profile %d, start %d)", giProfileID, start), parentUUID)
	}
	ciInfo, ret := gi.GetComputeInstanceProfileInfo(ciID, gonvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
	if ret == gonvml.SUCCESS {
		_, ret = gi.CreateComputeInstance(&ciInfo)
	}
	if ret != gonvml.SUCCESS {
		err := check(ret, fmt.Sprintf("create compute instance (profile %d)", ciID), parentUUID)
		if dret := gi.Destroy(); dret != gonvml.SUCCESS {
			err = errors.Join(err, check(dret, "destroy GPU instance after failed create", parentUUID))
		}
		return MigDevice{}, err
	}
	md, ok, err := a.findMigDevice(h, parentUUID, giProfileID, start)
	if err != nil {
		return MigDevice{}, err
	}
	if !ok {
		return MigDevice{}, fmt.Errorf("created MIG device (profile %d, start %d) on %s but NVML does not list it", giProfileID, start, parentUUID)
	}
	return md, nil
}

// findMigDevice looks for a MIG device of a profile at a placement start.
func (a *Adapter) findMigDevice(h gonvml.Device, parentUUID string, giProfileID, start int) (MigDevice, bool, error) {
	d, err := a.readDevice(h)
	if err != nil {
		return MigDevice{}, false, err
	}
	if d.MIG == nil || !d.MIG.Enabled {
		return MigDevice{}, false, fmt.Errorf("GPU %s: MIG mode is not enabled", parentUUID)
	}
	for _, md := range d.MIG.Devices {
		if md.GIProfileID == giProfileID && md.Placement.Start == start {
			return md, true, nil
		}
	}
	return MigDevice{}, false, nil
}

// DestroyMigDevice destroys the compute instance ciID and the GPU instance
// giID on parentUUID. Destroying what no longer exists succeeds, so a
// retried destroy is harmless. A GPU instance that still holds other
// compute instances is left in place and ErrInUse returned.
func (a *Adapter) DestroyMigDevice(parentUUID string, giID, ciID int) error {
	a.mu.Lock()
	defer a.mu.Unlock()

	h, err := a.handle(parentUUID)
	if err != nil {
		return err
	}
	gi, ret := h.GetGpuInstanceById(giID)
	if ret == gonvml.ERROR_NOT_FOUND || ret == gonvml.ERROR_INVALID_ARGUMENT {
		return nil
	}
	if ret != gonvml.SUCCESS {
		return check(ret, fmt.Sprintf("get GPU instance %d", giID), parentUUID)
	}
	ci, ret := gi.GetComputeInstanceById(ciID)
	switch ret {
	case gonvml.SUCCESS:
		if ret := ci.Destroy(); ret != gonvml.SUCCESS {
			return check(ret, fmt.Sprintf("destroy compute instance %d/%d", giID, ciID), parentUUID)
		}
	case gonvml.ERROR_NOT_FOUND, gonvml.ERROR_INVALID_ARGUMENT:
	default:
		return check(ret, fmt.Sprintf("get compute instance %d/%d", giID, ciID), parentUUID)
	}
	return check(gi.Destroy(), fmt.Sprintf("destroy GPU instance %d", giID), parentUUID)
}
