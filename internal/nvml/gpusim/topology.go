package gpusim

import (
	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// How the simulated NVLinks are wired.
//
// NVML on an NVSwitch system reports every NVLink's remote end as a switch
// (GetNvLinkRemoteDeviceType: SWITCH, GetNvLinkRemotePciInfo: the switch's
// PCI address). go-gpuallocator v0.6.0 only counts links whose remote PCI
// address is another GPU, so on real DGX nodes it sees no NVLinks at all.
// To let topology-aware allocation be exercised, the nvswitch topology
// flattens the switch fabric: each GPU's links are dealt out evenly to its
// peers (with 8 H100s: 2 of its 18 links to each of the 7 others) and
// report that peer as a GPU; the links left over (4 here) report the
// NVSwitch as their remote end, type SWITCH. Each link is self-consistent
// (type and remote PCI info agree) and every pair is symmetric, so readers
// that count per-peer GPU links and readers that count switch links both
// see all GPUs connected. The islands topology deals each GPU's links out
// to the three others of its island (6 each on H100) and leaves none over.

type linkKind int

const (
	linkNone linkKind = iota
	linkGPU
	linkSwitch
)

type linkEnd struct {
	kind linkKind
	peer int // GPU index for linkGPU
	sw   int // switch number for linkSwitch
}

// linkLocked says where NVLink l of GPU i goes. Callers hold s.mu.
func (s *Simulator) linkLocked(i, l int) linkEnd {
	topo := s.state.topology()
	if topo == TopologyPCIe {
		return linkEnd{kind: linkNone}
	}
	var peers []int
	for j := range s.devices {
		if j == i || (topo == TopologyIslands && j/4 != i/4) {
			continue
		}
		peers = append(peers, j)
	}
	if n := len(peers); n > 0 {
		k := s.m.nvLinks / n
		if l < k*n {
			return linkEnd{kind: linkGPU, peer: peers[l%n]}
		}
		l -= k * n
	}
	if topo == TopologyNVSwitch && len(s.m.switchBusIDs) > 0 {
		return linkEnd{kind: linkSwitch, sw: l % len(s.m.switchBusIDs)}
	}
	return linkEnd{kind: linkNone}
}

// nvLink checks a link number and returns where the link goes.
func (d *device) nvLink(l int) (linkEnd, nvml.Return) {
	if r := d.ready(); r != nvml.SUCCESS {
		return linkEnd{}, r
	}
	if d.sim.state.topology() == TopologyPCIe {
		return linkEnd{}, nvml.ERROR_NOT_SUPPORTED
	}
	if l < 0 || l >= d.sim.m.nvLinks {
		return linkEnd{}, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.sim.linkLocked(d.index, l), nvml.SUCCESS
}

// GetNvLinkState reports whether NVLink l is up. Without NVLink (pcie
// topology) it returns ERROR_NOT_SUPPORTED, past the last link
// ERROR_INVALID_ARGUMENT, as NVML does.
func (d *device) GetNvLinkState(l int) (nvml.EnableState, nvml.Return) {
	defer d.sim.lock()()
	end, r := d.nvLink(l)
	if r != nvml.SUCCESS {
		return nvml.FEATURE_DISABLED, r
	}
	if end.kind == linkNone {
		return nvml.FEATURE_DISABLED, nvml.SUCCESS
	}
	return nvml.FEATURE_ENABLED, nvml.SUCCESS
}

// GetNvLinkVersion returns the NVLink generation of link l.
func (d *device) GetNvLinkVersion(l int) (uint32, nvml.Return) {
	defer d.sim.lock()()
	if _, r := d.nvLink(l); r != nvml.SUCCESS {
		return 0, r
	}
	return d.sim.m.nvLinkVersion, nvml.SUCCESS
}

// GetNvLinkRemotePciInfo returns the PCI identity of link l's far end: a
// peer GPU or an NVSwitch.
func (d *device) GetNvLinkRemotePciInfo(l int) (nvml.PciInfo, nvml.Return) {
	defer d.sim.lock()()
	end, r := d.nvLink(l)
	if r != nvml.SUCCESS {
		return nvml.PciInfo{}, r
	}
	switch end.kind {
	case linkGPU:
		return d.sim.devices[end.peer].pci, nvml.SUCCESS
	case linkSwitch:
		m := d.sim.m
		return makePciInfo(m.switchBusIDs[end.sw], m.switchDeviceID, m.switchDeviceID), nvml.SUCCESS
	}
	return nvml.PciInfo{}, nvml.ERROR_NOT_SUPPORTED
}

// GetNvLinkRemoteDeviceType returns what link l's far end is.
func (d *device) GetNvLinkRemoteDeviceType(l int) (nvml.IntNvLinkDeviceType, nvml.Return) {
	defer d.sim.lock()()
	end, r := d.nvLink(l)
	if r != nvml.SUCCESS {
		return nvml.NVLINK_DEVICE_TYPE_UNKNOWN, r
	}
	switch end.kind {
	case linkGPU:
		return nvml.NVLINK_DEVICE_TYPE_GPU, nvml.SUCCESS
	case linkSwitch:
		return nvml.NVLINK_DEVICE_TYPE_SWITCH, nvml.SUCCESS
	}
	return nvml.NVLINK_DEVICE_TYPE_UNKNOWN, nvml.ERROR_NOT_SUPPORTED
}

// resolvePeer finds the GPU behind another handle of this simulator,
// whether the handle itself or a wrapper that embeds it (go-nvlib's and
// go-gpuallocator's devices do). Call it without holding sim.mu.
func (d *device) resolvePeer(other nvml.Device) (*device, nvml.Return) {
	if o, ok := other.(*device); ok && o.sim == d.sim {
		return o, nvml.SUCCESS
	}
	if other == nil {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	uuid, r := other.GetUUID()
	if r != nvml.SUCCESS {
		return nil, r
	}
	for _, o := range d.sim.devices { // fixed at New; uuid is immutable
		if o.uuid == uuid {
			return o, nvml.SUCCESS
		}
	}
	return nil, nvml.ERROR_INVALID_ARGUMENT
}

// peerReady checks that a resolved peer answers. Callers hold sim.mu.
func peerReady(o *device) nvml.Return {
	if o.cfg.Lost {
		return nvml.ERROR_GPU_IS_LOST
	}
	return nvml.SUCCESS
}

// pcieLevel is the PCIe common ancestor of GPUs i and j: GPUs 2k and 2k+1
// share a PCIe switch, GPUs 0-3 sit on CPU socket (NUMA node) 0 and 4-7 on
// socket 1.
func pcieLevel(i, j int) nvml.GpuTopologyLevel {
	switch {
	case i == j:
		return nvml.TOPOLOGY_INTERNAL
	case i/2 == j/2:
		return nvml.TOPOLOGY_SINGLE
	case i/4 == j/4:
		return nvml.TOPOLOGY_NODE
	}
	return nvml.TOPOLOGY_SYSTEM
}

// GetTopologyCommonAncestor returns the PCIe path between two GPUs.
func (d *device) GetTopologyCommonAncestor(other nvml.Device) (nvml.GpuTopologyLevel, nvml.Return) {
	o, r := d.resolvePeer(other)
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return 0, r
	}
	if r != nvml.SUCCESS {
		return 0, r
	}
	if r := peerReady(o); r != nvml.SUCCESS {
		return 0, r
	}
	return pcieLevel(d.index, o.index), nvml.SUCCESS
}

// GetTopologyNearestGpus returns the other GPUs reachable at or below a
// PCIe topology level.
func (d *device) GetTopologyNearestGpus(level nvml.GpuTopologyLevel) ([]nvml.Device, nvml.Return) {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return nil, r
	}
	var out []nvml.Device
	for _, o := range d.sim.devices {
		if o != d && pcieLevel(d.index, o.index) <= level {
			out = append(out, o)
		}
	}
	return out, nvml.SUCCESS
}

// GetP2PStatus reports peer-to-peer capability between two GPUs: NVLink
// P2P only where an NVLink joins them, everything else over PCIe.
func (d *device) GetP2PStatus(other nvml.Device, idx nvml.GpuP2PCapsIndex) (nvml.GpuP2PStatus, nvml.Return) {
	o, r := d.resolvePeer(other)
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return nvml.P2P_STATUS_UNKNOWN, r
	}
	if r != nvml.SUCCESS {
		return nvml.P2P_STATUS_UNKNOWN, r
	}
	if r := peerReady(o); r != nvml.SUCCESS {
		return nvml.P2P_STATUS_UNKNOWN, r
	}
	if idx != nvml.P2P_CAPS_INDEX_NVLINK {
		return nvml.P2P_STATUS_OK, nvml.SUCCESS
	}
	if d.sim.state.topology() == TopologyNVSwitch {
		return nvml.P2P_STATUS_OK, nvml.SUCCESS
	}
	for l := range d.sim.m.nvLinks {
		if end := d.sim.linkLocked(d.index, l); end.kind == linkGPU && end.peer == o.index {
			return nvml.P2P_STATUS_OK, nvml.SUCCESS
		}
	}
	return nvml.P2P_STATUS_NOT_SUPPORTED, nvml.SUCCESS
}
