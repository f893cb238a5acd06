package gpusim

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Simulator is a live simulated GPU node. Its Interface behaves like the
// NVML library on the machine its State describes; Apply and Watch change
// that state while it runs. A Simulator is safe for concurrent use: one
// mutex guards everything that changes.
type Simulator struct {
	m        *machine
	clock    func() time.Time
	onError  func(error)
	procRoot string
	lib      *library

	mu        sync.Mutex
	devices   []*device // fixed at New; handles stay valid for the lifetime
	state     *State    // last state applied
	lastErr   error
	initCount int
	sets      map[*eventSet]struct{}
	delivered map[xidKey]bool
}

type xidKey struct {
	index int
	id    string
}

// Option configures a Simulator.
type Option func(*Simulator)

// WithClock sets the clock telemetry is computed from (default time.Now).
// Tests pass a fake clock to make values deterministic. Event waits always
// use real time.
func WithClock(now func() time.Time) Option {
	return func(s *Simulator) { s.clock = now }
}

// WithErrorHandler receives every error Watch meets reloading the state
// file (besides LastError and the log).
func WithErrorHandler(f func(error)) Option {
	return func(s *Simulator) { s.onError = f }
}

// WithProcRoot makes the simulator keep a fake proc tree of its processes
// under dir (see WriteProcTree), rewritten whenever the state changes.
func WithProcRoot(dir string) Option {
	return func(s *Simulator) { s.procRoot = dir }
}

// New starts a simulator in the given state. The state is its starting
// condition: faults already in it (XIDs, ECC counts, a lost GPU) raise no
// events.
func New(state *State, opts ...Option) (*Simulator, error) {
	if err := state.Validate(); err != nil {
		return nil, err
	}
	m, err := lookupMachine(state.Machine)
	if err != nil {
		return nil, err
	}
	s := &Simulator{
		m:         m,
		clock:     time.Now,
		sets:      map[*eventSet]struct{}{},
		delivered: map[xidKey]bool{},
	}
	for _, o := range opts {
		o(s)
	}
	s.lib = newLibrary(s)
	st := state.clone()
	for i := range st.gpuCount() {
		s.devices = append(s.devices, newDevice(s, i, st.NodeSeed))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applyLocked(st, true)
	if err := s.writeProcTreeLocked(s.procRoot); err != nil {
		return nil, err
	}
	return s, nil
}

// Interface returns the simulated NVML library. Like the real one it must
// be initialised (Init, reference-counted) before use.
func (s *Simulator) Interface() nvml.Interface { return s.lib }

// State returns a copy of the state last applied.
func (s *Simulator) State() *State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.clone()
}

// LastError returns the error of the most recent Apply or state-file reload,
// nil if it succeeded. The last good state stays in force after an error.
func (s *Simulator) LastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// Apply swaps in a new state at once. Changes raise the events NVML would:
// new XIDs, rising ECC counts, a GPU becoming lost (XID 79), a new MIG
// layout. A GPU's MIG instances are rebuilt only when its migEnabled or
// mig entries change; otherwise instances created through NVML stay. An
// invalid state, or one changing what cannot change on a running node
// (machine, gpus, nodeSeed), is refused and the last good state stays.
// With WithProcRoot, an error writing the proc tree is returned after the
// state has been applied.
func (s *Simulator) Apply(state *State) error {
	err := s.apply(state, "<state>")
	s.setLastError(err)
	return err
}

