package gpusim

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi"
	"golang.org/x/sys/unix"
	"tags.cncf.io/container-device-interface/specs-go"
)

// testLogger sends nvcdi's log to the test log.
type testLogger struct{ t *testing.T }

func (l testLogger) Debugf(f string, a ...any)   {}
func (l testLogger) Tracef(f string, a ...any)   {}
func (l testLogger) Infof(f string, a ...any)    { l.t.Logf("nvcdi: "+f, a...) }
func (l testLogger) Warningf(f string, a ...any) { l.t.Logf("nvcdi warning: "+f, a...) }
func (l testLogger) Errorf(f string, a ...any)   { l.t.Logf("nvcdi error: "+f, a...) }

func TestDriverRoot(t *testing.T) {
	st := mustParse(t, "machine: dgx-a100\ngpus: 2\ndriverVersion: 535.161.08")
	dir := t.TempDir()
	for range 2 { // idempotent
		root, err := MakeDriverRoot(dir, st)
		if err != nil {
			t.Fatal(err)
		}
		if root.DriverVersion != "535.161.08" || !slices.Contains(root.DeviceNodes, "/dev/nvidia1") || !slices.Contains(root.DeviceNodes, "/dev/nvidiactl") {
			t.Fatalf("driver root %+v", root)
		}
		if os.Geteuid() == 0 && !root.CharDevices {
			t.Error("running as root but the device nodes are plain files")
		}
	}
	lib := filepath.Join(dir, "usr/lib/x86_64-linux-gnu")
	if runtime.GOARCH == "arm64" {
		lib = filepath.Join(dir, "usr/lib/aarch64-linux-gnu")
	}
	if target, err := os.Readlink(filepath.Join(lib, "libcuda.so.1")); err != nil || target != "libcuda.so.535.161.08" {
		t.Errorf("libcuda.so.1 -> %q, %v", target, err)
	}
	minors, err := os.ReadFile(filepath.Join(dir, "proc/driver/nvidia-caps/mig-minors"))
	if err != nil || !strings.Contains(string(minors), "gpu1/gi14/ci7/access 272\n") {
		t.Errorf("mig-minors: %v\n%.200s", err, minors)
	}
}

