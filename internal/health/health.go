// Package health watches the node's GPUs through one NVML event loop and
// a periodic probe, and tells subscribers (the device plugin, the DRA
// driver, metrics) which devices are healthy.
//
// A device turns unhealthy on a critical XID, a double-bit ECC error, or
// when it stops answering; it turns healthy again only on a real signal:
// it answers NVML again, no retired pages or row remaps are pending, and
// (after an XID or ECC error) a quiet period has passed with no new one.
// Application XIDs (a CUDA program's own faults) are ignored.
package health

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/gpulet/gpulet/internal/nvml"
)

// DefaultIgnoredXIDs are XIDs caused by applications, not hardware:
// 13 graphics engine exception, 31 GPU memory page fault, 43 GPU stopped
// processing, 45 preemptive cleanup, 68 video processor exception, 109
// context switch timeout. NVIDIA's device plugin ignores the same set.
var DefaultIgnoredXIDs = []uint64{13, 31, 43, 45, 68, 109}

// Reason says why a device is unhealthy.
type Reason string

// Reasons, from the most to the least severe.
const (
	ReasonNone            Reason = ""
	ReasonLost            Reason = "gpu-lost"
	ReasonRowRemapFailed  Reason = "row-remap-failed"
	ReasonECC             Reason = "ecc-double-bit"
	ReasonPendingReset    Reason = "pending-retirement"
	ReasonXID             Reason = "xid"
	ReasonParentUnhealthy Reason = "parent-unhealthy"
)

// State is one device's health.
type State struct {
	Healthy bool
	Reason  Reason
	// Message is for people: "XID 79", "GPU has fallen off the bus".
	Message string
	// XID is the last critical XID seen, 0 if none.
	XID uint64
	// Since is when the device entered this state.
	Since time.Time
}

// Device is something health tracks: a GPU, or a MIG device of one.
type Device struct {
	UUID string
	// Parent is the GPU's UUID for a MIG device, "" for a GPU.
	Parent string
	// GIID and CIID locate a MIG device on its parent.
	GIID, CIID int
}

// Source is what health reads NVML through; *nvml.Adapter is one.
type Source interface {
	WatchEvents(uuids []string) (*nvml.EventWatcher, error)
	Probe(uuid string) (nvml.Probe, error)
}

// Options tune the monitor. Zero values take the defaults.
type Options struct {
	// IgnoredXIDs are never treated as faults. Nil means DefaultIgnoredXIDs.
	IgnoredXIDs []uint64
	// QuietPeriod must pass after an XID or ECC error, with no new one,
	// before the device may recover. Default 5 minutes.
	QuietPeriod time.Duration
	// ProbeInterval is how often every device is probed. Default 5 seconds.
	ProbeInterval time.Duration
	// WaitSlice bounds one NVML event wait, which cannot be interrupted:
	// it is how long shutdown may take. Default 500ms.
	WaitSlice time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.IgnoredXIDs == nil {
		o.IgnoredXIDs = DefaultIgnoredXIDs
	}
	if o.QuietPeriod == 0 {
		o.QuietPeriod = 5 * time.Minute
	}
	if o.ProbeInterval == 0 {
		o.ProbeInterval = 5 * time.Second
	}
	if o.WaitSlice == 0 {
		o.WaitSlice = 500 * time.Millisecond
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Update is what subscribers receive: every device's state, after any
// change.
type Update struct {
	States map[string]State
}

// Monitor tracks device health. Run drives it; everything else may be
// called from any goroutine.
type Monitor struct {
	src Source

	mu      sync.Mutex
	opts    Options
	devices []Device
	// faults are per-GPU conditions seen; states are derived from them.
	faults  map[string]*fault
	states  map[string]State
	xids    map[string]map[uint64]uint64
	subs    map[chan Update]struct{}
	rewatch bool
	// watches counts event registrations made (they are renewed when a
	// lost GPU comes back or the devices change).
	watches int
}

// fault is what is known about one physical GPU.
type fault struct {
	lost         bool
	lastXID      uint64
	lastXIDTime  time.Time
	eccTime      time.Time
	pendingReset bool
	remapFailed  bool
	migXIDs      map[[2]int]time.Time // MIG-scoped XIDs by (GI, CI)
	migXIDCode   map[[2]int]uint64
}

// New returns a monitor of devices. Devices start healthy until the first
// probe says otherwise.
func New(src Source, devices []Device, opts Options) *Monitor {
	m := &Monitor{
		src:    src,
		opts:   opts.withDefaults(),
		faults: make(map[string]*fault),
		states: make(map[string]State),
		xids:   make(map[string]map[uint64]uint64),
		subs:   make(map[chan Update]struct{}),
	}
	m.setDevicesLocked(devices)
	return m
}

// SetDevices replaces the tracked devices (after an inventory change) and
// re-registers for events.
func (m *Monitor) SetDevices(devices []Device) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setDevicesLocked(devices)
	m.rewatch = true
	m.recomputeLocked()
}

func (m *Monitor) setDevicesLocked(devices []Device) {
	m.devices = slices.Clone(devices)
	now := m.opts.Now()
	for _, d := range devices {
		gpu := d.UUID
		if d.Parent != "" {
			gpu = d.Parent
		}
		if m.faults[gpu] == nil {
			m.faults[gpu] = &fault{migXIDs: map[[2]int]time.Time{}, migXIDCode: map[[2]int]uint64{}}
		}
		if _, ok := m.states[d.UUID]; !ok {
			m.states[d.UUID] = State{Healthy: true, Since: now}
		}
	}
}

// SetOptions applies new options (a config reload); the clock is kept.
func (m *Monitor) SetOptions(opts Options) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.opts.Now
	m.opts = opts.withDefaults()
	m.opts.Now = now
	m.recomputeLocked()
}

