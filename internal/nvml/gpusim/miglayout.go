package gpusim

import (
	"fmt"
	"strings"
	"sync"

	nvdevice "github.com/NVIDIA/go-nvlib/pkg/nvlib/device"
	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// span is a placement: a run of slices. NVML's GPU- and compute-instance
// placements both have this shape.
type span struct{ start, size uint32 }

func (s span) overlaps(o span) bool {
	return s.start < o.start+o.size && o.start < s.start+s.size
}

func giSpan(p nvml.GpuInstancePlacement) span     { return span{p.Start, p.Size} }
func ciSpan(p nvml.ComputeInstancePlacement) span { return span{p.Start, p.Size} }

// fits reports whether s overlaps none of used.
func fits(s span, used []span) bool {
	for _, u := range used {
		if s.overlaps(u) {
			return false
		}
	}
	return true
}

// giIDFor returns the GPU-instance id NVML assigns to an instance of a
// profile with the given slice count at a placement. Like NVML on A100 and
// H100, the id follows from profile and placement (7 slices: 0; 4: 1;
// 3: 1 or 2; 2: 3..5; 1: 7 and up), which keeps ids, and so MIG UUIDs,
// stable when a layout is recreated. Should that id be taken (only
// possible for overlapping layouts NVML would refuse anyway), the lowest
// free id is used.
func giIDFor(slices uint32, start uint32, taken func(int) bool) int {
	id := -1
	switch slices {
	case 7, 8:
		id = 0
	case 4, 6:
		id = 1
	case 3:
		id = 1 + int(start)/4
	case 2:
		id = 3 + int(start)/2
	case 1:
		id = 7 + int(start)
	}
	if id >= 0 && !taken(id) {
		return id
	}
	for id = 0; taken(id); id++ {
	}
	return id
}

// profileNames holds a machine's GPU-instance profile names: go-nvlib's
// names (what NVIDIA's device plugin and gpulet show). Should two profiles
// ever get the same name, they are named by their memory in whole GiB, as
// nvidia-smi names them; attributes such as +me are kept.
type profileNames struct {
	gi     map[string]int // "3g.40gb" -> GPU-instance profile id
	giName map[int]string
}

var namesOnce sync.Map // machine name -> *profileNames

func (m *machine) names() *profileNames {
	if n, ok := namesOnce.Load(m.name); ok {
		return n.(*profileNames)
	}
	n := &profileNames{gi: map[string]int{}, giName: map[int]string{}}
	lib := nvdevice.New(nil)
	count := map[string]int{}
	for _, id := range m.giProfileIDs() {
		info := m.gpu.MIGProfiles.GpuInstanceProfiles[id]
		p, err := lib.NewMigProfile(id, int(fullCIProfile(m, id).Id), nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, info.MemorySizeMB, m.memoryBytes())
		if err != nil {
			continue
		}
		n.giName[id] = p.String()
		count[p.String()]++
	}
	for id, name := range n.giName {
		if count[name] > 1 {
			info := m.gpu.MIGProfiles.GpuInstanceProfiles[id]
			g, rest, _ := strings.Cut(name, ".")
			_, suffix, _ := strings.Cut(rest, "gb")
			name = fmt.Sprintf("%s.%dgb%s", g, (info.MemorySizeMB+512)/1024, suffix)
			n.giName[id] = name
		}
		n.gi[name] = id
	}
	actual, _ := namesOnce.LoadOrStore(m.name, n)
	return actual.(*profileNames)
}

// migDeviceName names a MIG device's profile: its GPU instance's name, with
// a "<n>c." prefix for a compute instance smaller than the GPU instance
// ("1c.3g.40gb"), as go-nvlib does.
func (m *machine) migDeviceName(gi nvml.GpuInstanceProfileInfo, ci nvml.ComputeInstanceProfileInfo) string {
	name := m.names().giName[int(gi.Id)]
	if ci.SliceCount < gi.SliceCount {
		name = fmt.Sprintf("%dc.%s", ci.SliceCount, name)
	}
	return name
}

// fullCIProfile is the compute-instance profile spanning a whole GPU
// instance of profile gi.
func fullCIProfile(m *machine, gi int) nvml.ComputeInstanceProfileInfo {
	slices := m.gpu.MIGProfiles.GpuInstanceProfiles[gi].SliceCount
	for _, ci := range m.gpu.MIGProfiles.ComputeInstanceProfiles[gi] {
		if ci.SliceCount == slices {
			return ci
		}
	}
	return nvml.ComputeInstanceProfileInfo{}
}

// giProfileNames lists the machine's GPU-instance profile names.
func (m *machine) giProfileNames() []string {
	n := m.names()
	out := make([]string, 0, len(n.giName))
	for _, id := range m.giProfileIDs() {
		if name, ok := n.giName[id]; ok {
			out = append(out, name)
		}
	}
	return out
}

// ciProfileByName finds the compute-instance profile "Nc" of a GPU
// instance of profile gi.
func (m *machine) ciProfileByName(gi int, name string) (nvml.ComputeInstanceProfileInfo, bool) {
	for _, id := range m.ciProfileIDs(gi) {
		ci := m.gpu.MIGProfiles.ComputeInstanceProfiles[gi][id]
		if name == fmt.Sprintf("%dc", ci.SliceCount) {
			return ci, true
		}
	}
	return nvml.ComputeInstanceProfileInfo{}, false
}

func (m *machine) ciProfileNames(gi int) string {
	var names []string
	for _, id := range m.ciProfileIDs(gi) {
		names = append(names, fmt.Sprintf("%dc", m.gpu.MIGProfiles.ComputeInstanceProfiles[gi][id].SliceCount))
	}
	return strings.Join(names, ", ")
}

// plannedGI is a GPU instance of a layout, placed.
type plannedGI struct {
	profile   nvml.GpuInstanceProfileInfo
	placement nvml.GpuInstancePlacement
	cis       []plannedCI
}

// plannedCI is a compute instance of a planned GPU instance, placed.
type plannedCI struct {
	profile   nvml.ComputeInstanceProfileInfo
	placement nvml.ComputeInstancePlacement
}

// planMIG places a MIG layout the way CreateGpuInstance(WithPlacement)
// would: instances with a start first, the rest in the first free
// placement, all within each profile's instance count. path prefixes the
// fields named in problems.
func (m *machine) planMIG(layout []MIGInstance, path string) ([]plannedGI, []FieldError) {
	var probs []FieldError
	bad := func(field, format string, args ...any) {
		probs = append(probs, FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
	}
	names := m.names()
	planned := make([]plannedGI, len(layout))
	placed := make([]bool, len(layout))
	var used []span
	count := map[uint32]uint32{}
	place := func(i int, explicit bool) {
		e := layout[i]
		field := fmt.Sprintf("%s[%d]", path, i)
		id, ok := names.gi[e.Profile]
		if !ok {
			bad(field+".profile", "unknown MIG profile %q for %s (known: %s)", e.Profile, m.name, strings.Join(m.giProfileNames(), ", "))
			placed[i] = true
			return
		}
		info := m.gpu.MIGProfiles.GpuInstanceProfiles[id]
		if count[info.Id] >= info.InstanceCount {
			bad(field+".profile", "at most %d instance(s) of %s fit on one GPU", info.InstanceCount, e.Profile)
			placed[i] = true
			return
		}
		possible := m.gpu.MIGProfiles.GpuInstancePlacements[id]
		var chosen *nvml.GpuInstancePlacement
		for j := range possible {
			p := possible[j]
			if explicit && p.Start != *e.Start {
				continue
			}
			if fits(giSpan(p), used) {
				chosen = &p
				break
			}
		}
		switch {
		case chosen == nil && explicit && !startPossible(possible, *e.Start):
			bad(field+".start", "%s cannot start at slice %d (possible starts: %s)", e.Profile, *e.Start, starts(possible))
		case chosen == nil && explicit:
			bad(field+".start", "%s at slice %d overlaps another instance of this layout", e.Profile, *e.Start)
		case chosen == nil:
			bad(field+".profile", "no free placement left for %s on this GPU", e.Profile)
		default:
			used = append(used, giSpan(*chosen))
			count[info.Id]++
			planned[i] = plannedGI{profile: info, placement: *chosen}
			planned[i].cis, probs = m.planCIs(id, e.ComputeInstances, field, probs)
		}
		placed[i] = true
	}
	for i, e := range layout {
		if e.Start != nil {
			place(i, true)
		}
	}
	for i := range layout {
		if !placed[i] {
			place(i, false)
		}
	}
	return planned, probs
}

// planCIs places the compute instances of one GPU instance.
func (m *machine) planCIs(gi int, names []string, field string, probs []FieldError) ([]plannedCI, []FieldError) {
	if names == nil {
		full := fullCIProfile(m, gi)
		pls := m.ciPlacements(gi, int(full.Id))
		if len(pls) == 0 {
			return nil, probs
		}
		return []plannedCI{{profile: full, placement: pls[0]}}, probs
	}
	var out []plannedCI
	var used []span
	count := map[uint32]uint32{}
	for k, name := range names {
		f := fmt.Sprintf("%s.computeInstances[%d]", field, k)
		ci, ok := m.ciProfileByName(gi, name)
		if !ok {
			probs = append(probs, FieldError{Field: f, Problem: fmt.Sprintf("unknown compute-instance profile %q for this GPU instance (known: %s)", name, m.ciProfileNames(gi))})
			continue
		}
		if count[ci.Id] >= ci.InstanceCount {
			probs = append(probs, FieldError{Field: f, Problem: fmt.Sprintf("at most %d compute instance(s) of %s fit", ci.InstanceCount, name)})
			continue
		}
		var chosen *nvml.ComputeInstancePlacement
		for _, p := range m.ciPlacements(gi, int(ci.Id)) {
			if fits(ciSpan(p), used) {
				chosen = &p
				break
			}
		}
		if chosen == nil {
			probs = append(probs, FieldError{Field: f, Problem: fmt.Sprintf("no free slices left for a %s compute instance", name)})
			continue
		}
		used = append(used, ciSpan(*chosen))
		count[ci.Id]++
		out = append(out, plannedCI{profile: ci, placement: *chosen})
	}
	return out, probs
}

func startPossible(pls []nvml.GpuInstancePlacement, start uint32) bool {
	for _, p := range pls {
		if p.Start == start {
			return true
		}
	}
	return false
}

func starts(pls []nvml.GpuInstancePlacement) string {
	s := make([]string, len(pls))
	for i, p := range pls {
		s[i] = fmt.Sprint(p.Start)
	}
	return strings.Join(s, ", ")
}
