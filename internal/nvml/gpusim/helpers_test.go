package gpusim

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// fakeClock is a settable clock for WithClock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// mustParse parses an inline state file.
func mustParse(t *testing.T, yaml string) *State {
	t.Helper()
	st, err := Parse([]byte(strings.TrimSpace(yaml)+"\n"), "test.yaml")
	if err != nil {
		t.Fatalf("parse state: %v", err)
	}
	return st
}

// startSim starts a simulator and initialises its NVML, shutting it down
// when the test ends.
func startSim(t *testing.T, st *State, opts ...Option) (*Simulator, nvml.Interface) {
	t.Helper()
	sim, err := New(st, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	lib := sim.Interface()
	if r := lib.Init(); r != nvml.SUCCESS {
		t.Fatalf("Init: %v", r)
	}
	t.Cleanup(func() { _ = lib.Shutdown() })
	return sim, lib
}

// handle returns GPU i, failing the test on error.
func handle(t *testing.T, lib nvml.Interface, i int) nvml.Device {
	t.Helper()
	d, r := lib.DeviceGetHandleByIndex(i)
	if r != nvml.SUCCESS {
		t.Fatalf("DeviceGetHandleByIndex(%d): %v", i, r)
	}
	return d
}

func busID(p nvml.PciInfo) string {
	var b []byte
	for _, c := range p.BusId {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

func wantRet(t *testing.T, what string, got, want nvml.Return) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}
