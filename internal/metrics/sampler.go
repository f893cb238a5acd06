package metrics

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/nvml"
	"github.com/gpulet/gpulet/internal/podresources"
)

// Source is what the sampler reads devices through; *nvml.Adapter is one.
type Source interface {
	Telemetry(uuid string, lastSample uint64) (nvml.Telemetry, error)
	Processes(uuid string) ([]nvml.Process, error)
}

// LedgerReader lists who holds which device; *ledger.Ledger is one.
type LedgerReader interface {
	Records() []ledger.Record
}

// PodLister lists the kubelet's pods with their devices;
// *podresources.Client is one.
type PodLister interface {
	List(ctx context.Context) ([]podresources.Pod, error)
}

// DefaultDRADriverName is the DRA driver whose claims are gpulet's.
const DefaultDRADriverName = "gpu.gpulet.dev"

// SamplerOptions configure a Sampler. Only Source and Inventory are
// required.
type SamplerOptions struct {
	// Source reads the devices.
	Source Source
	// Inventory is the node's devices at start; see SetInventory.
	Inventory *inventory.Inventory
	// Discover rebuilds the inventory; the sampler calls it when the
	// ledger or the kubelet name a device the inventory lacks (a MIG
	// device created for a claim), at most once per RediscoverEvery. Nil:
	// only SetInventory changes the inventory.
	Discover func() (*inventory.Inventory, error)
	// RediscoverEvery bounds Discover calls. Default 10s.
	RediscoverEvery time.Duration
	// Interval is the time between two samples. Default 1s.
	Interval time.Duration
	// ReadTimeout bounds the wait for one GPU's reading in a sample; a GPU
	// that has not answered is reported unread, and is not asked again
	// until its pending read returns. Default Interval/2.
	ReadTimeout time.Duration

	// Ledger lists holders (optional).
	Ledger LedgerReader
	// PodResources lists the kubelet's pods (optional). It is asked every
	// PodResourcesInterval (default 10s), and at once when the ledger's
	// holders change.
	PodResources         PodLister
	PodResourcesInterval time.Duration
	// DRADriverName picks gpulet's claims out of the kubelet's report.
	// Default DefaultDRADriverName.
	DRADriverName string
	// Pods names the pods that processes' cgroups point to (optional).
	Pods PodResolver
	// ProcRoot is where /proc/<pid>/cgroup is read. Default "/proc".
	ProcRoot string

	// Idle configures idle tracking and its Events.
	Idle IdleOptions
	// Tunings, when set, carries config reloads to Run (as Retune does).
	Tunings <-chan Tuning
	// Ops counts failed NVML reads (optional).
	Ops *Ops
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

func (o SamplerOptions) withDefaults() SamplerOptions {
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = o.Interval / 2
	}
	if o.RediscoverEvery <= 0 {
		o.RediscoverEvery = 10 * time.Second
	}
	if o.PodResourcesInterval <= 0 {
		o.PodResourcesInterval = 10 * time.Second
	}
	if o.DRADriverName == "" {
		o.DRADriverName = DefaultDRADriverName
	}
	if o.ProcRoot == "" {
		o.ProcRoot = "/proc"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Sampler reads every GPU and MIG device on its own schedule into a
// Snapshot, so a scrape never calls NVML and many scrapers cost no more
// than one. Each GPU is read in its own goroutine, at most one read per
// GPU at a time, so a GPU that hangs in NVML delays neither the others nor
// the scrape.
type Sampler struct {
	opts SamplerOptions
	snap atomic.Pointer[Snapshot]

	// The fields below belong to the goroutine that calls SampleOnce.
	slots        map[string]*gpuSlot
	procs        *procReader
	idle         *idleTracker
	pods         []podresources.Pod
	podsAt       time.Time
	podsErr      string
	holders      string
	lastDiscover time.Time
	reads        sync.WaitGroup

	mu  sync.Mutex
	inv *inventory.Inventory

	// A Retune waiting for Run to apply it, and Run's nudge.
	tuning         atomic.Pointer[Tuning]
	retune         chan struct{}
	readTimeoutSet bool // ReadTimeout was given, not derived from Interval
	// The interval and read timeout in force: opts' at first, then a
	// Retune's. Only Run's goroutine touches them (opts itself never
	// changes: reads still in NVML use it).
	interval, readTimeout time.Duration
}

// Tuning is what a config reload may change in a running sampler.
type Tuning struct {
	// Interval is the time between two samples; 0 means 1s.
	Interval time.Duration
	// Idle replaces the idle options. Pods' idle times carry over, and a
	// pod already told about its idle device is not told again.
	Idle IdleOptions
}

// gpuSlot is one GPU's reading in flight and its outcome.
type gpuSlot struct {
	busy atomic.Bool
	// last holds each device's newest NVML sample timestamp; only the
	// read holding busy touches it.
	last map[string]uint64

	mu     sync.Mutex
	result map[string]deviceRead
	fresh  bool
}

// deviceRead is what one read got from one device.
type deviceRead struct {
	tel     nvml.Telemetry
	telOK   bool
	procs   []nvml.Process
	procsOK bool
}

// NewSampler returns a sampler; Run drives it.
func NewSampler(opts SamplerOptions) *Sampler {
	readTimeoutSet := opts.ReadTimeout > 0
	opts = opts.withDefaults()
	return &Sampler{
		opts:           opts,
		slots:          map[string]*gpuSlot{},
		procs:          newProcReader(opts.ProcRoot),
		idle:           newIdleTracker(opts.Idle),
		inv:            opts.Inventory,
		retune:         make(chan struct{}, 1),
		readTimeoutSet: readTimeoutSet,
		interval:       opts.Interval,
		readTimeout:    opts.ReadTimeout,
	}
}

// Retune changes the sample interval and the idle options of a running
// sampler, from its next tick on; the telemetry and idle times gathered
// so far are kept. Safe to call from any goroutine; the last call wins.
func (s *Sampler) Retune(t Tuning) {
	s.tuning.Store(&t)
	select {
	case s.retune <- struct{}{}:
	default:
	}
}

// applyTuning installs a pending Retune; only Run's goroutine calls it.
func (s *Sampler) applyTuning(ctx context.Context) bool {
	t := s.tuning.Swap(nil)
	if t == nil {
		return false
	}
	s.interval = t.Interval
	if s.interval <= 0 {
		s.interval = time.Second
	}
	if !s.readTimeoutSet {
		s.readTimeout = s.interval / 2
	}
	s.idle.setOptions(t.Idle)
	klog.FromContext(ctx).WithName("metrics").Info("Sampler retuned", "interval", s.interval,
		"idleThreshold", s.idle.opts.Threshold, "idleEventAfter", s.idle.opts.EventAfter)
	return true
}

// SetInventory replaces the devices sampled from the next sample on (the
// owner of the inventory calls it after rebuilding it).
func (s *Sampler) SetInventory(inv *inventory.Inventory) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inv = inv
}

func (s *Sampler) inventory() *inventory.Inventory {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inv
}

// Snapshot returns the latest snapshot; nil before the first sample.
func (s *Sampler) Snapshot() *Snapshot { return s.snap.Load() }

// Run samples at once and then every Interval until ctx ends. On return
// it waits a little for reads still in NVML; a read stuck there for good
// cannot be interrupted and is left behind.
func (s *Sampler) Run(ctx context.Context) error {
	defer s.waitReads(ctx, 2*time.Second)
	ticker := time.NewTicker(s.interval)
	defer ticker.Stop()
	s.SampleOnce(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
			s.SampleOnce(ctx)
		case t := <-s.opts.Tunings:
			s.tuning.Store(&t)
			if s.applyTuning(ctx) {
				ticker.Reset(s.interval)
			}
		case <-s.retune:
			if s.applyTuning(ctx) {
				ticker.Reset(s.interval)
			}
		}
	}
}

