package gpusim

import (
	"fmt"
	"slices"
	"sort"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
)

// Machine names accepted in a state file's machine field.
const (
	MachineDGXA100 = "dgx-a100"
	MachineDGXH100 = "dgx-h100"
	MachineDGXH200 = "dgx-h200"
	MachineDGXB200 = "dgx-b200"
)

// Topology names accepted in a state file's topology field.
const (
	// TopologyNVSwitch: every GPU reaches every other through NVSwitch
	// (the default; how every DGX is built).
	TopologyNVSwitch = "nvswitch"
	// TopologyIslands: two NVLink islands, GPUs 0-3 and 4-7, fully
	// connected inside an island and not at all across.
	TopologyIslands = "islands"
	// TopologyPCIe: no NVLink at all.
	TopologyPCIe = "pcie"
)

// maxGPUs is the most GPUs a simulated node has (a DGX has eight).
const maxGPUs = 8

// nvidiaMajor is the character device major of /dev/nvidia* nodes.
const nvidiaMajor = 195

// supportedEvents are the event types every simulated GPU (Ampere and
// later, ECC on) can deliver. NVML reports the same set on such hardware;
// PState events are accepted but never fire.
const supportedEvents uint64 = nvml.EventTypeSingleBitEccError | nvml.EventTypeDoubleBitEccError |
	nvml.EventTypePState | nvml.EventTypeXidCriticalError | nvml.EventMigConfigChange

// machine is one simulated DGX model: the GPU as go-nvml's mock describes
// it (name, memory, MIG profiles and placements) plus what the mock lacks.
// Board part numbers, serial prefixes, VBIOS versions and subsystem ids are
// plausible, not authoritative.
type machine struct {
	name string
	gpu  gpus.Config

	driverVersion string
	nvmlVersion   string
	cudaDriver    int // e.g. 12040 for CUDA 12.4

	// busIDs are the PCI bus numbers of GPUs 0..7 (domain 0, device 0,
	// function 0), as on the real DGX.
	busIDs [maxGPUs]uint32
	// switchBusIDs are the PCI bus numbers of the NVSwitch chips.
	switchBusIDs    []uint32
	switchDeviceID  uint32
	nvLinks         int // NVLinks per GPU
	nvLinkVersion   uint32
	pcieGen         int
	subsystemID     uint32
	boardPartNumber string
	serialPrefix    string
	vbios           string
	smCount         uint32

	powerLimitW    float64
	idlePowerW     float64
	idleTempC      float64
	maxSMClockMHz  float64
	maxMemClockMHz float64
	videoClockMHz  float64
	reservedMiB    uint64
}

