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
// DRA reservations are durable: they are in the checkpoint (a versioned,
// checksummed snapshot and a journal of changes since, see store.go)
// before Reserve returns, and carry the DRA
// driver's own record of what it prepared, so one file says both who holds
// a device and how to undo it. Device-plugin reservations live in memory:
// the kubelet's own checkpoint is their durable truth, and gpulet re-learns
// them from the PodResources API after a restart (SyncDevicePlugin).
package ledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
//
// Durable changes (those of DRA records) are group-committed: a change is
// applied and queued under mu, and the caller then waits for a sync that
// covers it; one caller at a time (holding commitMu) writes and syncs
// everything queued. Until its sync, a reservation already counts against
// others (they may see a conflict that a failed sync then undoes) and a
// release still holds its devices, so nothing is ever granted on the
// strength of a change that might not reach the disk.
type Ledger struct {
	store *store // nil: nothing is persisted
	now   func() time.Time

	mu      sync.Mutex
	records map[string]Record // what checks see: committed, plus queued reservations
	seq     uint64            // the last sequence number given out
	queue   []*pending        // durable changes not yet committed, in order
	pending map[string]*pending
	subs    map[chan struct{}]struct{}

	// commitMu is held by the caller that writes and syncs a batch; the
	// store and committed are only touched under it.
	commitMu     sync.Mutex
	committed    map[string]Record // the DRA records on disk
	committedSeq uint64            // the last change on disk
}

// Option configures a Ledger.
type Option func(*Ledger)

// WithClock sets the clock records are stamped with.
func WithClock(now func() time.Time) Option { return func(l *Ledger) { l.now = now } }

// withBeforeSync runs fn before each journal append (tests).
func withBeforeSync(fn func()) Option { return func(l *Ledger) { l.store.beforeSync = fn } }

// Open loads the ledger's checkpoint from path (its snapshot and journal),
// or starts empty when there is none. An empty path keeps everything in
// memory. A corrupt checkpoint is an error wrapping ErrCorrupt that names
// the file and the problem; see SetAside. A journal is folded into the
// snapshot before Open returns.
func Open(path string, opts ...Option) (*Ledger, error) {
	l := &Ledger{
		now:       time.Now,
		records:   make(map[string]Record),
		pending:   make(map[string]*pending),
		subs:      make(map[chan struct{}]struct{}),
		committed: make(map[string]Record),
	}
	if path != "" {
		l.store = &store{path: path}
	}
	for _, o := range opts {
		o(l)
	}
	if l.store == nil {
		return l, nil
	}
	records, seq, err := l.store.load()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("open checkpoint %s: %w", path, err)
	}
	// Start every run with an empty journal: folding it in here means a
	// corrupt or cut-short tail is read once, and the snapshot is current.
	if _, err := os.Stat(l.store.journalPath()); err == nil || len(records) > 0 {
		if err := l.store.compact(records, seq); err != nil {
			return nil, err
		}
	} else if err := l.store.openJournal(); err != nil {
		return nil, err
	}
	for id, r := range records {
		l.records[id] = r
		l.committed[id] = r
	}
	l.seq, l.committedSeq = seq, seq
	return l, nil
}

// Close folds the journal into the snapshot and closes it. The ledger
// must not be changed after.
func (l *Ledger) Close() error {
	if l.store == nil {
		return nil
	}
	l.commitMu.Lock()
	defer l.commitMu.Unlock()
	var err error
	if l.store.journalSize > 0 || l.store.broken {
		err = l.store.compact(l.committed, l.committedSeq)
	}
	return errors.Join(err, l.store.close())
}

// Reserve records rec, all its resources or none. Reserving again under
// the same ID replaces the holder's record (idempotent when unchanged). A
// resource another holder has is a *ConflictError. DRA records are on disk
// when Reserve returns.
func (l *Ledger) Reserve(rec Record) error {
	commit, err := l.ReserveAsync(rec)
	if err != nil {
		return err
	}
	return commit()
}

// ReserveAsync is Reserve in two steps. When it returns, rec holds its
// resources against every other reservation; commit then waits until rec
// is on disk, and undoes the reservation if that fails. A caller that
// queues reservations under a lock of its own and commits outside it lets
// concurrent reservations share one sync.
func (l *Ledger) ReserveAsync(rec Record) (commit func() error, err error) {
	if rec.ID == "" {
		return nil, errors.New("reserve: empty holder id")
	}
	if len(rec.Resources) == 0 {
		return nil, fmt.Errorf("reserve %s: no resources", rec.ID)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.settleLocked(rec.ID)
	if err := l.checkLocked(rec); err != nil {
		return nil, err
	}
	if rec.Time.IsZero() {
		rec.Time = l.now()
	}
	old, had := l.records[rec.ID]
	l.records[rec.ID] = rec
	var p *pending
	switch {
	case rec.API == DRA:
		p, err = l.queueLocked(change{Put: &rec}, old, had)
	case had && old.API == DRA:
		p, err = l.queueLocked(change{Delete: rec.ID}, old, had)
	}
	if err != nil {
		l.restoreLocked(rec.ID, old, had)
		return nil, fmt.Errorf("reserve %s: %w", rec.ID, err)
	}
	l.notifyLocked()
	return func() error {
		if err := l.wait(p); err != nil {
			return fmt.Errorf("reserve %s: %w", rec.ID, err)
		}
		return nil
	}, nil
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
	l.settleLocked(id)
	old, ok := l.records[id]
	if !ok {
		l.mu.Unlock()
		return fmt.Errorf("update %s: not reserved", id)
	}
	rec := old
	rec.Resources = append([]Resource(nil), old.Resources...)
	fn(&rec)
	rec.ID, rec.API, rec.Resources = old.ID, old.API, old.Resources
	l.records[id] = rec
	var p *pending
	var err error
	if rec.API == DRA {
		if p, err = l.queueLocked(change{Put: &rec}, old, true); err != nil {
			l.records[id] = old
		}
	}
	l.notifyLocked()
	l.mu.Unlock()
	if err == nil {
		err = l.wait(p)
	}
	if err != nil {
		return fmt.Errorf("update %s: %w", id, err)
	}
	return nil
}

// Release forgets a holder. Releasing an unknown ID succeeds. A DRA
// holder's devices stay held until the release is on disk.
func (l *Ledger) Release(id string) error {
	l.mu.Lock()
	l.settleLocked(id)
	old, ok := l.records[id]
	if !ok {
		l.mu.Unlock()
		return nil
	}
	if old.API != DRA {
		delete(l.records, id)
		l.notifyLocked()
		l.mu.Unlock()
		return nil
	}
	if l.store == nil {
		delete(l.records, id)
		l.notifyLocked()
		l.mu.Unlock()
		return nil
	}
	p, err := l.queueLocked(change{Delete: id}, old, true)
	l.mu.Unlock()
	if err == nil {
		err = l.wait(p)
	}
	if err != nil {
		return fmt.Errorf("release %s: %w", id, err)
	}
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
	sortRecords(out)
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

func sortRecords(rs []Record) {
	sort.Slice(rs, func(i, j int) bool { return rs[i].ID < rs[j].ID })
}

// String renders a record for logs: "dra ns/name [GPU-..., MIG-...]".
func (r Record) String() string {
	devs := make([]string, len(r.Resources))
	for i, res := range r.Resources {
		devs[i] = res.Device
	}
	return fmt.Sprintf("%s %s/%s [%s]", r.API, r.Namespace, r.Name, strings.Join(devs, ", "))
}
