package gpusim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// State is the simulated node as a state file describes it. The file is
// YAML; unknown fields are errors. Everything but machine is optional.
//
//	machine: dgx-h100        # dgx-a100 | dgx-h100 | dgx-h200 | dgx-b200
//	gpus: 8                  # 1..8, default 8
//	nodeSeed: node-a         # varies UUIDs between simulated nodes
//	topology: nvswitch       # nvswitch (default) | islands | pcie
//	driverVersion: 550.54.15 # default: the machine's
//	devices:                 # per-GPU settings, by index
//	- index: 0
//	  migEnabled: true
//	  mig:                   # created at load; see MIGInstance
//	  - profile: 3g.40gb
//	    start: 4
//	  - profile: 1g.10gb
//	  utilization: {gpu: {pattern: sine, min: 10, max: 90, period: 2m}, memory: 30}
//	  powerW: 350
//	  xids: [{id: demo-1, xid: 13}]
//
// Runtime faults (xids, ECC counts, lost) are edge-triggered: the state a
// Simulator starts from is its starting condition, and only later changes
// (through Apply or Watch) raise events.
type State struct {
	// Machine is the simulated DGX model (see Machines).
	Machine string `json:"machine"`
	// GPUs is the number of GPUs, 1..8; 0 means 8.
	GPUs int `json:"gpus,omitempty"`
	// NodeSeed varies every UUID, so two simulated nodes never share one.
	NodeSeed string `json:"nodeSeed,omitempty"`
	// Topology is nvswitch (default), islands or pcie.
	Topology string `json:"topology,omitempty"`
	// DriverVersion overrides the machine's driver version.
	DriverVersion string `json:"driverVersion,omitempty"`
	// Devices holds per-GPU settings; GPUs without an entry idle.
	Devices []DeviceState `json:"devices,omitempty"`
}

// DeviceState is one GPU's settings. Telemetry values left out fall back to
// the machine's idle values.
type DeviceState struct {
	// Index is the GPU's NVML index.
	Index int `json:"index"`
	// MIGEnabled turns MIG mode on.
	MIGEnabled bool `json:"migEnabled,omitempty"`
	// MIG is the MIG layout created when the state is applied. Instances
	// created later through NVML are kept until this GPU's migEnabled or
	// mig changes in a later state.
	MIG []MIGInstance `json:"mig,omitempty"`

	// Utilization is the GPU and memory-controller busy percentage.
	Utilization *Utilization `json:"utilization,omitempty"`
	// MemoryUsedMiB is framebuffer memory in use; default: the sum of the
	// processes' usedMemoryMiB.
	MemoryUsedMiB *Value `json:"memoryUsedMiB,omitempty"`
	// PowerW is the power draw in watts.
	PowerW *Value `json:"powerW,omitempty"`
	// PowerLimitW is the enforced power limit in watts.
	PowerLimitW *float64 `json:"powerLimitW,omitempty"`
	// TemperatureC is the GPU temperature in degrees Celsius.
	TemperatureC *Value `json:"temperatureC,omitempty"`
	// SMClockMHz is the SM (and graphics) clock.
	SMClockMHz *Value `json:"smClockMHz,omitempty"`

	// ECC holds volatile ECC error counts; raising one delivers that many
	// ECC events (an ECC storm).
	ECC *ECCCounts `json:"ecc,omitempty"`
	// RemappedRows is the row-remapping state.
	RemappedRows *RemappedRows `json:"remappedRows,omitempty"`
	// RetiredPages makes the GPU report page retirement. GPUs since A100
	// remap rows instead and NVML answers ERROR_NOT_SUPPORTED, as the
	// simulator does without this; set it only to exercise code written
	// for older GPUs.
	RetiredPages *RetiredPages `json:"retiredPages,omitempty"`
	// Lost makes the GPU fall off the bus: every call on it and its MIG
	// devices returns ERROR_GPU_IS_LOST, and XID 79 is delivered when it
	// becomes lost. Setting it back to false brings the GPU back.
	Lost bool `json:"lost,omitempty"`
	// XIDs are XID errors to deliver, each once (see XID).
	XIDs []XID `json:"xids,omitempty"`
	// Processes are the processes running on the GPU.
	Processes []Process `json:"processes,omitempty"`
}

