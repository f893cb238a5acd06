package gpusim

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strconv"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// device is a simulated physical GPU. The embedded mock answers every
// method this package does not implement with ERROR_NOT_SUPPORTED (or
// ERROR_GPU_IS_LOST / ERROR_UNINITIALIZED when those apply) instead of the
// mock's panic.
type device struct {
	mock.Device
	sim    *Simulator
	index  int
	uuid   string
	serial string
	pci    nvml.PciInfo

	// Guarded by sim.mu.
	cfg        DeviceState
	migEnabled bool
	gis        map[int]*gpuInstance
	energyMJ   float64
	energyAt   time.Time
	energyLast uint64
}

var _ nvml.Device = (*device)(nil)

func newDevice(s *Simulator, index int, seed string) *device {
	m := s.m
	uuid := "GPU-" + deriveUUID("gpusim gpu", m.name, seed, strconv.Itoa(index))
	sum := sha256.Sum256([]byte(uuid))
	d := &device{
		sim:    s,
		index:  index,
		uuid:   uuid,
		serial: fmt.Sprintf("%s%09d", m.serialPrefix, binary.BigEndian.Uint64(sum[:8])%1e9),
		pci:    makePciInfo(m.busIDs[index], m.gpu.PciDeviceId, m.subsystemID),
		gis:    map[int]*gpuInstance{},
	}
	fillStubs(&d.Device, d.stubReturn)
	return d
}

// makePciInfo fills a PciInfo the way NVML does: upper-case hex, an
// eight-digit domain in BusId and a four-digit one in BusIdLegacy.
func makePciInfo(bus, deviceID, subsystemID uint32) nvml.PciInfo {
	p := nvml.PciInfo{Domain: 0, Bus: bus, Device: 0, PciDeviceId: deviceID, PciSubSystemId: subsystemID}
	copyCString(p.BusId[:], fmt.Sprintf("%08X:%02X:00.0", 0, bus))
	copyCString(p.BusIdLegacy[:], fmt.Sprintf("%04X:%02X:00.0", 0, bus))
	return p
}

func copyCString(dst []int8, s string) {
	for i := 0; i < len(s) && i < len(dst)-1; i++ {
		dst[i] = int8(s[i])
	}
}

// ready says whether the GPU answers: NVML initialised and the GPU on the
// bus. Callers hold sim.mu.
func (d *device) ready() nvml.Return {
	if d.sim.initCount == 0 {
		return nvml.ERROR_UNINITIALIZED
	}
	if d.cfg.Lost {
		return nvml.ERROR_GPU_IS_LOST
	}
	return nvml.SUCCESS
}

// stubReturn is what methods this package does not implement return.
func (d *device) stubReturn() nvml.Return {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return r
	}
	return nvml.ERROR_NOT_SUPPORTED
}

// answer runs f under the lock if the GPU is ready.
func answer[T any](d *device, f func() T) (T, nvml.Return) {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		var zero T
		return zero, r
	}
	return f(), nvml.SUCCESS
}

// GetUUID returns the GPU's UUID, derived from machine, index and nodeSeed.
func (d *device) GetUUID() (string, nvml.Return) {
	return answer(d, func() string { return d.uuid })
}

// GetName returns the product name.
func (d *device) GetName() (string, nvml.Return) {
	return answer(d, func() string { return d.sim.m.gpu.Name })
}

// GetBrand returns the brand.
func (d *device) GetBrand() (nvml.BrandType, nvml.Return) {
	return answer(d, func() nvml.BrandType { return d.sim.m.gpu.Brand })
}

// GetArchitecture returns the architecture.
func (d *device) GetArchitecture() (nvml.DeviceArchitecture, nvml.Return) {
	return answer(d, func() nvml.DeviceArchitecture { return d.sim.m.gpu.Architecture })
}

// GetCudaComputeCapability returns the CUDA compute capability.
func (d *device) GetCudaComputeCapability() (int, int, nvml.Return) {
	cc, r := answer(d, func() [2]int { return [2]int{d.sim.m.gpu.CudaMajor, d.sim.m.gpu.CudaMinor} })
	return cc[0], cc[1], r
}

// GetIndex returns the NVML index.
func (d *device) GetIndex() (int, nvml.Return) {
	return answer(d, func() int { return d.index })
}

// GetMinorNumber returns the minor number of /dev/nvidiaN (equal to the
// index, as on a DGX).
func (d *device) GetMinorNumber() (int, nvml.Return) {
	return answer(d, func() int { return d.index })
}

// GetSerial returns the board serial number.
func (d *device) GetSerial() (string, nvml.Return) {
	return answer(d, func() string { return d.serial })
}

// GetBoardPartNumber returns the board part number.
func (d *device) GetBoardPartNumber() (string, nvml.Return) {
	return answer(d, func() string { return d.sim.m.boardPartNumber })
}

// GetVbiosVersion returns the VBIOS version.
func (d *device) GetVbiosVersion() (string, nvml.Return) {
	return answer(d, func() string { return d.sim.m.vbios })
}

