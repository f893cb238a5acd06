package metrics

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gpulet/gpulet/internal/nvml"
)

// hangingSource blocks reads of one device until released, as NVML can on
// a GPU that is falling off the bus.
type hangingSource struct {
	Source
	uuid    string
	release chan struct{}
	calls   atomic.Int32
}

func (h *hangingSource) Telemetry(uuid string, last uint64) (nvml.Telemetry, error) {
	if uuid == h.uuid {
		h.calls.Add(1)
		<-h.release
	}
	return h.Source.Telemetry(uuid, last)
}

func TestHungGPUStallsNeitherSamplerNorScrape(t *testing.T) {
	n := newTestNode(t, "machine: dgx-h100\nnodeSeed: hung\ngpus: 4\n")
	hung := n.Inventory.GPUs[2]
	src := &hangingSource{Source: n.Adapter, uuid: hung.UUID, release: make(chan struct{})}
	reg := prometheus.NewRegistry()
	ops := NewOps(reg)
	s := NewSampler(SamplerOptions{Source: src, Inventory: n.Inventory, Ops: ops, ProcRoot: n.procRoot, Now: n.clock.Now, ReadTimeout: 50 * time.Millisecond})
	ctx := context.Background()
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(src.release) }) }
	t.Cleanup(func() {
		release()
		s.waitReads(ctx, time.Second)
	})

	for i := range 3 {
		start := time.Now()
		snap := s.SampleOnce(ctx)
		if took := time.Since(start); took > 10*time.Second { // a hang, not a slow machine
			t.Fatalf("sample %d took %v with a hung GPU; the read timeout is 50ms", i, took)
		}
		for _, d := range snap.Devices {
			if want := d.UUID != hung.UUID; d.OK != want {
				t.Errorf("sample %d: %s read = %v, want %v", i, d.Name, d.OK, want)
			}
		}
	}
	if got := src.calls.Load(); got != 1 {
		t.Errorf("reads of the hung GPU = %d, want 1 (no new read while one is stuck)", got)
	}
	if got := testutil.ToFloat64(ops.nvmlErrors.WithLabelValues("telemetry", "no_answer")); got != 3 {
		t.Errorf("no_answer errors = %v, want 3", got)
	}

	// Once NVML answers, the GPU is read again.
	release()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if snap := s.SampleOnce(ctx); snap.Devices[2].OK {
			return
		}
	}
	t.Error("the GPU was not read again after NVML answered")
}

func TestLostGPUIsReportedUnreadWithItsMIGDevices(t *testing.T) {
	n := newTestNode(t, `machine: dgx-a100
nodeSeed: lost
gpus: 2
devices:
- index: 1
  migEnabled: true
  mig: [{profile: 3g.40gb, start: 0}, {profile: 3g.40gb, start: 4}]
`)
	st := n.Sim.State()
	st.Devices[0].Lost = true // the entry of GPU 1
	if err := n.Sim.Apply(st); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	ops := NewOps(reg)
	s := NewSampler(SamplerOptions{Source: n.Adapter, Inventory: n.Inventory, Ops: ops, ProcRoot: n.procRoot, Now: n.clock.Now, ReadTimeout: 10 * time.Second})
	snap := s.SampleOnce(context.Background())
	var read []bool
	for _, d := range snap.Devices {
		read = append(read, d.OK)
	}
	if len(read) != 4 || !read[0] || read[1] || read[2] || read[3] {
		t.Errorf("devices read = %v, want [true false false false] (GPU 0; lost GPU 1 and its two MIG devices)", read)
	}
	if got := testutil.ToFloat64(ops.nvmlErrors.WithLabelValues("telemetry", "gpu_lost")); got != 1 {
		t.Errorf("gpu_lost errors = %v, want 1 (its MIG devices are not asked)", got)
	}
}

