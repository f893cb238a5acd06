package cdi

import (
	"os"
	"testing"
)

// BenchmarkWriteClaimSpec writes a one-GPU claim's spec, fsync
// included: the CDI work of a DRA Prepare. As root the edits are nvcdi's
// for a simulated DGX H100 (mounts and hooks included); otherwise
// gpulet's minimal ones.
func BenchmarkWriteClaimSpec(b *testing.B) {
	inv := fakeInventory(1)
	opts := Options{DevRoot: b.TempDir()}
	if os.Geteuid() == 0 {
		node := newSimNode(b, "dgx-h100")
		inv = node.inv
		opts = Options{DriverRoot: node.driverRoot, NVML: node.adapter}
	}
	ctx, g := newTestGenerator(b, opts)
	if err := g.Update(ctx, inv); err != nil {
		b.Fatal(err)
	}
	b.Logf("mode %s", g.Mode())
	gpu := inv.GPUs[0]
	devices := []ClaimDevice{{Name: gpu.Name, UUID: gpu.UUID, Env: []string{"GPULET_SHARING=exclusive"}}}
	for b.Loop() {
		if _, err := g.WriteClaimSpec(ctx, testClaimUID, devices); err != nil {
			b.Fatal(err)
		}
	}
}
