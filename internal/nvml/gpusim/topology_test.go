package gpusim

import (
	"fmt"
	"slices"
	"testing"

	"github.com/NVIDIA/go-gpuallocator/gpuallocator"
	nvdevice "github.com/NVIDIA/go-nvlib/pkg/nvlib/device"
	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

func TestPCIeTopology(t *testing.T) {
	_, lib := startSim(t, mustParse(t, "machine: dgx-h100"))
	tests := []struct {
		a, b int
		want nvml.GpuTopologyLevel
	}{
		{0, 0, nvml.TOPOLOGY_INTERNAL},
		{0, 1, nvml.TOPOLOGY_SINGLE},
		{6, 7, nvml.TOPOLOGY_SINGLE},
		{1, 2, nvml.TOPOLOGY_NODE},
		{4, 7, nvml.TOPOLOGY_NODE},
		{3, 4, nvml.TOPOLOGY_SYSTEM},
		{0, 7, nvml.TOPOLOGY_SYSTEM},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d-%d", tc.a, tc.b), func(t *testing.T) {
			got, r := handle(t, lib, tc.a).GetTopologyCommonAncestor(handle(t, lib, tc.b))
			if r != nvml.SUCCESS || got != tc.want {
				t.Errorf("GetTopologyCommonAncestor = %v, %v; want %v", got, r, tc.want)
			}
		})
	}
	if numa, _ := handle(t, lib, 5).GetNumaNodeId(); numa != 1 {
		t.Errorf("GPU 5 NUMA node %d, want 1", numa)
	}
	near, _ := handle(t, lib, 2).GetTopologyNearestGpus(nvml.TOPOLOGY_SINGLE)
	if len(near) != 1 || near[0] != handle(t, lib, 3) {
		t.Errorf("GPUs nearest GPU 2: %v", near)
	}
}

// nvlinkMap counts, for every GPU, its NVLinks per peer GPU and to switches.
func nvlinkMap(t *testing.T, lib nvml.Interface) (peers []map[int]int, switches []int) {
	t.Helper()
	n, _ := lib.DeviceGetCount()
	byBus := map[string]int{}
	for i := range n {
		p, _ := handle(t, lib, i).GetPciInfo()
		byBus[busID(p)] = i
	}
	for i := range n {
		d := handle(t, lib, i)
		peers = append(peers, map[int]int{})
		switches = append(switches, 0)
		for l := range nvml.NVLINK_MAX_LINKS {
			state, r := d.GetNvLinkState(l)
			if r == nvml.ERROR_INVALID_ARGUMENT || r == nvml.ERROR_NOT_SUPPORTED {
				break
			}
			if state != nvml.FEATURE_ENABLED {
				continue
			}
			remote, _ := d.GetNvLinkRemotePciInfo(l)
			typ, _ := d.GetNvLinkRemoteDeviceType(l)
			j, isGPU := byBus[busID(remote)]
			if isGPU != (typ == nvml.NVLINK_DEVICE_TYPE_GPU) {
				t.Fatalf("GPU %d link %d: remote %s but type %v", i, l, busID(remote), typ)
			}
			if isGPU {
				peers[i][j]++
			} else {
				switches[i]++
			}
		}
	}
	return peers, switches
}

func TestNVLinks(t *testing.T) {
	tests := []struct {
		machine, topology string
		gpus              int
		perPeer           int // links between two connected GPUs
		connected         func(a, b int) bool
		switchLinks       int
	}{
		{machine: "dgx-h100", topology: "nvswitch", gpus: 8, perPeer: 2, connected: func(a, b int) bool { return true }, switchLinks: 4},
		{machine: "dgx-a100", topology: "nvswitch", gpus: 8, perPeer: 1, connected: func(a, b int) bool { return true }, switchLinks: 5},
		{machine: "dgx-b200", topology: "nvswitch", gpus: 2, perPeer: 18, connected: func(a, b int) bool { return true }},
		{machine: "dgx-h200", topology: "islands", gpus: 8, perPeer: 6, connected: func(a, b int) bool { return a/4 == b/4 }},
		{machine: "dgx-a100", topology: "islands", gpus: 8, perPeer: 4, connected: func(a, b int) bool { return a/4 == b/4 }},
		{machine: "dgx-h100", topology: "pcie", gpus: 8, connected: func(a, b int) bool { return false }},
	}
	for _, tc := range tests {
		t.Run(tc.machine+"/"+tc.topology, func(t *testing.T) {
			_, lib := startSim(t, mustParse(t, fmt.Sprintf("machine: %s\ngpus: %d\ntopology: %s", tc.machine, tc.gpus, tc.topology)))
			peers, switches := nvlinkMap(t, lib)
			for a := range tc.gpus {
				if switches[a] != tc.switchLinks {
					t.Errorf("GPU %d: %d switch links, want %d", a, switches[a], tc.switchLinks)
				}
				for b := range tc.gpus {
					want := 0
					if a != b && tc.connected(a, b) {
						want = tc.perPeer
					}
					if peers[a][b] != want {
						t.Errorf("GPU %d -> %d: %d NVLinks, want %d", a, b, peers[a][b], want)
					}
				}
			}
		})
	}
}

