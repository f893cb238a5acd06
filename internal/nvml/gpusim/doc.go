// Package gpusim simulates the NVML library of a DGX node (A100, H100,
// H200 or B200; one to eight GPUs) so that gpulet runs, is tested and is
// demonstrated without a GPU. It hands out an nvml.Interface that follows
// NVML's semantics, return codes included, built on go-nvml's mock GPUs
// (mock/gpus: names, memory, MIG profiles and placements) and mock structs,
// whose nil methods it fills in.
//
// A node is described by a State, usually read from a YAML state file
// (Load, Parse; see State for the schema) and changed while gpulet runs
// (Simulator.Apply, Simulator.Watch) to inject faults:
//
//	st, err := gpusim.Load("node.yaml")
//	sim, err := gpusim.New(st)
//	lib := sim.Interface()         // call lib.Init() first, like NVML
//	go sim.Watch(ctx, "node.yaml") // edits take effect at once
//
// What the simulated library does:
//
//   - Identity: deterministic UUIDs (GPU-... from machine, index and
//     nodeSeed; MIG-... from the parent UUID and instance ids), PCI
//     addresses of the real DGX, serials, part numbers, versions.
//   - Topology: PCIe levels (GPU pairs share a switch, GPUs 0-3 and 4-7 a
//     CPU socket), NUMA nodes, and NVLinks wired for go-gpuallocator (see
//     topology.go for how NVSwitch is flattened).
//   - Telemetry from constants or sine/ramp/square patterns at the
//     simulator's clock (WithClock): utilization and its samples, memory,
//     power, energy (power integrated exactly, never decreasing),
//     temperature, clocks.
//   - Health: ECC counts, row remapping (page retirement is
//     ERROR_NOT_SUPPORTED, as on every GPU since A100, unless a state asks
//     for it to exercise older code paths), XID, ECC and MIG
//     events through event sets, a GPU that falls off the bus
//     (ERROR_GPU_IS_LOST everywhere, XID 79) and comes back.
//   - MIG: mode, profiles, placements, GPU and compute instances with
//     NVML's refusals (overlap, instance counts, in use), MIG device
//     handles, lookup of MIG devices by UUID.
//   - Processes per GPU and MIG device, and a fake proc tree of their
//     cgroups (WriteProcTree, WithProcRoot).
//   - A mock driver root that NVIDIA's nvcdi turns into a full CDI spec
//     (MakeDriverRoot, WriteDriverRoot).
//
// Every other NVML call answers ERROR_NOT_SUPPORTED (ERROR_GPU_IS_LOST or
// ERROR_UNINITIALIZED first, where they apply) instead of panicking like a
// bare go-nvml mock. Such calls go through the mock, which records each
// one; the calls above do not. The versioned queries whose go-nvml wrappers
// return handler structs (GetGpuInstanceProfileInfoV, GetGpuFabricInfoV,
// GetTemperatureV, ...) cannot be simulated: their handlers call the C
// library directly. The library's symbol lookup reports them missing, so
// go-nvlib uses the plain calls.
package gpusim
