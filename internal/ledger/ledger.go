// Package ledger is the single owner of "which physical device is held by
// whom" on a node. Both kubelet APIs reserve through it, so a node that
// runs the device plugin and the DRA driver at once never hands one GPU
// (or one MIG slice of it) to two workloads.
//
// A reservation holds Resources: a whole GPU, or the memory slices a MIG
// device occupies on its GPU. Two reservations conflict when they touch
// the same GPU and their slices overlap, unless both are shared holdings of
// the same device through the same API (time-slicing, consumable
// capacity).
//
// DRA reservations are durable: they are written to a checkpoint (atomic
// write, versioned, checksummed) before Reserve returns, and carry the DRA
// driver's own record of what it prepared, so one file says both who holds
// a device and how to undo it. Device-plugin reservations live in memory:
// the kubelet's own checkpoint is their durable truth, and gpulet re-learns
// them from the PodResources API after a restart (SyncDevicePlugin).
package ledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// API names the kubelet API a device is held through.
type API string

// The two APIs.
const (
	DevicePlugin API = "device-plugin"
	DRA          API = "dra"
)

// Slices is a span of a GPU's memory slices: what a MIG device occupies.
type Slices struct {
	Start int `json:"start"`
	Size  int `json:"size"`
}

// Resource is a physical piece of a GPU.
type Resource struct {
	// GPU is the UUID of the physical GPU.
	GPU string `json:"gpu"`
	// Slices is nil for the whole GPU, else the MIG slices held.
	Slices *Slices `json:"slices,omitempty"`
	// Device names the device as its API knows it (GPU or MIG UUID, DRA
	// device name), for messages and attribution.
	Device string `json:"device"`
	// Shared marks a holding that others may share through the same API
	// and device (time-sliced replicas, consumable capacity).
	Shared bool `json:"shared,omitempty"`
}

// conflicts reports whether two holdings of r and o through apis ra and ro
// cannot coexist.
func (r Resource) conflicts(ra API, o Resource, ro API) bool {
	if r.GPU != o.GPU {
		return false
	}
	if r.Slices != nil && o.Slices != nil && !overlap(*r.Slices, *o.Slices) {
		return false
	}
	if r.Shared && o.Shared && ra == ro && r.Device == o.Device {
		return false
	}
	return true
}

func overlap(a, b Slices) bool { return a.Start < b.Start+b.Size && b.Start < a.Start+a.Size }

// Record is one holder's reservation.
type Record struct {
	// ID identifies the holder: a DRA claim UID, or a device-plugin device ID.
	ID  string `json:"id"`
	API API    `json:"api"`
	// Namespace and Name say who holds it for people: the claim, or the pod
	// once the kubelet reports it.
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// Pod and Container name the consumer where known.
	Pod       string     `json:"pod,omitempty"`
	Container string     `json:"container,omitempty"`
	Resources []Resource `json:"resources"`
	// Data is the API's own record (what the DRA driver prepared), kept
	// with the reservation so the two cannot disagree after a crash.
	Data json.RawMessage `json:"data,omitempty"`
	Time time.Time       `json:"time"`
}

// ErrConflict is matched with errors.Is by callers that lose a race.
var ErrConflict = errors.New("device already held")

// ConflictError says which device a reservation wanted and who holds it.
type ConflictError struct {
	Wanted Resource
	Holder Record
}