// States returns every device's current state.
func (m *Monitor) States() map[string]State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.snapshotLocked()
}

// XIDCounts returns how many of each XID every GPU has reported, ignored
// ones included.
func (m *Monitor) XIDCounts() map[string]map[uint64]uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]map[uint64]uint64, len(m.xids))
	for uuid, counts := range m.xids {
		c := make(map[uint64]uint64, len(counts))
		for x, n := range counts {
			c[x] = n
		}
		out[uuid] = c
	}
	return out
}

// Watches reports how many times the monitor has registered for NVML
// events: 0 until events can arrive, then one more each time the
// registration is renewed.
func (m *Monitor) Watches() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.watches
}

// Subscribe returns a channel that holds the latest Update after each
// change (a slow reader sees the newest, not every step), primed with the
// current states, and a function that ends the subscription.
func (m *Monitor) Subscribe() (<-chan Update, func()) {
	ch := make(chan Update, 1)
	m.mu.Lock()
	m.subs[ch] = struct{}{}
	ch <- Update{States: m.snapshotLocked()}
	m.mu.Unlock()
	return ch, func() {
		m.mu.Lock()
		delete(m.subs, ch)
		m.mu.Unlock()
	}
}

func (m *Monitor) snapshotLocked() map[string]State {
	out := make(map[string]State, len(m.states))
	for k, v := range m.states {
		out[k] = v
	}
	return out
}

// Run watches events and probes devices until ctx ends.
func (m *Monitor) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithName("health")
	events := make(chan nvml.Event, 64)
	var wg sync.WaitGroup
	defer wg.Wait()

	var watcher *nvml.EventWatcher
	var stopWatch context.CancelFunc
	startWatch := func() {
		if stopWatch != nil {
			stopWatch()
			wg.Wait()
		}
		watcher = nil
		uuids := m.gpuUUIDs()
		w, err := m.src.WatchEvents(uuids)
		if err != nil {
			logger.Error(err, "Registering for NVML events; affected GPUs are watched by probing only")
		}
		if w == nil {
			stopWatch = nil
			return
		}
		watcher = w
		m.mu.Lock()
		m.watches++
		m.mu.Unlock()
		wctx, cancel := context.WithCancel(ctx)
		stopWatch = cancel
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { _ = w.Close() }()
			m.pump(wctx, logger, w, events)
		}()
	}
	startWatch()
	defer func() {
		if stopWatch != nil {
			stopWatch()
		}
	}()

	m.probeAll(logger)
	ticker := time.NewTicker(m.probeInterval())
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-events:
			m.handleEvent(logger, ev)
		case <-ticker.C:
			if recovered := m.probeAll(logger); recovered || m.takeRewatch() || watcher == nil {
				startWatch()
			}
		}
	}
}

// pump moves events from NVML's blocking wait onto a channel.
func (m *Monitor) pump(ctx context.Context, logger klog.Logger, w *nvml.EventWatcher, out chan<- nvml.Event) {
	slice := m.waitSlice()
	for ctx.Err() == nil {
		ev, err := w.Wait(slice)
		if errors.Is(err, nvml.ErrTimeout) {
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				logger.V(2).Info("Waiting for NVML events", "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(slice):
				}
			}
			continue
		}
		select {
		case out <- ev:
		case <-ctx.Done():
			return
		}
	}
}

func (m *Monitor) probeInterval() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.opts.ProbeInterval
}

func (m *Monitor) waitSlice() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.opts.WaitSlice
}

func (m *Monitor) takeRewatch() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.rewatch
	m.rewatch = false
	return r
}

func (m *Monitor) gpuUUIDs() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, d := range m.devices {
		if d.Parent == "" {
			out = append(out, d.UUID)
		}
	}
	return out
}

