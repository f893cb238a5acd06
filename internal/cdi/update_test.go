package cdi

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/gpulet/gpulet/internal/nvml"
)

// TestEditsComputedOnce checks that nvcdi is asked for a device's edits
// once, when the device appears, never per spec written, and that a MIG
// device created on demand gets its edits on the next Update.
func TestEditsComputedOnce(t *testing.T) {
	requireRoot(t)
	node := newSimNode(t, "machine: dgx-h100\ngpus: 2\ndevices: [{index: 0, migEnabled: true}]")
	lib := &countingFactory{LibFactory: node.adapter}
	ctx, g := newTestGenerator(t, Options{DriverRoot: node.driverRoot, NVML: lib})
	gpu1 := node.inv.GPUs[1]
	for range 3 {
		if err := g.WriteNodeSpec(ctx, node.inv); err != nil {
			t.Fatal(err)
		}
		if _, err := g.WriteClaimSpec(ctx, testClaimUID, []ClaimDevice{{Name: gpu1.Name, UUID: gpu1.UUID}}); err != nil {
			t.Fatal(err)
		}
	}
	if n := lib.deviceQueries.Load(); n != 2 {
		t.Errorf("nvcdi asked %d times for device edits, want 2 (one per GPU)", n)
	}

	parent := node.inv.GPUs[0]
	i := slices.IndexFunc(parent.MIG.Profiles, func(p nvml.MigProfile) bool { return p.Name == "1g.10gb" })
	if i < 0 {
		t.Fatalf("no 1g.10gb profile in %+v", parent.MIG.Profiles)
	}
	prof := parent.MIG.Profiles[i]
	mig, err := node.adapter.CreateMigDevice(parent.UUID, prof.GIProfileID, prof.Placements[0].Start)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.WriteClaimSpec(ctx, testClaimUID, []ClaimDevice{{Name: "mig", UUID: mig.UUID}}); !errors.Is(err, ErrUnknownDevice) {
		t.Errorf("claim of a MIG device before Update: %v, want ErrUnknownDevice", err)
	}
	node.rediscover(t)
	if err := g.Update(ctx, node.inv); err != nil {
		t.Fatal(err)
	}
	if n := lib.deviceQueries.Load(); n != 3 {
		t.Errorf("nvcdi asked %d times for device edits, want 3 (the new MIG device only)", n)
	}
	names, err := g.WriteClaimSpec(ctx, testClaimUID, []ClaimDevice{{Name: "mig", UUID: mig.UUID}})
	if err != nil {
		t.Fatal(err)
	}
	if paths := ociDevicePaths(injected(t, g.opts.Root, names...)); !slices.Contains(paths, "/dev/nvidia0") {
		t.Errorf("MIG device's container nodes %v lack its parent's", paths)
	}

	if err := node.adapter.DestroyMigDevice(parent.UUID, mig.GIID, mig.CIID); err != nil {
		t.Fatal(err)
	}
	node.rediscover(t)
	if err := g.Update(ctx, node.inv); err != nil {
		t.Fatal(err)
	}
	if _, err := g.WriteClaimSpec(ctx, testClaimUID, []ClaimDevice{{Name: "mig", UUID: mig.UUID}}); !errors.Is(err, ErrUnknownDevice) {
		t.Errorf("claim of a destroyed MIG device: %v, want ErrUnknownDevice", err)
	}
	if st := g.Status(); st.Devices != 2 {
		t.Errorf("%d devices with edits after the MIG device went, want 2", st.Devices)
	}
}

// TestEditsRedoneWhenDeviceChanges checks that a device whose minor
// number changed under the same UUID (a driver reload) gets new edits.
func TestEditsRedoneWhenDeviceChanges(t *testing.T) {
	inv := fakeInventory(2)
	ctx, g := newTestGenerator(t, Options{DevRoot: t.TempDir()})
	if err := g.Update(ctx, inv); err != nil {
		t.Fatal(err)
	}
	inv.GPUs[0].Minor = 7
	if err := g.WriteNodeSpec(ctx, inv); err != nil {
		t.Fatal(err)
	}
	spec := readSpec(t, g.NodeSpecPath())
	if got := gpuNodes(nodePaths(spec.Devices[0].ContainerEdits.DeviceNodes)); !slices.Equal(got, []string{"/dev/nvidia7"}) {
		t.Errorf("GPU nodes %v after the minor changed to 7", got)
	}
}

// TestConcurrentWrites runs claim writes and removals beside inventory
// updates and node spec writes, for the race detector.
func TestConcurrentWrites(t *testing.T) {
	inv := fakeInventory(4)
	ctx, g := newTestGenerator(t, Options{DevRoot: t.TempDir()})
	if err := g.Update(ctx, inv); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			uid := fmt.Sprintf("claim-%d", i)
			gpu := inv.GPUs[i]
			for range 20 {
				if _, err := g.WriteClaimSpec(ctx, uid, []ClaimDevice{{Name: gpu.Name, UUID: gpu.UUID}}); err != nil {
					t.Error(err)
					return
				}
				if err := g.RemoveClaimSpec(ctx, uid); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			if err := g.WriteNodeSpec(ctx, inv); err != nil {
				t.Error(err)
				return
			}
			_ = g.Status()
		}
	})
	wg.Wait()
	if uids, err := g.ClaimSpecUIDs(); err != nil || len(uids) > 0 {
		t.Errorf("claim specs left: %v, %v", uids, err)
	}
}