func (e *ConflictError) Error() string {
	who := string(e.Holder.API) + " " + e.Holder.ID
	if e.Holder.Name != "" {
		who = fmt.Sprintf("%s %s/%s", e.Holder.API, e.Holder.Namespace, e.Holder.Name)
	}
	if e.Holder.Pod != "" {
		who += fmt.Sprintf(" (pod %s/%s)", e.Holder.Namespace, e.Holder.Pod)
	}
	return fmt.Sprintf("device %s (GPU %s) is already held through %s", e.Wanted.Device, e.Wanted.GPU, who)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Ledger is safe for concurrent use.
type Ledger struct {
	store *store // nil: nothing is persisted
	now   func() time.Time

	mu      sync.Mutex
	records map[string]Record
	subs    map[chan struct{}]struct{}
}

// Option configures a Ledger.
type Option func(*Ledger)

// WithClock sets the clock records are stamped with.
func WithClock(now func() time.Time) Option { return func(l *Ledger) { l.now = now } }

// Open loads the ledger's checkpoint from path, or starts empty when the
// file does not exist. An empty path keeps everything in memory. A corrupt
// checkpoint is an error wrapping ErrCorrupt that names the file and the
// problem; see Recover.
func Open(path string, opts ...Option) (*Ledger, error) {
	l := &Ledger{now: time.Now, records: make(map[string]Record), subs: make(map[chan struct{}]struct{})}
	for _, o := range opts {
		o(l)
	}
	if path == "" {
		return l, nil
	}
	l.store = &store{path: path}
	records, err := l.store.load()
	if err != nil {
		return nil, err
	}
	for _, r := range records {
		l.records[r.ID] = r
	}
	return l, nil
}

// Reserve records rec, all its resources or none. Reserving again under
// the same ID replaces the holder's record (idempotent when unchanged). A
// resource another holder has is a *ConflictError. DRA records are on disk
// when Reserve returns.
func (l *Ledger) Reserve(rec Record) error {
	if rec.ID == "" {
		return errors.New("reserve: empty holder id")
	}
	if len(rec.Resources) == 0 {
		return fmt.Errorf("reserve %s: no resources", rec.ID)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.checkLocked(rec); err != nil {
		return err
	}
	if rec.Time.IsZero() {
		rec.Time = l.now()
	}
	old, had := l.records[rec.ID]
	l.records[rec.ID] = rec
	if rec.API == DRA || (had && old.API == DRA) {
		if err := l.persistLocked(); err != nil {
			if had {
				l.records[rec.ID] = old
			} else {
				delete(l.records, rec.ID)
			}
			return fmt.Errorf("reserve %s: %w", rec.ID, err)
		}
	}
	l.notifyLocked()
	return nil
}

// checkLocked finds the first holder rec would conflict with.
func (l *Ledger) checkLocked(rec Record) error {
	ids := make([]string, 0, len(l.records))
	for id := range l.records {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, want := range rec.Resources {
		for _, id := range ids {
			if id == rec.ID {
				continue
			}
			other := l.records[id]
			for _, have := range other.Resources {
				if want.conflicts(rec.API, have, other.API) {
					return &ConflictError{Wanted: want, Holder: other}
				}
			}
		}
	}
	return nil
}

// Check reports whether rec could be reserved now, without reserving it.
func (l *Ledger) Check(rec Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.checkLocked(rec)
}

// Update changes a holder's record in place through fn (its Data, its
// names) and persists it. Resources and ID may not change.
func (l *Ledger) Update(id string, fn func(*Record)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	old, ok := l.records[id]
	if !ok {
		return fmt.Errorf("update %s: not reserved", id)
	}
	rec := old
	rec.Resources = append([]Resource(nil), old.Resources...)
	fn(&rec)
	rec.ID, rec.API, rec.Resources = old.ID, old.API, old.Resources
	l.records[id] = rec
	if rec.API == DRA {
		if err := l.persistLocked(); err != nil {
			l.records[id] = old
			return fmt.Errorf("update %s: %w", id, err)
		}
	}
	l.notifyLocked()
	return nil
}

// Release forgets a holder. Releasing an unknown ID succeeds.
func (l *Ledger) Release(id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	old, ok := l.records[id]
	if !ok {
		return nil
	}
	delete(l.records, id)
	if old.API == DRA {
		if err := l.persistLocked(); err != nil {
			l.records[id] = old
			return fmt.Errorf("release %s: %w", id, err)
		}
	}
	l.notifyLocked()
	return nil
}

// Get returns a holder's record.
func (l *Ledger) Get(id string) (Record, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.records[id]
	return r, ok
}

// Records returns every record, sorted by ID.
func (l *Ledger) Records() []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Record, 0, len(l.records))
	for _, r := range l.records {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// SyncDevicePlugin makes the device-plugin records match what the kubelet
// reports in use: inUse maps device-plugin device IDs to their holder (pod
// names filled in). A record of a device the kubelet does not report is
// released once older than grace, which covers the moment between
// Allocate and the kubelet recording the allocation. A device in use that
// has no record (gpulet restarted) is reserved; if that conflicts (a DRA
// claim took it meanwhile) the conflict is returned and the rest applied.
func (l *Ledger) SyncDevicePlugin(inUse map[string]Record, grace time.Duration) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	changed := false
	for id, r := range l.records {
		if r.API != DevicePlugin {
			continue
		}
		if got, ok := inUse[id]; ok {
			if got.Namespace != r.Namespace || got.Pod != r.Pod || got.Container != r.Container {
				r.Namespace, r.Pod, r.Container = got.Namespace, got.Pod, got.Container
				l.records[id] = r
				changed = true
			}
			continue
		}
		if now.Sub(r.Time) >= grace {
			delete(l.records, id)
			changed = true
		}
	}
	var errs []error
	ids := make([]string, 0, len(inUse))
	for id := range inUse {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if _, ok := l.records[id]; ok {
			continue
		}
		rec := inUse[id]
		rec.ID, rec.API = id, DevicePlugin
		if rec.Time.IsZero() {
			rec.Time = now
		}
		if err := l.checkLocked(rec); err != nil {
			errs = append(errs, fmt.Errorf("device-plugin device %s in use by pod %s/%s: %w", id, rec.Namespace, rec.Pod, err))
			continue
		}
		l.records[id] = rec
		changed = true
	}
	if changed {
		l.notifyLocked()
	}
	return errors.Join(errs...)
}

// Subscribe returns a channel that receives a value after every change
// (changes in a burst may coalesce into one) and a function that ends the
// subscription.
func (l *Ledger) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	l.mu.Lock()
	l.subs[ch] = struct{}{}
	l.mu.Unlock()
	return ch, func() {
		l.mu.Lock()
		delete(l.subs, ch)
		l.mu.Unlock()
	}
}

func (l *Ledger) notifyLocked() {
	for ch := range l.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (l *Ledger) persistLocked() error {
	if l.store == nil {
		return nil
	}
	var durable []Record
	for _, r := range l.records {
		if r.API == DRA {
			durable = append(durable, r)
		}
	}
	sort.Slice(durable, func(i, j int) bool { return durable[i].ID < durable[j].ID })
	return l.store.save(durable)
}

// String renders a record for logs: "dra ns/name [GPU-..., MIG-...]".
func (r Record) String() string {
	devs := make([]string, len(r.Resources))
	for i, res := range r.Resources {
		devs[i] = res.Device
	}
	return fmt.Sprintf("%s %s/%s [%s]", r.API, r.Namespace, r.Name, strings.Join(devs, ", "))
}
