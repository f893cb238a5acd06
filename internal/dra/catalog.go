package dra

import (
	"fmt"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/ledger"
)

// Kind says what a published device is. It is also the value of the
// device's "type" attribute, except for shared GPUs, which are of type
// "gpu" and tell themselves apart by allowMultipleAllocations.
type Kind string

// The kinds of device the driver publishes.
const (
	// KindGPU is a whole GPU, allocated to one claim at a time.
	KindGPU Kind = "gpu"
	// KindMIG is a MIG placement (a profile at a start slice): the MIG
	// device is created when a claim for it is prepared.
	KindMIG Kind = "mig"
	// KindShared is a whole GPU that several claims share, each consuming
	// part of its memory capacity (consumable capacity), time-sliced.
	KindShared Kind = "shared"
)

// sharedSuffix names a GPU's shared twin: "<gpu>-shared".
const sharedSuffix = "-shared"

// device is one device the driver publishes and can prepare.
type device struct {
	name string
	kind Kind
	gpu  *inventory.GPU
	// placement is set for KindMIG.
	placement *inventory.MigPlacement
}

// resource is what holding the device takes from the ledger's point of
// view: the whole GPU, or the memory slices of a MIG placement.
func (d *device) resource() ledger.Resource {
	r := ledger.Resource{GPU: d.gpu.UUID, Device: d.name}
	switch d.kind {
	case KindMIG:
		r.Slices = &ledger.Slices{Start: d.placement.Placement.Start, Size: d.placement.Placement.Size}
	case KindShared:
		r.Shared = true
	}
	return r
}

// catalog is every device the driver publishes for an inventory, in
// publication order, and which GPUs carry a counter set. It is pure data,
// rebuilt when the inventory or the options change.
type catalog struct {
	inv     *inventory.Inventory
	devices []*device
	byName  map[string]*device
	// partitioned holds the UUIDs of GPUs published as more than one
	// device (MIG placements, a shared twin): those get a counter set, and
	// each of their devices consumes from it.
	partitioned map[string]bool
}

// newCatalog lists the devices of inv: every GPU; its shared twin when
// consumable capacity is on; every MIG placement of a GPU in MIG mode.
func newCatalog(inv *inventory.Inventory, consumableCapacity bool) *catalog {
	c := &catalog{inv: inv, byName: map[string]*device{}, partitioned: map[string]bool{}}
	add := func(d *device) {
		c.devices = append(c.devices, d)
		c.byName[d.name] = d
	}
	for i := range inv.GPUs {
		g := &inv.GPUs[i]
		add(&device{name: g.Name, kind: KindGPU, gpu: g})
	}
	if consumableCapacity {
		for i := range inv.GPUs {
			g := &inv.GPUs[i]
			add(&device{name: g.Name + sharedSuffix, kind: KindShared, gpu: g})
			c.partitioned[g.UUID] = true
		}
	}
	for i := range inv.GPUs {
		g := &inv.GPUs[i]
		for _, p := range g.Placements() {
			add(&device{name: p.Name, kind: KindMIG, gpu: g, placement: &p})
			c.partitioned[g.UUID] = true
		}
	}
	return c
}

// lookup finds a device by its published name.
func (c *catalog) lookup(name string) (*device, error) {
	d, ok := c.byName[name]
	if !ok {
		return nil, fmt.Errorf("device %q is not one this node publishes", name)
	}
	return d, nil
}