// machines is the catalog, keyed by name. The A100 node uses the 80 GB
// A100-SXM4 (go-nvml's 40 GB mock is named "Mock NVIDIA ...", a name no real
// GPU reports). Driver versions follow go-nvml's dgx* mock servers, except
// the B200 one: Blackwell needs an R570 driver (CUDA 12.8), not the mock's
// 560.
var machines = map[string]*machine{
	MachineDGXA100: {
		name:            MachineDGXA100,
		gpu:             withHardwareMIGLayout(gpus.A100_SXM4_80GB),
		driverVersion:   "550.54.15",
		nvmlVersion:     "12.550.54.15",
		cudaDriver:      12040,
		busIDs:          [maxGPUs]uint32{0x07, 0x0F, 0x47, 0x4E, 0x87, 0x90, 0xB7, 0xBD},
		switchBusIDs:    []uint32{0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9},
		switchDeviceID:  0x1AF110DE,
		nvLinks:         12,
		nvLinkVersion:   3,
		pcieGen:         4,
		subsystemID:     0x147F10DE,
		boardPartNumber: "692-2G506-0212-002",
		serialPrefix:    "1654",
		vbios:           "92.00.36.00.02",
		smCount:         108,
		powerLimitW:     400,
		idlePowerW:      60,
		idleTempC:       31,
		maxSMClockMHz:   1410,
		maxMemClockMHz:  1593,
		videoClockMHz:   1275,
		reservedMiB:     512,
	},
	MachineDGXH100: {
		name:            MachineDGXH100,
		gpu:             withHardwareMIGLayout(gpus.H100_SXM5_80GB),
		driverVersion:   "550.54.15",
		nvmlVersion:     "12.550.54.15",
		cudaDriver:      12040,
		busIDs:          [maxGPUs]uint32{0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB},
		switchBusIDs:    []uint32{0x05, 0x06, 0x07, 0x08},
		switchDeviceID:  0x22A310DE,
		nvLinks:         18,
		nvLinkVersion:   4,
		pcieGen:         5,
		subsystemID:     0x16C110DE,
		boardPartNumber: "692-2G520-0200-000",
		serialPrefix:    "1652",
		vbios:           "96.00.74.00.01",
		smCount:         132,
		powerLimitW:     700,
		idlePowerW:      70,
		idleTempC:       30,
		maxSMClockMHz:   1980,
		maxMemClockMHz:  2619,
		videoClockMHz:   1545,
		reservedMiB:     512,
	},
	MachineDGXH200: {
		name:            MachineDGXH200,
		gpu:             withHardwareMIGLayout(gpus.H200_SXM5_141GB),
		driverVersion:   "550.54.15",
		nvmlVersion:     "12.550.54.15",
		cudaDriver:      12040,
		busIDs:          [maxGPUs]uint32{0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB},
		switchBusIDs:    []uint32{0x05, 0x06, 0x07, 0x08},
		switchDeviceID:  0x22A310DE,
		nvLinks:         18,
		nvLinkVersion:   4,
		pcieGen:         5,
		subsystemID:     0x18AD10DE,
		boardPartNumber: "692-2G520-0280-000",
		serialPrefix:    "1655",
		vbios:           "96.00.9F.00.01",
		smCount:         132,
		powerLimitW:     700,
		idlePowerW:      75,
		idleTempC:       30,
		maxSMClockMHz:   1980,
		maxMemClockMHz:  3201,
		videoClockMHz:   1545,
		reservedMiB:     512,
	},
	MachineDGXB200: {
		name:            MachineDGXB200,
		gpu:             withHardwareMIGLayout(gpus.B200_SXM5_180GB),
		driverVersion:   "570.124.06",
		nvmlVersion:     "12.570.124.06",
		cudaDriver:      12080,
		busIDs:          [maxGPUs]uint32{0x1B, 0x43, 0x52, 0x61, 0x9D, 0xC3, 0xD1, 0xDF},
		switchBusIDs:    []uint32{0x05, 0x06},
		switchDeviceID:  0x290110DE,
		nvLinks:         18,
		nvLinkVersion:   5,
		pcieGen:         5,
		subsystemID:     0x199910DE,
		boardPartNumber: "692-2G525-0220-000",
		serialPrefix:    "1657",
		vbios:           "97.00.4B.00.01",
		smCount:         148,
		powerLimitW:     1000,
		idlePowerW:      140,
		idleTempC:       32,
		maxSMClockMHz:   1965,
		maxMemClockMHz:  3996,
		videoClockMHz:   1650,
		reservedMiB:     512,
	},
}

// memorySlices is how many of a GPU's eight memory slices a GPU-instance
// profile spans on real A100/H100/H200/B200 hardware: a 3g instance takes
// half the memory (4 slices), a 1g.20gb two.
var memorySlices = map[int]uint32{
	nvml.GPU_INSTANCE_PROFILE_1_SLICE:      1,
	nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1: 1,
	nvml.GPU_INSTANCE_PROFILE_1_SLICE_REV2: 2,
	nvml.GPU_INSTANCE_PROFILE_2_SLICE:      2,
	nvml.GPU_INSTANCE_PROFILE_3_SLICE:      4,
	nvml.GPU_INSTANCE_PROFILE_4_SLICE:      4,
	nvml.GPU_INSTANCE_PROFILE_7_SLICE:      8,
}

