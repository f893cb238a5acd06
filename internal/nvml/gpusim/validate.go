package gpusim

import (
	"fmt"
	"regexp"
	"strings"
)

var driverVersionRE = regexp.MustCompile(`^[0-9]+\.[0-9]+(\.[0-9]+)?$`)

// maxXIDsPerDevice and maxProcessesPerDevice keep a state file to a size a
// person writes; they also bound what a fuzzed file can make us hold.
const (
	maxRetiredPages       = 64 // NVML's limit per cause
	maxXIDsPerDevice      = 4096
	maxProcessesPerDevice = 1024
)

// validate returns every problem in the state, each with the path of the
// field at fault.
func (s *State) validate() []FieldError {
	var probs []FieldError
	bad := func(field, format string, args ...any) {
		probs = append(probs, FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
	}
	if s.Machine == "" {
		bad("machine", "required (one of %s)", strings.Join(Machines(), ", "))
		return probs
	}
	m, err := lookupMachine(s.Machine)
	if err != nil {
		bad("machine", "%v", err)
		return probs
	}
	gpus := s.gpuCount()
	if s.GPUs < 0 || s.GPUs > maxGPUs {
		bad("gpus", "%d is not between 1 and %d", s.GPUs, maxGPUs)
		gpus = maxGPUs
	}
	switch s.Topology {
	case "", TopologyNVSwitch, TopologyIslands, TopologyPCIe:
	default:
		bad("topology", "unknown topology %q (want %s, %s or %s)", s.Topology, TopologyNVSwitch, TopologyIslands, TopologyPCIe)
	}
	if s.DriverVersion != "" && !driverVersionRE.MatchString(s.DriverVersion) {
		bad("driverVersion", "%q is not a driver version such as 550.54.15", s.DriverVersion)
	}
	if len(s.NodeSeed) > 253 {
		bad("nodeSeed", "longer than 253 characters")
	}
	seen := map[int]int{}
	type pidOwner struct {
		field        string
		name, cgroup string
	}
	pids := map[uint32]pidOwner{}
	for i := range s.Devices {
		d := &s.Devices[i]
		f := fmt.Sprintf("devices[%d]", i)
		if d.Index < 0 || d.Index >= gpus {
			bad(f+".index", "%d is not a GPU of this node (0..%d)", d.Index, gpus-1)
		} else if j, dup := seen[d.Index]; dup {
			bad(f+".index", "GPU %d is already described by devices[%d]", d.Index, j)
		} else {
			seen[d.Index] = i
		}
		probs = append(probs, d.validate(m, f)...)
		for k, p := range d.Processes {
			owner := pidOwner{field: fmt.Sprintf("%s.processes[%d]", f, k), name: p.Name, cgroup: p.Cgroup}
			if prev, ok := pids[p.PID]; ok && (prev.cgroup != owner.cgroup || prev.name != owner.name) {
				bad(owner.field, "pid %d also appears in %s with another name or cgroup", p.PID, prev.field)
			} else if !ok {
				pids[p.PID] = owner
			}
		}
	}
	return probs
}

// gpuCount is the number of GPUs the state describes.
func (s *State) gpuCount() int {
	if s.GPUs <= 0 || s.GPUs > maxGPUs {
		return maxGPUs
	}
	return s.GPUs
}

// topology is the state's topology with the default applied.
func (s *State) topology() string {
	if s.Topology == "" {
		return TopologyNVSwitch
	}
	return s.Topology
}

func (d *DeviceState) validate(m *machine, f string) []FieldError {
	var probs []FieldError
	bad := func(field, format string, args ...any) {
		probs = append(probs, FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
	}
	if len(d.MIG) > 0 && !d.MIGEnabled {
		bad(f+".mig", "a MIG layout needs migEnabled: true")
	}
	if d.MIGEnabled {
		_, p := m.planMIG(d.MIG, f+".mig")
		probs = append(probs, p...)
	}
	value := func(field string, v *Value, lo, hi float64) {
		if v == nil {
			return
		}
		for _, p := range v.validate(lo, hi) {
			bad(field, "%s", p)
		}
	}
	if d.Utilization != nil {
		value(f+".utilization.gpu", d.Utilization.GPU, 0, 100)
		value(f+".utilization.memory", d.Utilization.Memory, 0, 100)
	}
	value(f+".memoryUsedMiB", d.MemoryUsedMiB, 0, float64(m.memoryMiB()-m.reservedMiB))
	if d.PowerLimitW != nil {
		if limit := *d.PowerLimitW; !(limit > 0 && limit <= 2*m.powerLimitW) {
			bad(f+".powerLimitW", "%v is not between 0 and %v", limit, 2*m.powerLimitW)
		}
	}
	value(f+".powerW", d.PowerW, 0, 2*m.powerLimitW)
	value(f+".temperatureC", d.TemperatureC, 0, 150)
	value(f+".smClockMHz", d.SMClockMHz, 0, m.maxSMClockMHz)
	if r := d.RemappedRows; r != nil {
		if r.Corrected < 0 {
			bad(f+".remappedRows.corrected", "must not be negative")
		}
		if r.Uncorrected < 0 {
			bad(f+".remappedRows.uncorrected", "must not be negative")
		}
	}
	if rp := d.RetiredPages; rp != nil {
		if rp.SingleBit < 0 || rp.SingleBit > maxRetiredPages {
			bad(f+".retiredPages.singleBit", "%d is not between 0 and %d", rp.SingleBit, maxRetiredPages)
		}
		if rp.DoubleBit < 0 || rp.DoubleBit > maxRetiredPages {
			bad(f+".retiredPages.doubleBit", "%d is not between 0 and %d", rp.DoubleBit, maxRetiredPages)
		}
	}
	if len(d.XIDs) > maxXIDsPerDevice {
		bad(f+".xids", "more than %d entries", maxXIDsPerDevice)
	}
	ids := map[string]int{}
	for k, x := range d.XIDs {
		xf := fmt.Sprintf("%s.xids[%d]", f, k)
		switch j, dup := ids[x.ID]; {
		case x.ID == "":
			bad(xf+".id", "required: it tells a new XID from one already delivered")
		case dup:
			bad(xf+".id", "%q is already used by xids[%d]", x.ID, j)
		default:
			ids[x.ID] = k
		}
		if x.XID == 0 {
			bad(xf+".xid", "required (an XID code such as 13, 48, 79)")
		}
		probs = append(probs, instanceRefs(d.MIGEnabled, x.GPUInstance, x.ComputeInstance, xf, false)...)
	}
	if len(d.Processes) > maxProcessesPerDevice {
		bad(f+".processes", "more than %d entries", maxProcessesPerDevice)
	}
	pids := map[uint32]int{}
	var used uint64
	for k, p := range d.Processes {
		pf := fmt.Sprintf("%s.processes[%d]", f, k)
		if p.PID == 0 {
			bad(pf+".pid", "required and not 0")
		} else if j, dup := pids[p.PID]; dup {
			bad(pf+".pid", "%d is already listed as processes[%d]", p.PID, j)
		} else {
			pids[p.PID] = k
		}
		switch p.Type {
		case "", ProcessCompute, ProcessGraphics:
		default:
			bad(pf+".type", "unknown process type %q (want %s or %s)", p.Type, ProcessCompute, ProcessGraphics)
		}
		if p.Cgroup != "" && !strings.HasPrefix(p.Cgroup, "/") {
			bad(pf+".cgroup", "%q is not an absolute cgroup path", p.Cgroup)
		}
		if strings.ContainsAny(p.Cgroup+p.Name, "\n\x00") {
			bad(pf, "name and cgroup must be one line")
		}
		if p.UsedMemoryMiB > m.memoryMiB() {
			bad(pf+".usedMemoryMiB", "%d MiB is more than the GPU's %d MiB", p.UsedMemoryMiB, m.memoryMiB())
		}
		used += min(p.UsedMemoryMiB, m.memoryMiB())
		probs = append(probs, instanceRefs(d.MIGEnabled, p.GPUInstance, p.ComputeInstance, pf, true)...)
	}
	if d.MemoryUsedMiB == nil && used > m.memoryMiB()-m.reservedMiB {
		bad(f+".processes", "together use %d MiB, more than the GPU's %d MiB", used, m.memoryMiB()-m.reservedMiB)
	}
	return probs
}

// instanceRefs checks a MIG attribution (gpuInstance, computeInstance).
func instanceRefs(mig bool, gi, ci *uint32, f string, required bool) []FieldError {
	var probs []FieldError
	switch {
	case !mig && (gi != nil || ci != nil):
		probs = append(probs, FieldError{Field: f + ".gpuInstance", Problem: "MIG instances only exist with migEnabled: true"})
	case mig && required && (gi == nil || ci == nil):
		probs = append(probs, FieldError{Field: f + ".gpuInstance", Problem: "on a MIG-enabled GPU a process runs in a MIG device: give gpuInstance and computeInstance"})
	case ci != nil && gi == nil:
		probs = append(probs, FieldError{Field: f + ".computeInstance", Problem: "needs gpuInstance too"})
	}
	return probs
}