func (s *Sampler) waitReads(ctx context.Context, limit time.Duration) {
	done := make(chan struct{})
	go func() {
		s.reads.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(limit):
		klog.FromContext(ctx).Info("A GPU read is still inside NVML at shutdown; leaving it")
	}
}

// SampleOnce takes one sample and publishes it. Run calls it; tests call
// it directly to step a simulated clock. It must not run concurrently with
// itself or Run.
func (s *Sampler) SampleOnce(ctx context.Context) *Snapshot {
	logger := klog.FromContext(ctx).WithName("metrics")
	now := s.opts.Now()
	inv := s.inventory()

	var records []ledger.Record
	if s.opts.Ledger != nil {
		records = s.opts.Ledger.Records()
	}
	s.refreshPods(ctx, logger, now, records)
	ix := newDeviceIndex(inv)
	allocs, unknown := attribute(ix, records, s.pods, s.opts.DRADriverName)
	if len(unknown) > 0 && s.opts.Discover != nil && now.Sub(s.lastDiscover) >= s.opts.RediscoverEvery {
		s.lastDiscover = now
		logger.V(2).Info("Devices held that the inventory lacks; rediscovering", "devices", unknown)
		next, err := s.opts.Discover()
		if err != nil {
			logger.Error(err, "Rediscovering devices for metrics")
		}
		if next != nil {
			s.SetInventory(next)
			inv = next
			allocs, _ = attribute(newDeviceIndex(inv), records, s.pods, s.opts.DRADriverName)
		}
	}

	snap := &Snapshot{Time: now, Allocations: allocs}
	if inv != nil {
		snap.DriverVersion = inv.System.DriverVersion
		snap.Devices = s.readDevices(inv)
	}
	snap.PodMemory = podMemory(ctx, snap.Devices, s.procs, s.opts.Pods)
	snap.Idle = s.idle.update(ctx, now, snap.Devices, allocs)
	s.snap.Store(snap)
	return snap
}