// withHardwareMIGLayout returns cfg with GPU-instance placements and memory
// sizes as real GPUs report them. go-nvml's mocks size placements in
// compute slices (a 3g instance at start 4 spanning 3) where NVML sizes
// them in memory slices (4), so two instances the hardware refuses would
// both fit; and they give round nominal memory (18 GB for an H200
// 1g.18gb), which go-nvlib's naming, the one NVIDIA's device plugin uses,
// rounds up to the next eighth of the GPU and misnames (1g.35gb). Here a
// profile gets its share of the framebuffer by memory slices, less about
// 4% the driver keeps. The maps are copied: the mock's are shared globals.
func withHardwareMIGLayout(cfg gpus.Config) gpus.Config {
	const slices, usable = 8, 0.96
	profiles := make(map[int]nvml.GpuInstanceProfileInfo, len(cfg.MIGProfiles.GpuInstanceProfiles))
	placements := make(map[int][]nvml.GpuInstancePlacement, len(cfg.MIGProfiles.GpuInstancePlacements))
	for id, p := range cfg.MIGProfiles.GpuInstanceProfiles {
		size, ok := memorySlices[id]
		if !ok {
			profiles[id], placements[id] = p, cfg.MIGProfiles.GpuInstancePlacements[id]
			continue
		}
		var pls []nvml.GpuInstancePlacement
		for start := uint32(0); start+size <= slices; start += size {
			if size == 1 && start == slices-1 {
				break // the eighth memory slice only ever joins a larger instance
			}
			pls = append(pls, nvml.GpuInstancePlacement{Start: start, Size: size})
		}
		if id == nvml.GPU_INSTANCE_PROFILE_3_SLICE || id == nvml.GPU_INSTANCE_PROFILE_4_SLICE {
			pls = pls[:min(len(pls), int(p.InstanceCount))]
		}
		placements[id] = pls
		p.MemorySizeMB = uint64(float64(cfg.MemoryMB)*float64(size)/slices*usable) &^ 255 // whole 256 MiB pages
		profiles[id] = p
	}
	cfg.MIGProfiles.GpuInstanceProfiles = profiles
	cfg.MIGProfiles.GpuInstancePlacements = placements
	return cfg
}

// Machines lists the machine names a state file may use, sorted.
func Machines() []string {
	names := make([]string, 0, len(machines))
	for n := range machines {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func lookupMachine(name string) (*machine, error) {
	m, ok := machines[name]
	if !ok {
		return nil, fmt.Errorf("unknown machine %q (known: %v)", name, Machines())
	}
	return m, nil
}

// memoryBytes is the GPU's total framebuffer.
func (m *machine) memoryBytes() uint64 { return m.gpu.MemoryMB << 20 }

// memoryMiB is the GPU's total framebuffer in MiB.
func (m *machine) memoryMiB() uint64 { return m.gpu.MemoryMB }

// maxMigDevices is what GetMaxMigDeviceCount reports with MIG on: one MIG
// device per compute slice at most.
func (m *machine) maxMigDevices() int {
	n := 0
	for _, p := range m.gpu.MIGProfiles.GpuInstanceProfiles {
		n = max(n, int(p.SliceCount))
	}
	return n
}

// fullProfile is the GPU-instance profile that spans the whole GPU.
func (m *machine) fullProfile() nvml.GpuInstanceProfileInfo {
	var best nvml.GpuInstanceProfileInfo
	for _, p := range m.gpu.MIGProfiles.GpuInstanceProfiles {
		if p.SliceCount > best.SliceCount {
			best = p
		}
	}
	return best
}

// giProfileIDs lists the machine's GPU-instance profile ids, sorted.
func (m *machine) giProfileIDs() []int {
	ids := make([]int, 0, len(m.gpu.MIGProfiles.GpuInstanceProfiles))
	for id := range m.gpu.MIGProfiles.GpuInstanceProfiles {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// ciProfileIDs lists the compute-instance profile ids a GPU instance of
// profile gi offers, sorted.
func (m *machine) ciProfileIDs(gi int) []int {
	cis := m.gpu.MIGProfiles.ComputeInstanceProfiles[gi]
	ids := make([]int, 0, len(cis))
	for id := range cis {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// ciPlacements returns the placements of compute-instance profile ci in a
// GPU instance of profile gi. go-nvml's A100 mock lists none; for it they
// are derived the way the hardware places them: starts aligned to the
// compute instance's size rounded up to a power of two (a 3-slice compute
// instance starts at slice 0 or 4), within the GPU instance, at most the
// profile's instance count.
func (m *machine) ciPlacements(gi, ci int) []nvml.ComputeInstancePlacement {
	if pls := m.gpu.MIGProfiles.ComputeInstancePlacements[gi][ci]; len(pls) > 0 {
		return pls
	}
	giInfo, ok := m.gpu.MIGProfiles.GpuInstanceProfiles[gi]
	ciInfo, ok2 := m.gpu.MIGProfiles.ComputeInstanceProfiles[gi][ci]
	if !ok || !ok2 || ciInfo.SliceCount == 0 {
		return nil
	}
	align := uint32(1)
	for align < ciInfo.SliceCount {
		align *= 2
	}
	var pls []nvml.ComputeInstancePlacement
	for start := uint32(0); start+ciInfo.SliceCount <= giInfo.SliceCount && uint32(len(pls)) < ciInfo.InstanceCount; start += align {
		pls = append(pls, nvml.ComputeInstancePlacement{Start: start, Size: ciInfo.SliceCount})
	}
	return pls
}
