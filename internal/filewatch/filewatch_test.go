package filewatch

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestWatchSeesEveryWayAFileIsReplaced covers a plain write, an editor's
// rename-write and a ConfigMap's symlink swap, and a burst settling into
// one call.
func TestWatchSeesEveryWayAFileIsReplaced(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	calls := make(chan struct{}, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, path, 20*time.Millisecond, func() {
			data, _ := os.ReadFile(path)
			mu.Lock()
			seen = append(seen, string(data))
			mu.Unlock()
			calls <- struct{}{}
		})
	}()
	wait := func(want string) {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case <-calls:
				mu.Lock()
				last := seen[len(seen)-1]
				mu.Unlock()
				if last == want {
					return
				}
			case <-timeout:
				t.Fatalf("never saw %q (saw %v)", want, seen)
			}
		}
	}
	wait("0") // the first call, once watching

	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	wait("1")

	tmp := filepath.Join(dir, ".f.tmp")
	if err := os.WriteFile(tmp, []byte("2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	wait("2")

	// ConfigMap style: f -> ..data/f, ..data -> ts1, swapped to ts2.
	for i, ts := range []string{"ts1", "ts2"} {
		if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, ts, "f"), []byte(ts), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(ts, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join("..data", "f"), path); err != nil {
				t.Fatal(err)
			}
		}
		wait(ts)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watch: %v", err)
	}
}

func TestWatchOfAMissingDirectoryIsAnError(t *testing.T) {
	err := Watch(context.Background(), "/nonexistent/dir/f", time.Millisecond, func() {})
	if err == nil {
		t.Fatal("want an error")
	}
}
