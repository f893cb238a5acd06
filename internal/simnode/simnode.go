// Package simnode starts a simulated GPU node for tests: the simulator
// from a state file's text, the real NVML adapter over it, and the
// inventory discovery builds from it, the same path gpulet serve takes.
package simnode

import (
	"testing"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/nvml"
	"github.com/gpulet/gpulet/internal/nvml/gpusim"
)

// Node is a simulated node.
type Node struct {
	Sim       *gpusim.Simulator
	Adapter   *nvml.Adapter
	Inventory *inventory.Inventory
}

// New starts a node from a state file's YAML ("machine: dgx-h100" is
// enough) with the given simulator options. It fails the test on error and
// shuts NVML down when the test ends.
func New(t testing.TB, stateYAML string, opts ...gpusim.Option) *Node {
	t.Helper()
	st, err := gpusim.Parse([]byte(stateYAML), t.Name()+".yaml")
	if err != nil {
		t.Fatalf("simulated node: %v", err)
	}
	sim, err := gpusim.New(st, opts...)
	if err != nil {
		t.Fatalf("simulated node: %v", err)
	}
	a := nvml.New(sim.Interface())
	if err := a.Init(); err != nil {
		t.Fatalf("simulated node: %v", err)
	}
	t.Cleanup(func() { _ = a.Shutdown() })
	n := &Node{Sim: sim, Adapter: a}
	n.Rediscover(t)
	return n
}

// Rediscover rebuilds the inventory (after MIG devices were created, say).
func (n *Node) Rediscover(t testing.TB) *inventory.Inventory {
	t.Helper()
	inv, err := inventory.Discover(n.Adapter)
	if err != nil {
		t.Fatalf("simulated node: %v", err)
	}
	n.Inventory = inv
	return inv
}
