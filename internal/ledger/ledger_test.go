package ledger

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const gpuA, gpuB = "GPU-aaaa", "GPU-bbbb"

func whole(gpu string) Resource { return Resource{GPU: gpu, Device: gpu} }

func mig(gpu string, start, size int) Resource {
	return Resource{GPU: gpu, Slices: &Slices{Start: start, Size: size}, Device: gpu + "-mig"}
}

func shared(gpu string) Resource { return Resource{GPU: gpu, Device: gpu, Shared: true} }

func TestConflicts(t *testing.T) {
	tests := []struct {
		name         string
		first, then  Record
		wantConflict bool
	}{
		{"same GPU twice", Record{ID: "a", API: DRA, Resources: []Resource{whole(gpuA)}}, Record{ID: "b", API: DRA, Resources: []Resource{whole(gpuA)}}, true},
		{"other GPU", Record{ID: "a", API: DRA, Resources: []Resource{whole(gpuA)}}, Record{ID: "b", API: DRA, Resources: []Resource{whole(gpuB)}}, false},
		{"whole GPU vs its MIG slice", Record{ID: "a", API: DevicePlugin, Resources: []Resource{whole(gpuA)}}, Record{ID: "b", API: DRA, Resources: []Resource{mig(gpuA, 3, 1)}}, true},
		{"MIG slice vs whole GPU", Record{ID: "a", API: DRA, Resources: []Resource{mig(gpuA, 3, 1)}}, Record{ID: "b", API: DRA, Resources: []Resource{whole(gpuA)}}, true},
		{"overlapping MIG slices", Record{ID: "a", API: DevicePlugin, Resources: []Resource{mig(gpuA, 0, 4)}}, Record{ID: "b", API: DRA, Resources: []Resource{mig(gpuA, 2, 2)}}, true},
		{"disjoint MIG slices", Record{ID: "a", API: DevicePlugin, Resources: []Resource{mig(gpuA, 0, 4)}}, Record{ID: "b", API: DRA, Resources: []Resource{mig(gpuA, 4, 4)}}, false},
		{"shared, same API", Record{ID: "a", API: DevicePlugin, Resources: []Resource{shared(gpuA)}}, Record{ID: "b", API: DevicePlugin, Resources: []Resource{shared(gpuA)}}, false},
		{"shared across APIs", Record{ID: "a", API: DevicePlugin, Resources: []Resource{shared(gpuA)}}, Record{ID: "b", API: DRA, Resources: []Resource{shared(gpuA)}}, true},
		{"shared vs exclusive", Record{ID: "a", API: DRA, Resources: []Resource{shared(gpuA)}}, Record{ID: "b", API: DRA, Resources: []Resource{whole(gpuA)}}, true},
		{"all or nothing", Record{ID: "a", API: DRA, Resources: []Resource{whole(gpuB)}}, Record{ID: "b", API: DRA, Resources: []Resource{whole(gpuA), whole(gpuB)}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := Open("")
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Reserve(tt.first); err != nil {
				t.Fatalf("first reserve: %v", err)
			}
			err = l.Reserve(tt.then)
			if got := errors.Is(err, ErrConflict); got != tt.wantConflict {
				t.Fatalf("second reserve: err = %v, want conflict %v", err, tt.wantConflict)
			}
			if tt.wantConflict {
				var ce *ConflictError
				if !errors.As(err, &ce) || ce.Holder.ID != tt.first.ID {
					t.Errorf("conflict does not name the holder %q: %v", tt.first.ID, err)
				}
				if _, ok := l.Get(tt.then.ID); ok {
					t.Errorf("losing reservation %q was recorded", tt.then.ID)
				}
			}
		})
	}
}

func TestReserveIsIdempotentAndReleaseOfUnknownSucceeds(t *testing.T) {
	l, _ := Open("")
	rec := Record{ID: "claim-1", API: DRA, Resources: []Resource{whole(gpuA)}}
	for i := 0; i < 3; i++ {
		if err := l.Reserve(rec); err != nil {
			t.Fatalf("reserve #%d: %v", i, err)
		}
	}
	if n := len(l.Records()); n != 1 {
		t.Fatalf("%d records after repeated reserve, want 1", n)
	}
	for i := 0; i < 2; i++ {
		if err := l.Release("claim-1"); err != nil {
			t.Fatalf("release #%d: %v", i, err)
		}
	}
	if err := l.Release("never-seen"); err != nil {
		t.Fatalf("release of unknown: %v", err)
	}
}