// handleEvent records an NVML event and re-derives states.
func (m *Monitor) handleEvent(logger klog.Logger, ev nvml.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.faults[ev.UUID]
	if f == nil {
		logger.V(2).Info("Event for a device not tracked", "uuid", ev.UUID, "kind", ev.Kind, "xid", ev.XID)
		return
	}
	now := m.opts.Now()
	switch ev.Kind {
	case nvml.EventXID:
		if m.xids[ev.UUID] == nil {
			m.xids[ev.UUID] = make(map[uint64]uint64)
		}
		m.xids[ev.UUID][ev.XID]++
		if slices.Contains(m.opts.IgnoredXIDs, ev.XID) {
			logger.V(2).Info("Ignoring application XID", "uuid", ev.UUID, "xid", ev.XID)
			return
		}
		logger.Info("Critical XID", "uuid", ev.UUID, "xid", ev.XID, "gi", int32(ev.GIID), "ci", int32(ev.CIID))
		if onMIG(ev) && m.hasMIGDevice(ev.UUID, int(ev.GIID), int(ev.CIID)) {
			key := [2]int{int(ev.GIID), int(ev.CIID)}
			f.migXIDs[key], f.migXIDCode[key] = now, ev.XID
		} else {
			f.lastXID, f.lastXIDTime = ev.XID, now
		}
	case nvml.EventDoubleBitECC:
		logger.Info("Double-bit ECC error", "uuid", ev.UUID)
		f.eccTime = now
	case nvml.EventGPUUnavailable:
		logger.Info("GPU unavailable", "uuid", ev.UUID)
		f.lost = true
	default:
		return
	}
	m.recomputeLocked()
}

func onMIG(ev nvml.Event) bool { return ev.GIID != 0xFFFFFFFF && ev.CIID != 0xFFFFFFFF }

func (m *Monitor) hasMIGDevice(parent string, gi, ci int) bool {
	for _, d := range m.devices {
		if d.Parent == parent && d.GIID == gi && d.CIID == ci {
			return true
		}
	}
	return false
}

// probeAll probes every GPU; it reports whether a lost GPU answered again
// (its event registration must then be renewed).
func (m *Monitor) probeAll(logger klog.Logger) bool {
	recovered := false
	for _, uuid := range m.gpuUUIDs() {
		p, err := m.src.Probe(uuid)
		if err != nil {
			logger.V(2).Info("Probe failed", "uuid", uuid, "err", err)
			continue
		}
		m.mu.Lock()
		f := m.faults[uuid]
		if f != nil {
			if f.lost && !p.Lost {
				logger.Info("GPU answers again", "uuid", uuid)
				recovered = true
			}
			if !f.lost && p.Lost {
				logger.Info("GPU does not answer", "uuid", uuid)
			}
			f.lost = p.Lost
			f.pendingReset = deref(p.RetiredPagesPending) || deref(p.RowRemapPending)
			f.remapFailed = deref(p.RowRemapFailed)
			m.recomputeLocked()
		}
		m.mu.Unlock()
	}
	return recovered
}

func deref(b *bool) bool { return b != nil && *b }

// recomputeLocked derives every device's state from the faults and tells
// subscribers if anything changed.
func (m *Monitor) recomputeLocked() {
	now := m.opts.Now()
	changed := false
	for _, d := range m.devices {
		gpu := d.UUID
		if d.Parent != "" {
			gpu = d.Parent
		}
		next := m.gpuState(m.faults[gpu], now)
		if d.Parent != "" {
			if !next.Healthy {
				next.Reason, next.Message = ReasonParentUnhealthy, "parent GPU: "+next.Message
			} else if t, ok := m.faults[gpu].migXIDs[[2]int{d.GIID, d.CIID}]; ok && now.Sub(t) < m.opts.QuietPeriod {
				x := m.faults[gpu].migXIDCode[[2]int{d.GIID, d.CIID}]
				next = State{Reason: ReasonXID, XID: x, Message: fmt.Sprintf("XID %d", x)}
			}
		}
		prev := m.states[d.UUID]
		if prev.Healthy == next.Healthy && prev.Reason == next.Reason && prev.XID == next.XID {
			continue
		}
		next.Since = now
		m.states[d.UUID] = next
		changed = true
	}
	if changed {
		snap := m.snapshotLocked()
		for ch := range m.subs {
			select {
			case <-ch:
			default:
			}
			ch <- Update{States: snap}
		}
	}
}

// gpuState decides a GPU's state from what is known of it.
func (m *Monitor) gpuState(f *fault, now time.Time) State {
	quiet := m.opts.QuietPeriod
	switch {
	case f == nil:
		return State{Healthy: true}
	case f.lost:
		return State{Reason: ReasonLost, Message: "GPU does not answer (fallen off the bus)", XID: f.lastXID}
	case f.remapFailed:
		return State{Reason: ReasonRowRemapFailed, Message: "row remapping failed: the GPU needs service"}
	case !f.eccTime.IsZero() && now.Sub(f.eccTime) < quiet:
		return State{Reason: ReasonECC, Message: "double-bit ECC error"}
	case f.pendingReset:
		return State{Reason: ReasonPendingReset, Message: "retired pages or remapped rows pending a GPU reset"}
	case !f.lastXIDTime.IsZero() && now.Sub(f.lastXIDTime) < quiet:
		return State{Reason: ReasonXID, XID: f.lastXID, Message: fmt.Sprintf("XID %d", f.lastXID)}
	}
	return State{Healthy: true}
}