// refreshPods asks the kubelet for its pods when due: every
// PodResourcesInterval, or at once when the ledger's holders changed. On
// an error the last answer stays.
func (s *Sampler) refreshPods(ctx context.Context, logger klog.Logger, now time.Time, records []ledger.Record) {
	if s.opts.PodResources == nil {
		return
	}
	ids := make([]string, len(records))
	for i, r := range records {
		ids[i] = r.ID
	}
	holders := strings.Join(ids, "\x00")
	if holders == s.holders && !s.podsAt.IsZero() && now.Sub(s.podsAt) < s.opts.PodResourcesInterval {
		return
	}
	s.holders, s.podsAt = holders, now
	pods, err := s.opts.PodResources.List(ctx)
	if err != nil {
		if msg := err.Error(); msg != s.podsErr {
			s.podsErr = msg
			logger.Error(err, "Reading the kubelet's pod resources; allocations come from the ledger alone until it answers")
		}
		return
	}
	s.podsErr = ""
	s.pods = pods
}

// readDevices reads every GPU in parallel and waits up to ReadTimeout.
func (s *Sampler) readDevices(inv *inventory.Inventory) []DeviceSample {
	done := make(chan struct{}, len(inv.GPUs))
	started := 0
	live := make(map[string]bool, len(inv.GPUs))
	for i := range inv.GPUs {
		g := inv.GPUs[i]
		live[g.UUID] = true
		slot := s.slots[g.UUID]
		if slot == nil {
			slot = &gpuSlot{last: map[string]uint64{}}
			s.slots[g.UUID] = slot
		}
		if !slot.busy.CompareAndSwap(false, true) {
			continue // still inside NVML since an earlier sample
		}
		started++
		s.reads.Add(1)
		go func() {
			defer s.reads.Done()
			r := s.readGPU(g, slot.last)
			slot.mu.Lock()
			slot.result, slot.fresh = r, true
			slot.mu.Unlock()
			slot.busy.Store(false)
			done <- struct{}{}
		}()
	}
	for uuid := range s.slots {
		if !live[uuid] && !s.slots[uuid].busy.Load() {
			delete(s.slots, uuid)
		}
	}
	timer := time.NewTimer(s.readTimeout)
	defer timer.Stop()
wait:
	for range started {
		select {
		case <-done:
		case <-timer.C:
			break wait
		}
	}

	out := make([]DeviceSample, 0, len(inv.GPUs))
	for _, g := range inv.GPUs {
		slot := s.slots[g.UUID]
		slot.mu.Lock()
		var reads map[string]deviceRead
		if slot.fresh {
			reads, slot.fresh = slot.result, false
		}
		slot.mu.Unlock()
		if reads == nil {
			s.opts.Ops.ObserveNVMLError("telemetry", errNoAnswer)
		}
		out = append(out, sample(DeviceSample{Name: g.Name, UUID: g.UUID, Model: g.Device.Name, MIGEnabled: g.MigEnabled()}, reads))
		for _, m := range g.MigDevices {
			out = append(out, sample(DeviceSample{Name: m.Name, UUID: m.UUID, Model: g.Device.Name,
				Parent: g.Name, ParentUUID: g.UUID, Profile: m.Profile}, reads))
		}
	}
	return out
}

func sample(d DeviceSample, reads map[string]deviceRead) DeviceSample {
	r, ok := reads[d.UUID]
	if !ok || !r.telOK {
		return d
	}
	d.OK, d.Telemetry = true, r.tel
	d.ProcessesOK, d.Processes = r.procsOK, r.procs
	return d
}

// readGPU reads a GPU and its MIG devices. A GPU that is lost is not asked
// about its MIG devices: they went with it.
func (s *Sampler) readGPU(g inventory.GPU, last map[string]uint64) map[string]deviceRead {
	out := make(map[string]deviceRead, 1+len(g.MigDevices))
	gr, err := s.readDevice(g.UUID, last, !g.MigEnabled())
	out[g.UUID] = gr
	if errors.Is(err, nvml.ErrGPULost) {
		return out
	}
	for _, m := range g.MigDevices {
		out[m.UUID], _ = s.readDevice(m.UUID, last, true)
	}
	return out
}

// readDevice reads one device's telemetry and, if withProcs, its
// processes (a MIG-enabled GPU's processes belong to its MIG devices).
func (s *Sampler) readDevice(uuid string, last map[string]uint64, withProcs bool) (deviceRead, error) {
	var r deviceRead
	tel, err := s.opts.Source.Telemetry(uuid, last[uuid])
	if err != nil {
		s.opts.Ops.ObserveNVMLError("telemetry", err)
		return r, err
	}
	last[uuid] = tel.LastSample
	r.tel, r.telOK = tel, true
	if withProcs {
		procs, err := s.opts.Source.Processes(uuid)
		if err != nil {
			s.opts.Ops.ObserveNVMLError("processes", err)
			return r, nil
		}
		slices.SortFunc(procs, func(a, b nvml.Process) int { return cmp.Compare(a.PID, b.PID) })
		r.procs, r.procsOK = procs, true
	}
	return r, nil
}