// Utilization is a GPU's busy percentages, 0..100.
type Utilization struct {
	GPU    *Value `json:"gpu,omitempty"`
	Memory *Value `json:"memory,omitempty"`
}

// MIGInstance is one GPU instance of a MIG layout.
type MIGInstance struct {
	// Profile is the GPU-instance profile as nvidia-smi names it:
	// "1g.10gb", "1g.10gb+me", "3g.40gb", ...
	Profile string `json:"profile"`
	// Start is the placement's first slice; default: the first free one.
	Start *uint32 `json:"start,omitempty"`
	// ComputeInstances are the compute-instance profiles to create in the
	// GPU instance, by slice count: "1c", "2c", ... Left out: one compute
	// instance spanning the GPU instance. An empty list: none.
	ComputeInstances []string `json:"computeInstances"`
}

// ECCCounts are volatile ECC error counts (aggregate counts equal them).
type ECCCounts struct {
	// Corrected counts single-bit errors.
	Corrected uint64 `json:"corrected,omitempty"`
	// Uncorrected counts double-bit errors.
	Uncorrected uint64 `json:"uncorrected,omitempty"`
}

// RemappedRows is what GetRemappedRows reports.
type RemappedRows struct {
	Corrected   int  `json:"corrected,omitempty"`
	Uncorrected int  `json:"uncorrected,omitempty"`
	Pending     bool `json:"pending,omitempty"`
	Failed      bool `json:"failed,omitempty"`
}

// RetiredPages is what the page-retirement calls report.
type RetiredPages struct {
	// SingleBit and DoubleBit count pages retired for repeated single-bit
	// and for double-bit errors.
	SingleBit int `json:"singleBit,omitempty"`
	DoubleBit int `json:"doubleBit,omitempty"`
	// Pending: pages wait for retirement at the next driver reload.
	Pending bool `json:"pending,omitempty"`
}

// XID is an XID error to deliver through NVML events. An entry is
// identified by its ID: the simulator delivers each (device, id) once in
// its lifetime, so rewriting the file with the same entries delivers
// nothing new; to raise the same XID again, add an entry with a new id.
type XID struct {
	// ID identifies the entry; unique per device.
	ID string `json:"id"`
	// XID is the XID code (e.g. 13, 31, 48, 79).
	XID uint64 `json:"xid"`
	// GPUInstance and ComputeInstance attribute the XID to a MIG
	// instance; left out, the event carries 0xFFFFFFFF like NVML's.
	GPUInstance     *uint32 `json:"gpuInstance,omitempty"`
	ComputeInstance *uint32 `json:"computeInstance,omitempty"`
}

// Process is a process using a GPU.
type Process struct {
	PID uint32 `json:"pid"`
	// Name is what SystemGetProcessName reports and WriteProcTree writes
	// as comm; default "python3".
	Name string `json:"name,omitempty"`
	// Type is compute (default) or graphics.
	Type string `json:"type,omitempty"`
	// UsedMemoryMiB is the process's framebuffer use.
	UsedMemoryMiB uint64 `json:"usedMemoryMiB,omitempty"`
	// GPUInstance and ComputeInstance place the process in a MIG device;
	// required on a MIG-enabled GPU.
	GPUInstance     *uint32 `json:"gpuInstance,omitempty"`
	ComputeInstance *uint32 `json:"computeInstance,omitempty"`
	// Cgroup is the process's cgroup path, e.g.
	// /kubepods/besteffort/pod<uid>/<container id>.
	Cgroup string `json:"cgroup,omitempty"`
}

// Process types.
const (
	ProcessCompute  = "compute"
	ProcessGraphics = "graphics"
)

// FieldError is one problem in a state file.
type FieldError struct {
	// Field is the path to the field, e.g. devices[2].mig[0].profile.
	Field string
	// Problem says what is wrong.
	Problem string
}

func (e FieldError) String() string {
	if e.Field == "" {
		return e.Problem
	}
	return e.Field + ": " + e.Problem
}

// StateError reports an unusable state: the file (or "<state>" when the
// state did not come from a file) and every problem found in it.
type StateError struct {
	File     string
	Problems []FieldError
}

