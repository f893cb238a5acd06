// Package dra is gpulet's Dynamic Resource Allocation driver for
// resource.k8s.io/v1, built on k8s.io/dynamic-resource-allocation's
// kubeletplugin helper.
//
// It publishes the node's GPUs as one pool of ResourceSlices (through the
// helper's resourceslice controller): every whole GPU; every MIG placement
// (profile × start slice) of a GPU in MIG mode, as a partitionable device
// that consumes the GPU's counters (memory slices one by one, compute
// slices, engines), so the scheduler never allocates a GPU and one of its
// MIG slices, or two overlapping placements, together; and, when
// consumable capacity is on, a shared twin of every GPU that several
// claims allocate at once, each taking part of its memory.
//
// Prepare turns an allocation into CDI devices: it checkpoints the claim
// in the node's ledger (shared with the device plugin, so the two APIs
// never hand out one device twice), creates the MIG device of an allocated
// placement, applies the claim's opaque configuration
// (gpu.gpulet.dev/v1alpha1) and writes a per-claim CDI spec. Unprepare
// undoes it in reverse. Both are idempotent and survive a crash at any
// step (see recover).
//
// Device health goes to the kubelet (WatchHealthStatus) and into device
// taints; devices the device plugin holds are tainted too.
package dra