func TestRunSamplesOnItsOwnSchedule(t *testing.T) {
	n := newTestNode(t, "machine: dgx-h100\nnodeSeed: run\ngpus: 1\n")
	s := NewSampler(SamplerOptions{Source: n.Adapter, Inventory: n.Inventory, ProcRoot: n.procRoot, Interval: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	var first *Snapshot
	for time.Now().Before(deadline) {
		snap := s.Snapshot()
		if first == nil {
			first = snap
		} else if snap != first {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if first == nil || s.Snapshot() == first {
		t.Error("Run did not publish successive snapshots")
	}
}

// TestRetune: a running sampler takes a new interval and idle options
// from its next tick on, as a config reload asks, while a read of a hung
// GPU is still inside NVML (the race detector watches that).
func TestRetune(t *testing.T) {
	n := newTestNode(t, "machine: dgx-h100\nnodeSeed: retune\ngpus: 2\n")
	src := &hangingSource{Source: n.Adapter, uuid: n.Inventory.GPUs[1].UUID, release: make(chan struct{})}
	t.Cleanup(func() { close(src.release) })
	s := NewSampler(SamplerOptions{Source: src, Inventory: n.Inventory, ProcRoot: n.procRoot, Interval: time.Hour, ReadTimeout: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var runErr error
	stop := sync.OnceFunc(func() {
		cancel()
		runErr = <-done
	})
	defer stop()
	waitSnapshot := func(what string, cond func(*Snapshot) bool) *Snapshot {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if snap := s.Snapshot(); snap != nil && cond(snap) {
				return snap
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("%s: not within 10s", what)
		return nil
	}
	first := waitSnapshot("first sample", func(*Snapshot) bool { return true })

	// An hour between samples: only a retune brings the next one.
	s.Retune(Tuning{Interval: 20 * time.Millisecond, Idle: IdleOptions{Threshold: 0.5, EventAfter: time.Minute}})
	second := waitSnapshot("a sample after the retune", func(snap *Snapshot) bool { return snap != first })
	waitSnapshot("another sample 20ms later", func(snap *Snapshot) bool { return snap != second })

	stop()
	if runErr != nil {
		t.Fatal(runErr)
	}
	if s.interval != 20*time.Millisecond || s.readTimeout != 20*time.Millisecond {
		t.Errorf("interval %v, read timeout %v; want 20ms and the 20ms given", s.interval, s.readTimeout)
	}
	if s.idle.opts.Threshold != 0.5 || s.idle.opts.EventAfter != time.Minute {
		t.Errorf("idle options %+v, want threshold 0.5 and events after 1m", s.idle.opts)
	}
	if src.calls.Load() != 1 {
		t.Errorf("the hung GPU was asked %d times, want once (its read never returned)", src.calls.Load())
	}

	// Without a read timeout given, it follows the interval; a zero tuning
	// means the defaults.
	s2 := NewSampler(SamplerOptions{Source: n.Adapter, Inventory: n.Inventory, ProcRoot: n.procRoot, Interval: time.Hour})
	s2.Retune(Tuning{Interval: 40 * time.Millisecond})
	if !s2.applyTuning(context.Background()) || s2.interval != 40*time.Millisecond || s2.readTimeout != 20*time.Millisecond {
		t.Errorf("interval %v, read timeout %v; want 40ms and 20ms (derived)", s2.interval, s2.readTimeout)
	}
	s2.Retune(Tuning{})
	if !s2.applyTuning(context.Background()) {
		t.Fatal("no pending tuning")
	}
	if s2.interval != time.Second || s2.readTimeout != 500*time.Millisecond || s2.idle.opts.Threshold != DefaultIdleThreshold {
		t.Errorf("after a zero tuning: interval %v, read timeout %v, threshold %v; want the defaults", s2.interval, s2.readTimeout, s2.idle.opts.Threshold)
	}
	if s2.applyTuning(context.Background()) {
		t.Error("a tuning applied twice")
	}
}