func TestGoNvlibDevices(t *testing.T) {
	_, lib := startSim(t, mustParse(t, "machine: dgx-b200\ngpus: 4\ndevices: [{index: 2, migEnabled: true, mig: [{profile: 2g.45gb}, {profile: 1g.23gb}]}]"))
	devs, err := nvdevice.New(lib).GetDevices()
	if err != nil || len(devs) != 4 {
		t.Fatalf("GetDevices = %d devices, %v", len(devs), err)
	}
	for i, d := range devs {
		mig, err := d.IsMigEnabled()
		if err != nil || mig != (i == 2) {
			t.Errorf("GPU %d IsMigEnabled = %v, %v", i, mig, err)
		}
		if bus, err := d.GetPCIBusID(); err != nil || len(bus) != 12 {
			t.Errorf("GPU %d bus id %q, %v", i, bus, err)
		}
		if fabric, err := d.IsFabricAttached(); err != nil || fabric {
			t.Errorf("GPU %d IsFabricAttached = %v, %v", i, fabric, err)
		}
		if _, err := d.IsCoherent(); err != nil {
			t.Errorf("GPU %d IsCoherent: %v", i, err)
		}
	}
	migs, err := devs[2].GetMigDevices()
	if err != nil || len(migs) != 2 {
		t.Fatalf("GetMigDevices = %d, %v", len(migs), err)
	}
	profiles, err := devs[2].GetMigProfiles()
	if err != nil || len(profiles) == 0 {
		t.Errorf("GetMigProfiles = %v, %v", profiles, err)
	}
}

// TestGPUAllocatorBestEffort: go-gpuallocator's NVLink-aware policy keeps
// allocations inside an NVLink island.
func TestGPUAllocatorBestEffort(t *testing.T) {
	island := func(ids []int) bool {
		for _, i := range ids {
			if i/4 != ids[0]/4 {
				return false
			}
		}
		return true
	}
	for _, m := range []string{"dgx-a100", "dgx-h100"} {
		t.Run(m, func(t *testing.T) {
			_, lib := startSim(t, mustParse(t, "machine: "+m+"\ntopology: islands"))
			devices, err := gpuallocator.NewDevices(gpuallocator.WithNvmlLib(lib))
			if err != nil {
				t.Fatalf("NewDevices: %v", err)
			}
			if len(devices) != 8 {
				t.Fatalf("%d devices", len(devices))
			}
			policy := gpuallocator.NewBestEffortPolicy()
			indexes := func(ds []*gpuallocator.Device) []int {
				var out []int
				for _, d := range ds {
					out = append(out, d.Index)
				}
				slices.Sort(out)
				return out
			}
			tests := []struct {
				name      string
				available []int
				required  []int
				size      int
				check     func([]int) bool
			}{
				{name: "quad", size: 4, check: func(ids []int) bool { return island(ids) }},
				{name: "quad with GPU 5", required: []int{5}, size: 4, check: func(ids []int) bool { return slices.Equal(ids, []int{4, 5, 6, 7}) }},
				{name: "pair", size: 2, check: func(ids []int) bool { return island(ids) && ids[0]/2 == ids[1]/2 }},
				{name: "pair across a busy island", available: []int{0, 3, 4, 6}, size: 2, check: func(ids []int) bool { return island(ids) }},
				{name: "pair with GPU 2", available: []int{0, 1, 2, 5, 6}, required: []int{2}, size: 2, check: func(ids []int) bool { return island(ids) }},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					avail := devices
					if tc.available != nil {
						avail = nil
						for _, i := range tc.available {
							avail = append(avail, devices[i])
						}
					}
					var req []*gpuallocator.Device
					for _, i := range tc.required {
						req = append(req, devices[i])
					}
					got := indexes(policy.Allocate(avail, req, tc.size))
					if len(got) != tc.size || !tc.check(got) {
						t.Errorf("Allocate(%d) = %v", tc.size, got)
					}
				})
			}
		})
	}
	// With NVSwitch every pair is NVLink-connected for go-gpuallocator.
	_, lib := startSim(t, mustParse(t, "machine: dgx-h100"))
	devices, err := gpuallocator.NewDevices(gpuallocator.WithNvmlLib(lib))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devices {
		for _, o := range devices {
			if d != o && len(d.Links[o.Index]) < 2 {
				t.Errorf("GPU %d -> %d links %v: want PCIe and NVLink", d.Index, o.Index, d.Links[o.Index])
			}
		}
	}
}
