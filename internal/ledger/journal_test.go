package ledger

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// reopen opens the ledger at path again, as a restarted gpulet does, and
// fails the test on an error.
func reopen(t *testing.T, path string) *Ledger {
	t.Helper()
	l, err := Open(path)
	if err != nil {
		t.Fatalf("reopen %s: %v", path, err)
	}
	return l
}

func ids(l *Ledger) []string {
	var out []string
	for _, r := range l.Records() {
		out = append(out, r.ID)
	}
	return out
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestJournalReplay covers a gpulet that stops without closing its
// ledger (a crash): the next Open replays the journal over the snapshot
// and folds it in.
func TestJournalReplay(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "ledger.json")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []Record{
		{ID: "a", API: DRA, Resources: []Resource{whole(gpuA)}},
		{ID: "b", API: DRA, Resources: []Resource{whole(gpuB)}, Data: []byte(`{"v":1}`)},
		{ID: "dp", API: DevicePlugin, Resources: []Resource{mig("GPU-cccc", 0, 1)}},
	} {
		if err := l.Reserve(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Release("a"); err != nil {
		t.Fatal(err)
	}
	if err := l.Update("b", func(r *Record) { r.Data = []byte(`{"v":2}`) }); err != nil {
		t.Fatal(err)
	}
	if fileSize(t, path+JournalSuffix) == 0 {
		t.Fatal("the changes are not in the journal")
	}

	again := reopen(t, path)
	if got := ids(again); len(got) != 1 || got[0] != "b" {
		t.Fatalf("after replay: %v, want [b] (a released, the device-plugin record not durable)", got)
	}
	if r, _ := again.Get("b"); string(r.Data) != `{"v":2}` {
		t.Errorf("b's data after replay = %s, want the update", r.Data)
	}
	if n := fileSize(t, path+JournalSuffix); n != 0 {
		t.Errorf("journal holds %d bytes after Open, want it folded into the snapshot", n)
	}
	if got := ids(reopen(t, path)); len(got) != 1 || got[0] != "b" {
		t.Errorf("from the snapshot alone: %v, want [b]", got)
	}
}

// TestJournalCutShort: a crash in the middle of an append leaves a line
// without its end. That change was never acknowledged: it is dropped and
// the rest is kept.
func TestJournalCutShort(t *testing.T) {
	for name, tail := range map[string]string{
		"half a line":    `1234abcd {"seq":9,"put":{"id":"x"`,
		"zeros":          "\x00\x00\x00\x00\x00\x00\x00\x00",
		"bad last lines": "deadbeef {\"seq\":9}\n\x00\x00\x00",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ledger.json")
			l, _ := Open(path)
			if err := l.Reserve(Record{ID: "a", API: DRA, Resources: []Resource{whole(gpuA)}}); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(path+JournalSuffix, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString(tail); err != nil {
				t.Fatal(err)
			}
			_ = f.Close()
			if got := ids(reopen(t, path)); len(got) != 1 || got[0] != "a" {
				t.Errorf("records %v, want [a]", got)
			}
		})
	}
}

// TestCorruptJournal: a bad line with sound lines after it is not a cut
// short append but damage, reported with the file and the line.
func TestCorruptJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.json")
	l, _ := Open(path)
	for _, id := range []string{"a", "b", "c"} {
		if err := l.Reserve(Record{ID: id, API: DRA, Resources: []Resource{whole("GPU-" + id)}}); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(path + JournalSuffix)
	if err != nil {
		t.Fatal(err)
	}
	data = bytes.Replace(data, []byte("GPU-a"), []byte("GPU-z"), 1)
	if err := os.WriteFile(path+JournalSuffix, data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Open(path)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path+JournalSuffix) || !strings.Contains(err.Error(), "line 1: checksum mismatch") {
		t.Fatalf("Open = %v: want ErrCorrupt naming the journal and line 1", err)
	}
	aside, err := SetAside(path, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(aside + JournalSuffix); err != nil {
		t.Errorf("journal not set aside beside the snapshot: %v", err)
	}
	if got := ids(reopen(t, path)); len(got) != 0 {
		t.Errorf("after setting aside: %v, want a fresh ledger", got)
	}
}

// TestReadsVersion1 reads a snapshot written before the journal existed.
func TestReadsVersion1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.json")
	records := `[{"id":"c","api":"dra","resources":[{"gpu":"GPU-aaaa","device":"gpu-0"}],"time":"2026-01-01T00:00:00Z"}]`
	v1 := `{"version":1,"checksum":"` + checksum(0, []byte(records), false) + `","records":` + records + `}`
	if err := os.WriteFile(path, []byte(v1), 0o600); err != nil {
		t.Fatal(err)
	}
	l := reopen(t, path)
	if got := ids(l); len(got) != 1 || got[0] != "c" {
		t.Fatalf("records %v, want [c]", got)
	}
	if data, _ := os.ReadFile(path); !bytes.Contains(data, []byte(`"version":2`)) {
		t.Errorf("snapshot not rewritten in the current format: %s", data)
	}
}

// TestGroupCommit: changes that arrive while a sync runs share the next
// one, and each caller returns only once its own change is on disk.
func TestGroupCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.json")
	const n = 8
	release := make(chan struct{})
	first := true
	var l *Ledger
	var err error
	l, err = Open(path, withBeforeSync(func() {
		if first { // hold the first sync until every other change is queued
			first = false
			<-release
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			errs <- l.Reserve(Record{ID: string(rune('a' + i)), API: DRA, Resources: []Resource{whole("GPU-" + string(rune('a'+i)))}})
		})
	}
	for { // every change applied (and counted against others) before its sync
		l.mu.Lock()
		queued := len(l.records)
		l.mu.Unlock()
		if queued == n {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if l.store.syncs != 2 {
		t.Errorf("%d syncs for %d changes, want 2 (the first alone, the other %d together)", l.store.syncs, n, n-1)
	}
	if got := ids(reopen(t, path)); len(got) != n {
		t.Errorf("after reopen: %v, want all %d", got, n)
	}
}

// TestFailedSyncUndoes: a change whose sync fails is reported and undone;
// a release that fails keeps the devices held; the next change rewrites
// the snapshot and succeeds.
func TestFailedSyncUndoes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.json")
	l, _ := Open(path)
	if err := l.Reserve(Record{ID: "kept", API: DRA, Resources: []Resource{whole(gpuB)}}); err != nil {
		t.Fatal(err)
	}
	breakJournal := func() { _ = l.store.journal.Close() } // the next write fails

	breakJournal()
	err := l.Reserve(Record{ID: "lost", API: DRA, Resources: []Resource{whole(gpuA)}})
	if err == nil || !strings.Contains(err.Error(), "reserve lost") || !strings.Contains(err.Error(), path+JournalSuffix) {
		t.Fatalf("Reserve with a failing journal = %v: want an error naming the holder and the journal", err)
	}
	if _, ok := l.Get("lost"); ok {
		t.Error("a reservation that is not on disk is still held")
	}
	if err := l.Check(Record{ID: "other", API: DevicePlugin, Resources: []Resource{whole(gpuA)}}); err != nil {
		t.Errorf("the GPU of the failed reservation is not free: %v", err)
	}

	// The failed append broke the journal: this one rewrites the snapshot.
	if err := l.Reserve(Record{ID: "next", API: DRA, Resources: []Resource{whole(gpuA)}}); err != nil {
		t.Fatalf("Reserve after the failure: %v", err)
	}
	breakJournal()
	if err := l.Release("kept"); err == nil {
		t.Fatal("Release with a failing journal succeeded")
	}
	if err := l.Check(Record{ID: "other", API: DevicePlugin, Resources: []Resource{whole(gpuB)}}); !errors.Is(err, ErrConflict) {
		t.Errorf("after a failed release the GPU is free (%v): it must stay held", err)
	}
	if got := ids(reopen(t, path)); len(got) != 2 || got[0] != "kept" || got[1] != "next" {
		t.Errorf("on disk: %v, want [kept next]", got)
	}
}

// TestJournalCompacts: a journal past its size is folded into the
// snapshot by the next commit, so it never grows without bound.
func TestJournalCompacts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.json")
	l, _ := Open(path)
	data := []byte(`"` + strings.Repeat("x", 16<<10) + `"`)
	const pairs = 2 * compactAfter / (16 << 10) // twice the limit in all
	for range pairs {
		if err := l.Reserve(Record{ID: "big", API: DRA, Resources: []Resource{whole(gpuA)}, Data: data}); err != nil {
			t.Fatal(err)
		}
		if n := fileSize(t, path+JournalSuffix); n > compactAfter+32<<10 {
			t.Fatalf("journal holds %d bytes, past its limit of %d", n, compactAfter)
		}
		if err := l.Release("big"); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Reserve(Record{ID: "last", API: DRA, Resources: []Resource{whole(gpuB)}}); err != nil {
		t.Fatal(err)
	}
	_, seq, err := l.store.loadSnapshot()
	if err != nil || seq == 0 {
		t.Errorf("snapshot at seq %d (%v): it was never rewritten", seq, err)
	}
	if got := ids(reopen(t, path)); len(got) != 1 || got[0] != "last" {
		t.Errorf("after reopen: %v, want [last]", got)
	}
}