func TestNvcdi(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: nvcdi only takes character devices, and creating them (mknod) needs root")
	}
	st := mustParse(t, `
machine: dgx-h100
gpus: 2
devices:
- index: 1
  migEnabled: true
  mig: [{profile: 3g.40gb, start: 4}, {profile: 1g.10gb, start: 0}]
`)
	dir := t.TempDir()
	root, err := MakeDriverRoot(dir, st)
	if err != nil {
		t.Fatal(err)
	}
	if !root.CharDevices {
		t.Fatal("mknod failed as root")
	}
	_, lib := startSim(t, st)
	cdi, err := nvcdi.New(
		nvcdi.WithNvmlLib(lib),
		nvcdi.WithDriverRoot(dir),
		nvcdi.WithDevRoot(dir),
		nvcdi.WithMode(nvcdi.ModeNvml),
		nvcdi.WithLogger(testLogger{t}),
		nvcdi.WithFeatureFlags(nvcdi.FeatureDisableNvsandboxUtils),
	)
	if err != nil {
		t.Fatal(err)
	}
	gpu0, _ := handle(t, lib, 0).GetUUID()
	mig, _ := handle(t, lib, 1).GetMigDeviceHandleByIndex(0) // GPU instance 2 (the 3g.40gb) comes before 7
	migUUID, _ := mig.GetUUID()

	t.Run("common edits", func(t *testing.T) {
		edits, err := cdi.GetCommonEdits()
		if err != nil {
			t.Fatal(err)
		}
		var nodes, mounts, links []string
		for _, n := range edits.DeviceNodes {
			nodes = append(nodes, n.Path)
		}
		for _, m := range edits.Mounts {
			mounts = append(mounts, filepath.Base(m.HostPath))
		}
		for _, h := range edits.Hooks {
			links = append(links, strings.Join(h.Args, " "))
		}
		for _, want := range []string{"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"} {
			if !slices.Contains(nodes, want) {
				t.Errorf("common device nodes %v lack %s", nodes, want)
			}
		}
		for _, want := range []string{"libcuda.so.550.54.15", "libnvidia-ml.so.550.54.15", "libnvidia-ptxjitcompiler.so.550.54.15", "nvidia-smi", "gsp_ga10x.bin"} {
			if !slices.Contains(mounts, want) {
				t.Errorf("common mounts %v lack %s", mounts, want)
			}
		}
		if hooks := strings.Join(links, "\n"); !strings.Contains(hooks, "libcuda.so.1") {
			t.Errorf("no SONAME symlink hook for libcuda in\n%s", hooks)
		}
	})

	t.Run("full GPU", func(t *testing.T) {
		specs, err := cdi.GetDeviceSpecsByID(gpu0)
		if err != nil {
			t.Fatal(err)
		}
		checkNodes(t, specs, dir, "/dev/nvidia0")
	})

	// nvcdi v1.20.1 reads MIG minors from the host's
	// /proc/driver/nvidia-caps/mig-minors, not from the driver root. A
	// private mount namespace on a locked thread gives it one.
	t.Run("MIG device and whole spec", func(t *testing.T) {
		errs := make(chan error, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			errs <- withHostMigMinors(filepath.Join(dir, "proc/driver/nvidia-caps/mig-minors"), func() error {
				specs, err := cdi.GetDeviceSpecsByID(migUUID)
				if err != nil {
					return err
				}
				if err := nodesIn(specs, dir, "/dev/nvidia1", fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", giCapMinor(1, 2)), fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", ciCapMinor(1, 2, 0))); err != nil {
					return err
				}
				spec, err := cdi.GetSpec()
				if err != nil {
					return err
				}
				var names []string
				for _, d := range spec.Raw().Devices {
					names = append(names, d.Name)
				}
				// GPU 0 and GPU 1's two MIG devices (GPU 1 itself is in MIG mode).
				if !slices.Equal(names, []string{"0", "1:0", "1:1"}) {
					return fmt.Errorf("spec devices %v", names)
				}
				return nil
			})
		}()
		if err := <-errs; err != nil {
			if strings.Contains(err.Error(), "operation not permitted") {
				t.Skipf("skipping: no private mount namespace here: %v", err)
			}
			t.Fatal(err)
		}
	})
}

// withHostMigMinors runs f with the file minors at
// /proc/driver/nvidia-caps/mig-minors, in a private mount namespace of the
// calling (locked) thread.
func withHostMigMinors(minors string, f func() error) error {
	data, err := os.ReadFile(minors)
	if err != nil {
		return err
	}
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := unix.Mount("tmpfs", "/proc/driver", "tmpfs", 0, ""); err != nil {
		return fmt.Errorf("mount tmpfs on /proc/driver: %w", err)
	}
	if err := os.MkdirAll("/proc/driver/nvidia-caps", 0o755); err != nil {
		return err
	}
	if err := os.WriteFile("/proc/driver/nvidia-caps/mig-minors", data, 0o444); err != nil {
		return err
	}
	return f()
}

func checkNodes(t *testing.T, specs []specs.Device, root string, want ...string) {
	t.Helper()
	if err := nodesIn(specs, root, want...); err != nil {
		t.Error(err)
	}
}

// nodesIn checks that every spec has the wanted device nodes, with host
// paths under the driver root.
func nodesIn(devs []specs.Device, root string, want ...string) error {
	if len(devs) == 0 {
		return fmt.Errorf("no device specs")
	}
	for _, d := range devs {
		var got []string
		for _, n := range d.ContainerEdits.DeviceNodes {
			got = append(got, n.Path)
			if n.HostPath != filepath.Join(root, n.Path) {
				return fmt.Errorf("device %s: node %s comes from %s, not the driver root", d.Name, n.Path, n.HostPath)
			}
		}
		for _, w := range want {
			if !slices.Contains(got, w) {
				return fmt.Errorf("device %s: nodes %v lack %s", d.Name, got, w)
			}
		}
	}
	return nil
}