func (e *StateError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.String()
	}
	return fmt.Sprintf("state file %s: %s", e.File, strings.Join(parts, "; "))
}

// Load reads and validates a state file.
func Load(path string) (*State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read state file: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes and validates a state file's contents; name (the file's
// path) is used in errors, which name the field and what is wrong with it.
func Parse(data []byte, name string) (*State, error) {
	fail := func(field, problem string) error {
		return &StateError{File: name, Problems: []FieldError{{Field: field, Problem: problem}}}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fail("", "the file is empty; it needs at least a machine")
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fail("", "not valid YAML: "+err.Error())
	}
	var generic any
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if err := dec.Decode(&generic); err != nil {
		return nil, fail("", "not valid YAML: "+err.Error())
	}
	if probs := checkShape(generic); len(probs) > 0 {
		return nil, &StateError{File: name, Problems: probs}
	}
	var st State
	dec = json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return nil, fail("", err.Error())
	}
	if probs := st.validate(); len(probs) > 0 {
		return nil, &StateError{File: name, Problems: probs}
	}
	st.normalize()
	return &st, nil
}

// normalize makes empty lists nil, which mean the same; an empty
// computeInstances list is kept: it means "no compute instances".
func (s *State) normalize() {
	if len(s.Devices) == 0 {
		s.Devices = nil
	}
	for i := range s.Devices {
		d := &s.Devices[i]
		if len(d.MIG) == 0 {
			d.MIG = nil
		}
		if len(d.XIDs) == 0 {
			d.XIDs = nil
		}
		if len(d.Processes) == 0 {
			d.Processes = nil
		}
	}
}

// Validate checks a state built in code the way Parse checks a file.
func (s *State) Validate() error {
	if s == nil {
		return &StateError{File: "<state>", Problems: []FieldError{{Problem: "no state"}}}
	}
	if probs := s.validate(); len(probs) > 0 {
		return &StateError{File: "<state>", Problems: probs}
	}
	return nil
}

// DefaultState returns a lively starting state for a machine: eight idle-ish
// GPUs whose utilization, power and temperature follow out-of-step sine
// waves, no MIG, no faults. gpulet writes it out for a person to edit.
func DefaultState(machineName string) (*State, error) {
	m, err := lookupMachine(machineName)
	if err != nil {
		return nil, err
	}
	st := &State{Machine: m.name, GPUs: maxGPUs, Topology: TopologyNVSwitch}
	period := Duration{5 * time.Minute}
	for i := range maxGPUs {
		offset := Duration{time.Duration(i) * period.Duration / maxGPUs}
		wave := func(lo, hi float64) *Value {
			return &Value{Pattern: PatternSine, Min: lo, Max: hi, Period: period, Offset: offset}
		}
		st.Devices = append(st.Devices, DeviceState{
			Index:        i,
			Utilization:  &Utilization{GPU: wave(5, 95), Memory: wave(2, 60)},
			PowerW:       wave(m.idlePowerW, 0.85*m.powerLimitW),
			TemperatureC: wave(m.idleTempC, m.idleTempC+40),
		})
	}
	return st, st.Validate()
}

// stateHeader opens every file WriteState writes.
const stateHeader = `# gpulet GPU simulator state. Edit while gpulet runs to inject faults:
#   lost: true            the GPU falls off the bus (XID 79); false brings it back
#   xids: [{id: a, xid: 31}]   each id is delivered once
#   ecc: {uncorrected: 5}      raising a count fires that many ECC events
#   remappedRows: {pending: true}
#   migEnabled: true, mig: [{profile: 1g.10gb}]
# Values are numbers or {pattern: sine|ramp|square, min, max, period, offset}.
`

// WriteState writes a state file atomically (temp file, fsync, rename).
func WriteState(path string, st *State) error {
	if err := st.Validate(); err != nil {
		return err
	}
	return writeFileAtomic(path, append([]byte(stateHeader), encodeState(st)...), 0o644)
}

// writeFileAtomic replaces path with data so readers see the old or the new
// file, never a part.
func writeFileAtomic(path string, data []byte, mode os.FileMode) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), mode)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	return nil
}
