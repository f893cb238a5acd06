package gpusim

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
)

// watching starts Watch on path and stops it when the test ends.
func watching(t *testing.T, sim *Simulator, path string) {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sim.Watch(ctx, path) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch: %v", err)
			}
		case <-time.After(2 * time.Second):
			t.Error("Watch did not stop")
		}
	})
}

// eventually polls cond for up to two seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWatchDeliversXIDFromFileEdit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.yaml")
	st, _ := DefaultState(MachineDGXH100)
	if err := WriteState(path, st); err != nil {
		t.Fatal(err)
	}
	loaded, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	sim, lib := startSim(t, loaded)
	set := register(t, lib, nvml.EventTypeXidCriticalError, 2, 5)
	watching(t, sim, path)

	st.Devices[2].XIDs = []XID{{ID: "edit-1", XID: 48}}
	if err := WriteState(path, st); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, lib, set, 2, nvml.EventTypeXidCriticalError, 48)

	// Rewriting the file (with another change) does not redeliver; a
	// plain non-atomic overwrite is seen too.
	st.Devices[5].PowerW = Const(450)
	data := append([]byte(stateHeader), encodeState(st)...)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the power edit", func() bool {
		p, _ := handle(t, lib, 5).GetPowerUsage()
		return p == 450_000
	})
	expectNoEvent(t, set)
}

func TestWatchKeepsLastGoodState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.yaml")
	st := mustParse(t, "machine: dgx-a100\ngpus: 2\ndevices: [{index: 1, powerW: 250}]")
	if err := WriteState(path, st); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var reported []error
	sim, lib := startSim(t, st, WithErrorHandler(func(err error) {
		mu.Lock()
		defer mu.Unlock()
		reported = append(reported, err)
	}))
	watching(t, sim, path)
	d := handle(t, lib, 1)

	broken := "machine: dgx-a100\ngpus: 2\ndevices:\n- index: 1\n  powr: 300\n"
	if err := os.WriteFile(path, []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the broken edit to be reported", func() bool {
		err := sim.LastError()
		return err != nil && strings.Contains(err.Error(), "powr")
	})
	err := sim.LastError()
	for _, want := range []string{path, "devices[0].powr", "unknown field"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	mu.Lock()
	if len(reported) == 0 {
		t.Error("the error handler was not called")
	}
	mu.Unlock()
	if p, r := d.GetPowerUsage(); r != nvml.SUCCESS || p != 250_000 {
		t.Errorf("power %d, %v after a broken edit; want the last good 250 W", p, r)
	}

	// An invalid value is reported with its field; a good edit clears it.
	if err := os.WriteFile(path, []byte("machine: dgx-a100\ngpus: 2\ndevices:\n- index: 1\n  powerW: -5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the invalid edit", func() bool {
		err := sim.LastError()
		return err != nil && strings.Contains(err.Error(), "devices[0].powerW")
	})
	if err := os.WriteFile(path, []byte("machine: dgx-a100\ngpus: 2\ndevices:\n- index: 1\n  powerW: 300\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the fixed edit", func() bool {
		p, _ := d.GetPowerUsage()
		return sim.LastError() == nil && p == 300_000
	})
}

// TestWatchConfigMap: a ConfigMap volume updates by swapping the ..data
// symlink; the state file itself is a symlink through it.
func TestWatchConfigMap(t *testing.T) {
	dir := t.TempDir()
	write := func(version, body string) {
		t.Helper()
		vdir := filepath.Join(dir, version)
		if err := os.Mkdir(vdir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(vdir, "node.yaml"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(version, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	base := "machine: dgx-h200\ngpus: 1\n"
	write("..2026_11_01_1", base)
	path := filepath.Join(dir, "node.yaml")
	if err := os.Symlink("..data/node.yaml", path); err != nil {
		t.Fatal(err)
	}
	st, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	sim, lib := startSim(t, st)
	set := register(t, lib, nvml.EventTypeXidCriticalError, 0)
	watching(t, sim, path)
	write("..2026_11_01_2", base+"devices: [{index: 0, xids: [{id: cm-1, xid: 63}]}]\n")
	expectEvent(t, lib, set, 0, nvml.EventTypeXidCriticalError, 63)
}

func TestWatchMissingDirectory(t *testing.T) {
	sim, _ := startSim(t, mustParse(t, "machine: dgx-h100\ngpus: 1"))
	ctx := klog.NewContext(context.Background(), klog.Background())
	if err := sim.Watch(ctx, filepath.Join(t.TempDir(), "nope", "node.yaml")); err == nil {
		t.Error("Watch of a missing directory succeeded")
	}
}