func TestCheckpointRoundTripKeepsOnlyDRA(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.json")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	dra := Record{ID: "claim-1", API: DRA, Namespace: "ns", Name: "c", Resources: []Resource{mig(gpuA, 0, 1)}, Data: []byte(`{"cdi":["x"]}`)}
	if err := l.Reserve(dra); err != nil {
		t.Fatal(err)
	}
	if err := l.Reserve(Record{ID: "GPU-bbbb", API: DevicePlugin, Resources: []Resource{whole(gpuB)}}); err != nil {
		t.Fatal(err)
	}
	if err := l.Update("claim-1", func(r *Record) { r.Data = []byte(`{"cdi":["y"]}`); r.Resources = nil }); err != nil {
		t.Fatal(err)
	}
	again, err := Open(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	recs := again.Records()
	if len(recs) != 1 || recs[0].ID != "claim-1" {
		t.Fatalf("after reopen: %v, want only the DRA claim", recs)
	}
	if string(recs[0].Data) != `{"cdi":["y"]}` || len(recs[0].Resources) != 1 {
		t.Errorf("updated record = %+v: want new data and unchanged resources", recs[0])
	}
}

func TestCorruptCheckpoint(t *testing.T) {
	good := func(t *testing.T) []byte {
		path := filepath.Join(t.TempDir(), "l.json")
		l, _ := Open(path)
		if err := l.Reserve(Record{ID: "c", API: DRA, Resources: []Resource{whole(gpuA)}}); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil { // folds the journal into the snapshot
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name    string
		mangle  func([]byte) []byte
		wantMsg string
	}{
		{"empty", func([]byte) []byte { return nil }, "empty"},
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }, "not valid JSON"},
		{"bit flip in records", func(b []byte) []byte { return []byte(strings.Replace(string(b), "GPU-aaaa", "GPU-aaab", 1)) }, "checksum mismatch"},
		{"future version", func(b []byte) []byte { return []byte(strings.Replace(string(b), `"version":2`, `"version":9`, 1)) }, "version 9"},
		{"garbage", func([]byte) []byte { return []byte("\x00\x01garbage") }, "not valid JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ledger.json")
			if err := os.WriteFile(path, tt.mangle(good(t)), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Open(path)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Open = %v: want ErrCorrupt naming %s and %q", err, path, tt.wantMsg)
			}
			aside, err := SetAside(path, time.Unix(0, 0))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(aside); err != nil {
				t.Errorf("set-aside file missing: %v", err)
			}
			if l, err := Open(path); err != nil || len(l.Records()) != 0 {
				t.Errorf("after setting aside: %v, %v: want a fresh, empty ledger", l, err)
			}
		})
	}
}

func TestSyncDevicePlugin(t *testing.T) {
	now := time.Unix(1000, 0)
	l, _ := Open("", WithClock(func() time.Time { return now }))
	mustReserve := func(r Record) {
		t.Helper()
		if err := l.Reserve(r); err != nil {
			t.Fatal(err)
		}
	}
	mustReserve(Record{ID: "GPU-old", API: DevicePlugin, Resources: []Resource{whole("GPU-old")}, Time: now.Add(-time.Minute)})
	mustReserve(Record{ID: "GPU-new", API: DevicePlugin, Resources: []Resource{whole("GPU-new")}})
	mustReserve(Record{ID: "GPU-used", API: DevicePlugin, Resources: []Resource{whole("GPU-used")}, Time: now.Add(-time.Hour)})
	mustReserve(Record{ID: "claim", API: DRA, Resources: []Resource{whole("GPU-dra")}})

	err := l.SyncDevicePlugin(map[string]Record{
		"GPU-used":  {Namespace: "ns", Pod: "p", Container: "c", Resources: []Resource{whole("GPU-used")}},
		"GPU-found": {Namespace: "ns", Pod: "q", Resources: []Resource{whole("GPU-found")}},
		"GPU-dra":   {Namespace: "ns", Pod: "r", Resources: []Resource{whole("GPU-dra")}},
	}, 10*time.Second)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "GPU-dra") {
		t.Errorf("sync error = %v: want the conflict over GPU-dra", err)
	}
	got := map[string]Record{}
	for _, r := range l.Records() {
		got[r.ID] = r
	}
	if _, ok := got["GPU-old"]; ok {
		t.Error("GPU-old: unused past the grace period but kept")
	}
	if _, ok := got["GPU-new"]; !ok {
		t.Error("GPU-new: within the grace period but released")
	}
	if r := got["GPU-used"]; r.Pod != "p" || r.Container != "c" {
		t.Errorf("GPU-used = %+v: want pod names from the kubelet", r)
	}
	if _, ok := got["GPU-found"]; !ok {
		t.Error("GPU-found: in use but not re-learned")
	}
	if r := got["claim"]; r.API != DRA {
		t.Errorf("the DRA claim was touched: %+v", r)
	}
}

func TestConcurrentReserveHasOneWinner(t *testing.T) {
	l, _ := Open(filepath.Join(t.TempDir(), "ledger.json"))
	var wg sync.WaitGroup
	wins := make(chan string, 16)
	for i := 0; i < 16; i++ {
		api := DRA
		if i%2 == 0 {
			api = DevicePlugin
		}
		id := string(rune('a' + i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.Reserve(Record{ID: id, API: api, Resources: []Resource{whole(gpuA)}}); err == nil {
				wins <- id
			} else if !errors.Is(err, ErrConflict) {
				t.Errorf("reserve %s: %v", id, err)
			}
		}()
	}
	wg.Wait()
	close(wins)
	var winners []string
	for w := range wins {
		winners = append(winners, w)
	}
	if len(winners) != 1 {
		t.Fatalf("winners = %v, want exactly one", winners)
	}
}

func TestSubscribeSeesChanges(t *testing.T) {
	l, _ := Open("")
	ch, cancel := l.Subscribe()
	defer cancel()
	if err := l.Reserve(Record{ID: "x", API: DRA, Resources: []Resource{whole(gpuA)}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no change notification after Reserve")
	}
}