func (s *Simulator) setLastError(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

// apply validates and applies a state; name is the file it came from.
func (s *Simulator) apply(state *State, name string) error {
	err := state.Validate()
	var se *StateError
	if errors.As(err, &se) {
		se.File = name
	}
	if err != nil {
		return err
	}
	defer s.lock()()
	if err := s.checkImmutable(state, name); err != nil {
		return err
	}
	s.applyLocked(state.clone(), false)
	return s.writeProcTreeLocked(s.procRoot)
}

func (s *Simulator) checkImmutable(st *State, name string) error {
	var probs []FieldError
	if st.Machine != s.state.Machine {
		probs = append(probs, FieldError{Field: "machine", Problem: fmt.Sprintf("cannot change from %s while the simulator runs", s.state.Machine)})
	}
	if st.gpuCount() != len(s.devices) {
		probs = append(probs, FieldError{Field: "gpus", Problem: fmt.Sprintf("cannot change from %d while the simulator runs", len(s.devices))})
	}
	if st.NodeSeed != s.state.NodeSeed {
		probs = append(probs, FieldError{Field: "nodeSeed", Problem: fmt.Sprintf("cannot change from %q while the simulator runs", s.state.NodeSeed)})
	}
	if len(probs) > 0 {
		return &StateError{File: name, Problems: probs}
	}
	return nil
}

// maxEventsPerChange caps the events one ECC count change raises.
const maxEventsPerChange = 1000

// applyLocked makes st the current state. initial marks the state New
// starts from, which raises no events.
func (s *Simulator) applyLocked(st *State, initial bool) {
	now := s.clock()
	for i, d := range s.devices {
		next := st.deviceState(i)
		prev := d.cfg
		d.accumulateEnergy(now)
		if initial || !migLayoutEqual(prev, next) {
			d.rebuildMIG(next)
			if !initial {
				s.deliverLocked(d, nvml.EventMigConfigChange, 0, noInstance, noInstance)
			}
		}
		if !initial && next.Lost && !prev.Lost {
			s.deliverLocked(d, nvml.EventTypeXidCriticalError, 79, noInstance, noInstance)
		}
		for _, x := range next.XIDs {
			k := xidKey{i, x.ID}
			if s.delivered[k] {
				continue
			}
			s.delivered[k] = true
			if !initial {
				s.deliverLocked(d, nvml.EventTypeXidCriticalError, x.XID, ptrOr(x.GPUInstance, noInstance), ptrOr(x.ComputeInstance, noInstance))
			}
		}
		if !initial {
			was, is := prev.eccCounts(), next.eccCounts()
			for n := uint64(0); is.Corrected > was.Corrected && n < min(is.Corrected-was.Corrected, maxEventsPerChange); n++ {
				s.deliverLocked(d, nvml.EventTypeSingleBitEccError, 0, noInstance, noInstance)
			}
			for n := uint64(0); is.Uncorrected > was.Uncorrected && n < min(is.Uncorrected-was.Uncorrected, maxEventsPerChange); n++ {
				s.deliverLocked(d, nvml.EventTypeDoubleBitEccError, 0, noInstance, noInstance)
			}
		}
		d.cfg = next
	}
	s.state = st
}

// noInstance is what NVML puts in an event's instance ids when the event
// is not attributed to a MIG instance.
const noInstance = 0xFFFFFFFF

func ptrOr(p *uint32, def uint32) uint32 {
	if p == nil {
		return def
	}
	return *p
}

// deviceState returns GPU i's settings (an idle default if none).
func (s *State) deviceState(i int) DeviceState {
	for _, d := range s.Devices {
		if d.Index == i {
			return d
		}
	}
	return DeviceState{Index: i}
}

func (d DeviceState) eccCounts() ECCCounts {
	if d.ECC == nil {
		return ECCCounts{}
	}
	return *d.ECC
}

func migLayoutEqual(a, b DeviceState) bool {
	return a.MIGEnabled == b.MIGEnabled && reflect.DeepEqual(a.MIG, b.MIG)
}

// clone deep-copies a valid state.
func (s *State) clone() *State {
	data, err := json.Marshal(s)
	if err != nil {
		panic(fmt.Sprintf("gpusim: encode state: %v", err)) // a validated state always encodes
	}
	var c State
	if err := json.Unmarshal(data, &c); err != nil {
		panic(fmt.Sprintf("gpusim: decode state: %v", err))
	}
	return &c
}

// driverVersion is the driver version in force.
func (s *Simulator) driverVersionLocked() string {
	if s.state.DriverVersion != "" {
		return s.state.DriverVersion
	}
	return s.m.driverVersion
}

// lock takes the simulator's mutex and returns its release, for
// `defer s.lock()()`.
func (s *Simulator) lock() func() {
	s.mu.Lock()
	return s.mu.Unlock
}

// deriveUUID formats a hash of the parts as a UUID body
// (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx).
func deriveUUID(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write([]byte(p))
	}
	b := h.Sum(nil)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
