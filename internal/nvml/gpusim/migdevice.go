package gpusim

import (
	"strconv"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// migDevice is the device handle of a MIG device (a GPU instance and one
// of its compute instances), what nvidia-smi lists as a MIG device.
// Methods it does not implement return ERROR_NOT_SUPPORTED.
type migDevice struct {
	mock.Device
	ci   *computeInstance
	uuid string
	name string
}

var _ nvml.Device = (*migDevice)(nil)

func newMigDevice(ci *computeInstance) *migDevice {
	d := ci.gi.dev
	m := d.sim.m
	h := &migDevice{
		ci:   ci,
		uuid: "MIG-" + deriveUUID("gpusim mig", d.uuid, strconv.Itoa(ci.gi.id), strconv.Itoa(ci.id)),
		name: m.gpu.Name + " MIG " + m.migDeviceName(ci.gi.profile, ci.profile),
	}
	fillStubs(&h.Device, func() nvml.Return {
		defer d.sim.lock()()
		if r := h.ready(); r != nvml.SUCCESS {
			return r
		}
		return nvml.ERROR_NOT_SUPPORTED
	})
	return h
}

// ready says whether the MIG device answers: NVML initialised, the parent
// GPU on the bus and the compute instance still there (the handle of a
// destroyed one is invalid). Callers hold sim.mu.
func (h *migDevice) ready() nvml.Return {
	if r := h.ci.gi.dev.ready(); r != nvml.SUCCESS {
		return r
	}
	if h.ci.destroyed {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	return nvml.SUCCESS
}

func migAnswer[T any](h *migDevice, f func() T) (T, nvml.Return) {
	defer h.ci.gi.dev.sim.lock()()
	if r := h.ready(); r != nvml.SUCCESS {
		var zero T
		return zero, r
	}
	return f(), nvml.SUCCESS
}

// GetUUID returns the MIG device's UUID, derived from the parent's UUID
// and the instance ids.
func (h *migDevice) GetUUID() (string, nvml.Return) {
	return migAnswer(h, func() string { return h.uuid })
}

// GetName returns e.g. "NVIDIA H100 80GB HBM3 MIG 1g.10gb".
func (h *migDevice) GetName() (string, nvml.Return) {
	return migAnswer(h, func() string { return h.name })
}

// IsMigDeviceHandle reports true.
func (h *migDevice) IsMigDeviceHandle() (bool, nvml.Return) {
	return migAnswer(h, func() bool { return true })
}

// GetDeviceHandleFromMigDeviceHandle returns the parent GPU.
func (h *migDevice) GetDeviceHandleFromMigDeviceHandle() (nvml.Device, nvml.Return) {
	return migAnswer(h, func() nvml.Device { return h.ci.gi.dev })
}

// GetGpuInstanceId returns the GPU-instance id.
func (h *migDevice) GetGpuInstanceId() (int, nvml.Return) {
	return migAnswer(h, func() int { return h.ci.gi.id })
}

// GetComputeInstanceId returns the compute-instance id.
func (h *migDevice) GetComputeInstanceId() (int, nvml.Return) {
	return migAnswer(h, func() int { return h.ci.id })
}

// GetIndex returns the MIG device's index under its parent, the one
// GetMigDeviceHandleByIndex takes.
func (h *migDevice) GetIndex() (int, nvml.Return) {
	return migAnswer(h, func() int {
		for i, ci := range h.ci.gi.dev.migDevicesLocked() {
			if ci == h.ci {
				return i
			}
		}
		return -1
	})
}

// GetArchitecture returns the parent's architecture.
func (h *migDevice) GetArchitecture() (nvml.DeviceArchitecture, nvml.Return) {
	return migAnswer(h, func() nvml.DeviceArchitecture { return h.ci.gi.dev.sim.m.gpu.Architecture })
}

// GetBrand returns the parent's brand.
func (h *migDevice) GetBrand() (nvml.BrandType, nvml.Return) {
	return migAnswer(h, func() nvml.BrandType { return h.ci.gi.dev.sim.m.gpu.Brand })
}

// GetCudaComputeCapability returns the parent's compute capability.
func (h *migDevice) GetCudaComputeCapability() (int, int, nvml.Return) {
	cc, r := migAnswer(h, func() [2]int {
		g := h.ci.gi.dev.sim.m.gpu
		return [2]int{g.CudaMajor, g.CudaMinor}
	})
	return cc[0], cc[1], r
}

// GetPciInfo returns the parent's PCI identity.
func (h *migDevice) GetPciInfo() (nvml.PciInfo, nvml.Return) {
	return migAnswer(h, func() nvml.PciInfo { return h.ci.gi.dev.pci })
}

// GetAttributes returns the MIG device's size: its compute instance's SMs,
// its GPU instance's engines, slices and memory.
func (h *migDevice) GetAttributes() (nvml.DeviceAttributes, nvml.Return) {
	return migAnswer(h, func() nvml.DeviceAttributes {
		gi, ci := h.ci.gi.profile, h.ci.profile
		return nvml.DeviceAttributes{
			MultiprocessorCount:       ci.MultiprocessorCount,
			SharedCopyEngineCount:     gi.CopyEngineCount,
			SharedDecoderCount:        gi.DecoderCount,
			SharedEncoderCount:        gi.EncoderCount,
			SharedJpegCount:           gi.JpegCount,
			SharedOfaCount:            gi.OfaCount,
			GpuInstanceSliceCount:     gi.SliceCount,
			ComputeInstanceSliceCount: ci.SliceCount,
			MemorySizeMB:              gi.MemorySizeMB,
		}
	})
}

// usedMiB sums the memory of the processes in this MIG device's GPU
// instance (its compute instances share the memory). Callers hold sim.mu.
func (h *migDevice) usedMiB() uint64 {
	var sum uint64
	for _, p := range h.ci.gi.dev.cfg.Processes {
		if ptrOr(p.GPUInstance, noInstance) == uint32(h.ci.gi.id) {
			sum += p.UsedMemoryMiB
		}
	}
	return min(sum, h.ci.gi.profile.MemorySizeMB)
}

// GetMemoryInfo returns the GPU instance's memory.
func (h *migDevice) GetMemoryInfo() (nvml.Memory, nvml.Return) {
	return migAnswer(h, func() nvml.Memory {
		total := h.ci.gi.profile.MemorySizeMB << 20
		used := h.usedMiB() << 20
		return nvml.Memory{Total: total, Used: used, Free: total - used}
	})
}

// GetMemoryInfo_v2 returns the GPU instance's memory.
func (h *migDevice) GetMemoryInfo_v2() (nvml.Memory_v2, nvml.Return) {
	return migAnswer(h, func() nvml.Memory_v2 {
		total := h.ci.gi.profile.MemorySizeMB << 20
		used := h.usedMiB() << 20
		return nvml.Memory_v2{Version: nvml.STRUCT_VERSION(nvml.Memory_v2{}, 2), Total: total, Used: used, Free: total - used}
	})
}

// GetComputeRunningProcesses lists the compute processes on this MIG
// device.
func (h *migDevice) GetComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	return migAnswer(h, func() []nvml.ProcessInfo { return h.ci.gi.dev.processInfos(ProcessCompute, h.ci) })
}

// GetGraphicsRunningProcesses lists the graphics processes on this MIG
// device.
func (h *migDevice) GetGraphicsRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	return migAnswer(h, func() []nvml.ProcessInfo { return h.ci.gi.dev.processInfos(ProcessGraphics, h.ci) })
}