// GetBoardId returns a board id unique on the node.
func (d *device) GetBoardId() (uint32, nvml.Return) {
	return answer(d, func() uint32 { return d.pci.Bus << 8 })
}

// GetMultiGpuBoard reports that an SXM module holds one GPU.
func (d *device) GetMultiGpuBoard() (int, nvml.Return) {
	return answer(d, func() int { return 0 })
}

// GetPciInfo returns the PCI identity.
func (d *device) GetPciInfo() (nvml.PciInfo, nvml.Return) {
	return answer(d, func() nvml.PciInfo { return d.pci })
}

// GetCurrPcieLinkGeneration returns the PCIe generation.
func (d *device) GetCurrPcieLinkGeneration() (int, nvml.Return) {
	return answer(d, func() int { return d.sim.m.pcieGen })
}

// GetMaxPcieLinkGeneration returns the PCIe generation.
func (d *device) GetMaxPcieLinkGeneration() (int, nvml.Return) {
	return answer(d, func() int { return d.sim.m.pcieGen })
}

// GetCurrPcieLinkWidth returns the PCIe link width (x16).
func (d *device) GetCurrPcieLinkWidth() (int, nvml.Return) {
	return answer(d, func() int { return 16 })
}

// GetMaxPcieLinkWidth returns the PCIe link width (x16).
func (d *device) GetMaxPcieLinkWidth() (int, nvml.Return) {
	return answer(d, func() int { return 16 })
}

// GetNumaNodeId returns the NUMA node: 0 for GPUs 0-3, 1 for GPUs 4-7.
func (d *device) GetNumaNodeId() (int, nvml.Return) {
	return answer(d, func() int { return d.index / 4 })
}

// GetPersistenceMode reports persistence mode on, as on a DGX.
func (d *device) GetPersistenceMode() (nvml.EnableState, nvml.Return) {
	return answer(d, func() nvml.EnableState { return nvml.FEATURE_ENABLED })
}

// GetComputeMode reports the default compute mode.
func (d *device) GetComputeMode() (nvml.ComputeMode, nvml.Return) {
	return answer(d, func() nvml.ComputeMode { return nvml.COMPUTEMODE_DEFAULT })
}

// GetPerformanceState reports P0.
func (d *device) GetPerformanceState() (nvml.Pstates, nvml.Return) {
	return answer(d, func() nvml.Pstates { return nvml.PSTATE_0 })
}

// GetEccMode reports ECC on (current and pending).
func (d *device) GetEccMode() (nvml.EnableState, nvml.EnableState, nvml.Return) {
	_, r := answer(d, func() bool { return true })
	if r != nvml.SUCCESS {
		return 0, 0, r
	}
	return nvml.FEATURE_ENABLED, nvml.FEATURE_ENABLED, nvml.SUCCESS
}

// IsMigDeviceHandle reports false: this is a physical GPU.
func (d *device) IsMigDeviceHandle() (bool, nvml.Return) {
	return answer(d, func() bool { return false })
}

// GetDeviceHandleFromMigDeviceHandle fails: this is not a MIG device.
func (d *device) GetDeviceHandleFromMigDeviceHandle() (nvml.Device, nvml.Return) {
	if _, r := answer(d, func() bool { return true }); r != nvml.SUCCESS {
		return nil, r
	}
	return nil, nvml.ERROR_INVALID_ARGUMENT
}

// GetGpuInstanceId is not supported on a physical GPU handle.
func (d *device) GetGpuInstanceId() (int, nvml.Return) {
	if _, r := answer(d, func() bool { return true }); r != nvml.SUCCESS {
		return 0, r
	}
	return 0, nvml.ERROR_NOT_SUPPORTED
}

// GetComputeInstanceId is not supported on a physical GPU handle.
func (d *device) GetComputeInstanceId() (int, nvml.Return) {
	if _, r := answer(d, func() bool { return true }); r != nvml.SUCCESS {
		return 0, r
	}
	return 0, nvml.ERROR_NOT_SUPPORTED
}

// GetAttributes returns the whole GPU's attributes: all SMs, the engines
// of the full-GPU MIG profile, all slices and memory.
func (d *device) GetAttributes() (nvml.DeviceAttributes, nvml.Return) {
	return answer(d, func() nvml.DeviceAttributes {
		m := d.sim.m
		full := m.fullProfile()
		return nvml.DeviceAttributes{
			MultiprocessorCount:       m.smCount,
			SharedCopyEngineCount:     full.CopyEngineCount,
			SharedDecoderCount:        full.DecoderCount,
			SharedEncoderCount:        full.EncoderCount,
			SharedJpegCount:           full.JpegCount,
			SharedOfaCount:            full.OfaCount,
			GpuInstanceSliceCount:     full.SliceCount,
			ComputeInstanceSliceCount: full.SliceCount,
			MemorySizeMB:              m.memoryMiB(),
		}
	})
}
