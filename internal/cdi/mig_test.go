package cdi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMIGEditsFromNVCDI checks gpulet's own MIG edits against nvcdi's.
// nvcdi v1.20.1 reads MIG minors from the host's
// /proc/driver/nvidia-caps/mig-minors only, which a machine without an
// NVIDIA driver lacks; a private mount namespace on a locked thread gives
// it the mock driver root's copy.
func TestMIGEditsFromNVCDI(t *testing.T) {
	requireRoot(t)
	node := newSimNode(t, migState)
	ctx, mixed := simGenerator(t, node)
	if err := mixed.Update(ctx, node.inv); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/" + migMinorsFile); err == nil {
		t.Skip("skipping: this host has NVIDIA MIG minors of its own")
	}
	if mixed.Mode() != ModeMixed {
		t.Fatalf("mode %q without host MIG minors, want %q", mixed.Mode(), ModeMixed)
	}

	ctx, g := simGenerator(t, node)
	errs := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		errs <- withHostMigMinors(filepath.Join(node.driverRoot, migMinorsFile), func() error {
			return g.Update(ctx, node.inv)
		})
	}()
	if err := <-errs; err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skipf("skipping: no private mount namespace here: %v", err)
		}
		t.Fatal(err)
	}
	if g.Mode() != ModeNVCDI {
		t.Fatalf("mode %q with host MIG minors, want %q (%s)", g.Mode(), ModeNVCDI, g.Status().Reason)
	}
	for _, mig := range node.inv.GPUs[1].MigDevices {
		fromNVCDI := nodePaths(g.devices[mig.UUID].edits.DeviceNodes)
		own := nodePaths(mixed.devices[mig.UUID].edits.DeviceNodes)
		if !slices.Equal(sorted(fromNVCDI), sorted(own)) {
			t.Errorf("MIG device %s: nvcdi's nodes %v, gpulet's %v", mig.Profile, fromNVCDI, own)
		}
	}
}

func sorted(s []string) []string { return slices.Sorted(slices.Values(s)) }

// withHostMigMinors runs f with the file minors at the host's MIG minors
// path, in a private mount namespace of the calling (locked) thread.
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
	dst := "/" + migMinorsFile
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(dst, data, 0o444); err != nil {
		return err
	}
	return f()
}
