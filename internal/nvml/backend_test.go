package nvml_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/nvml"
)

// TestMockStateFileIsFollowed edits the state file a running mock backend
// wrote, as a person injecting a fault would: the adapter reports the
// change; a broken edit is reported and the last good state stays.
func TestMockStateFileIsFollowed(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	spec, err := nvml.ParseSpec("mock:dgx-h100")
	if err != nil {
		t.Fatal(err)
	}
	b, err := nvml.Open(ctx, nvml.BackendOptions{Spec: spec, MockDir: dir, Watch: true, NodeSeed: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Close() }()
	if b.StateFile != filepath.Join(dir, "dgx-h100.yaml") || b.DriverRoot == "" {
		t.Fatalf("state file %q, driver root %q", b.StateFile, b.DriverRoot)
	}
	devs, err := b.Devices()
	if err != nil || len(devs) != 8 {
		t.Fatalf("%d GPUs, %v", len(devs), err)
	}
	uuid := devs[3].UUID

	write := func(content string) {
		t.Helper()
		// Replace the file the way editors and ConfigMaps do: a new file renamed over it.
		tmp := b.StateFile + ".new"
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, b.StateFile); err != nil {
			t.Fatal(err)
		}
	}
	eventually := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not seen after 10s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	write("machine: dgx-h100\nnodeSeed: node-a\ndevices: [{index: 3, lost: true}]\n")
	eventually("GPU 3 lost", func() bool {
		p, err := b.Probe(uuid)
		return err == nil && p.Lost
	})

	write("machine: dgx-h100\nnodeSeed: node-a\ndevices: [{index: 3, lost: true, powerW: nonsense}]\n")
	eventually("the broken edit reported", func() bool {
		err := b.Sim.LastError()
		return err != nil && strings.Contains(err.Error(), "devices[0].powerW") && strings.Contains(err.Error(), b.StateFile)
	})
	if p, _ := b.Probe(uuid); !p.Lost {
		t.Fatal("a broken edit changed the simulated node")
	}

	write("machine: dgx-h100\nnodeSeed: node-a\n")
	eventually("GPU 3 back", func() bool {
		p, err := b.Probe(uuid)
		return err == nil && !p.Lost
	})
}

// TestRealBackendWithoutDriverIsOneLine checks the message a node without
// the NVIDIA driver gets (this machine has none).
func TestRealBackendWithoutDriverIsOneLine(t *testing.T) {
	if _, err := os.Stat("/dev/nvidiactl"); err == nil {
		t.Skip("this machine has an NVIDIA driver")
	}
	_, err := nvml.Open(context.Background(), nvml.BackendOptions{})
	if err == nil {
		t.Fatal("opened real NVML without a driver")
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, "libnvidia-ml.so.1") || !strings.Contains(msg, "--nvml mock:dgx-h100") {
		t.Errorf("error = %q: want one line naming the library and the mock", msg)
	}
}
