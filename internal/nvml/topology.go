package nvml

import (
	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
)

// readLinks fills in each device's links to the others: NVLinks counted
// per peer, and the nearest common PCIe ancestor. On NVSwitch systems an
// NVLink's remote end is a switch, not a GPU: every GPU with switch links
// reaches every other such GPU, through as many links as the poorer of the
// two has.
func (a *Adapter) readLinks(devices []Device, handles []gonvml.Device) {
	byBusID := make(map[string]int, len(devices))
	for i, d := range devices {
		byBusID[d.PCIBusID] = i
	}
	direct := make([]map[int]int, len(devices))
	switchLinks := make([]int, len(devices))
	for i, h := range handles {
		direct[i] = make(map[int]int)
		for l := 0; l < gonvml.NVLINK_MAX_LINKS; l++ {
			state, ret := h.GetNvLinkState(l)
			if ret != gonvml.SUCCESS {
				// NOT_SUPPORTED / INVALID_ARGUMENT past the last link.
				if ret == gonvml.ERROR_NOT_SUPPORTED || ret == gonvml.ERROR_INVALID_ARGUMENT {
					break
				}
				continue
			}
			if state != gonvml.FEATURE_ENABLED {
				continue
			}
			if t, ret := h.GetNvLinkRemoteDeviceType(l); ret == gonvml.SUCCESS && t == gonvml.NVLINK_DEVICE_TYPE_SWITCH {
				switchLinks[i]++
				continue
			}
			remote, ret := h.GetNvLinkRemotePciInfo(l)
			if ret != gonvml.SUCCESS {
				continue
			}
			if j, ok := byBusID[busID(remote)]; ok && j != i {
				direct[i][j]++
			}
		}
	}
	for i := range devices {
		for j := range devices {
			if i == j {
				continue
			}
			link := Link{PeerUUID: devices[j].UUID, NVLinks: direct[i][j]}
			if switchLinks[i] > 0 && switchLinks[j] > 0 {
				link.NVLinks += min(switchLinks[i], switchLinks[j])
			}
			if level, ret := handles[i].GetTopologyCommonAncestor(handles[j]); ret == gonvml.SUCCESS {
				link.PCIe = pcieKind(level)
			}
			devices[i].Links = append(devices[i].Links, link)
		}
	}
}

func pcieKind(level gonvml.GpuTopologyLevel) LinkKind {
	switch level {
	case gonvml.TOPOLOGY_INTERNAL:
		return PCIeSameBoard
	case gonvml.TOPOLOGY_SINGLE:
		return PCIeSwitch
	case gonvml.TOPOLOGY_MULTIPLE:
		return PCIeMultiSwitch
	case gonvml.TOPOLOGY_HOSTBRIDGE:
		return PCIeHostBridge
	case gonvml.TOPOLOGY_NODE:
		return PCIeNUMANode
	case gonvml.TOPOLOGY_SYSTEM:
		return PCIeSystem
	}
	return ""
}
