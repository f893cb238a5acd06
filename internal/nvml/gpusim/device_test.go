package gpusim

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxb200"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh200"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

var (
	gpuUUIDRE = regexp.MustCompile(`^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	migUUIDRE = regexp.MustCompile(`^MIG-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
)

func TestIdentity(t *testing.T) {
	tests := []struct {
		machine     string
		mock        gpus.Config // what go-nvml's mock says about the GPU
		name        string
		memMiB      uint64
		arch        nvml.DeviceArchitecture
		cc          [2]int
		busID3      string
		driver      string
		migProfiles []string
	}{
		{
			machine: MachineDGXA100, mock: gpus.A100_SXM4_80GB, name: "NVIDIA A100-SXM4-80GB", memMiB: 81920,
			arch: nvml.DEVICE_ARCH_AMPERE, cc: [2]int{8, 0}, busID3: "00000000:4E:00.0", driver: "550.54.15",
			migProfiles: []string{"1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "1g.10gb+me", "1g.20gb"},
		},
		{
			machine: MachineDGXH100, mock: serverGPU(t, dgxh100.New()), name: "NVIDIA H100 80GB HBM3", memMiB: 81920,
			arch: nvml.DEVICE_ARCH_HOPPER, cc: [2]int{9, 0}, busID3: "00000000:5D:00.0", driver: "550.54.15",
			migProfiles: []string{"1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "1g.10gb+me", "1g.20gb"},
		},
		{
			machine: MachineDGXH200, mock: serverGPU(t, dgxh200.New()), name: "NVIDIA H200 141GB HBM3e", memMiB: 144384,
			arch: nvml.DEVICE_ARCH_HOPPER, cc: [2]int{9, 0}, busID3: "00000000:5D:00.0", driver: "550.54.15",
			migProfiles: []string{"1g.18gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb", "1g.18gb+me", "1g.35gb"},
		},
		{
			machine: MachineDGXB200, mock: serverGPU(t, dgxb200.New()), name: "NVIDIA B200 180GB HBM3e", memMiB: 184320,
			arch: nvml.DEVICE_ARCH_BLACKWELL, cc: [2]int{10, 0}, busID3: "00000000:61:00.0", driver: "570.124.06",
			migProfiles: []string{"1g.23gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb", "1g.23gb+me", "1g.45gb"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.machine, func(t *testing.T) {
			st, err := DefaultState(tc.machine)
			if err != nil {
				t.Fatal(err)
			}
			sim, lib := startSim(t, st)
			n, r := lib.DeviceGetCount()
			wantRet(t, "DeviceGetCount", r, nvml.SUCCESS)
			if n != 8 {
				t.Fatalf("DeviceGetCount = %d, want 8", n)
			}
			if v, _ := lib.SystemGetDriverVersion(); v != tc.driver {
				t.Errorf("driver version %q, want %q", v, tc.driver)
			}
			if v, _ := lib.SystemGetNVMLVersion(); v != "12."+tc.driver {
				t.Errorf("NVML version %q, want 12.%s", v, tc.driver)
			}
			if v, _ := lib.SystemGetCudaDriverVersion(); v < 12000 {
				t.Errorf("CUDA driver version %d", v)
			}
			uuids := map[string]bool{}
			for i := range n {
				d := handle(t, lib, i)
				uuid, _ := d.GetUUID()
				if !gpuUUIDRE.MatchString(uuid) || uuids[uuid] {
					t.Errorf("GPU %d UUID %q: malformed or repeated", i, uuid)
				}
				uuids[uuid] = true
				if byUUID, r := lib.DeviceGetHandleByUUID(uuid); r != nvml.SUCCESS || byUUID != d {
					t.Errorf("DeviceGetHandleByUUID(%s) = %v, %v", uuid, byUUID, r)
				}
				if idx, _ := d.GetIndex(); idx != i {
					t.Errorf("GPU %d: index %d", i, idx)
				}
				if minor, _ := d.GetMinorNumber(); minor != i {
					t.Errorf("GPU %d: minor %d", i, minor)
				}
				if serial, _ := d.GetSerial(); len(serial) != 13 {
					t.Errorf("GPU %d: serial %q", i, serial)
				}
			}
			d := handle(t, lib, 3)
			if name, _ := d.GetName(); name != tc.name || name != tc.mock.Name {
				t.Errorf("name %q, want %q (mock: %q)", name, tc.name, tc.mock.Name)
			}
			if arch, _ := d.GetArchitecture(); arch != tc.arch {
				t.Errorf("architecture %v, want %v", arch, tc.arch)
			}
			if brand, _ := d.GetBrand(); brand != nvml.BRAND_NVIDIA {
				t.Errorf("brand %v", brand)
			}
			if major, minor, _ := d.GetCudaComputeCapability(); [2]int{major, minor} != tc.cc {
				t.Errorf("compute capability %d.%d, want %v", major, minor, tc.cc)
			}
			mem, _ := d.GetMemoryInfo()
			if mem.Total != tc.memMiB<<20 || mem.Used+mem.Free != mem.Total || mem.Used == 0 {
				t.Errorf("memory %+v, want total %d MiB with used+free=total and the driver's reserve used", mem, tc.memMiB)
			}
			mem2, _ := d.GetMemoryInfo_v2()
			if mem2.Total != mem.Total || mem2.Reserved+mem2.Used+mem2.Free != mem2.Total || mem2.Reserved == 0 {
				t.Errorf("memory v2 %+v", mem2)
			}
			pci, _ := d.GetPciInfo()
			if busID(pci) != tc.busID3 || pci.PciDeviceId != tc.mock.PciDeviceId || pci.Domain != 0 || pci.Device != 0 {
				t.Errorf("PCI info %+v (bus id %q), want bus id %s and device id %#x", pci, busID(pci), tc.busID3, tc.mock.PciDeviceId)
			}
			for _, id := range []string{tc.busID3, tc.busID3[4:], tc.busID3[9:], strings.ToLower(tc.busID3)} {
				if h, r := lib.DeviceGetHandleByPciBusId(id); r != nvml.SUCCESS || h != d {
					t.Errorf("DeviceGetHandleByPciBusId(%q) = %v", id, r)
				}
			}
			if got := sim.m.giProfileNames(); !slices.Equal(got, tc.migProfiles) {
				t.Errorf("MIG profiles %v, want %v", got, tc.migProfiles)
			}
			if _, r := d.GetFanSpeed(); r != nvml.ERROR_NOT_SUPPORTED {
				t.Errorf("GetFanSpeed (not simulated): %v, want ERROR_NOT_SUPPORTED", r)
			}
			if _, r := d.GetRetiredPagesPendingStatus(); r != nvml.ERROR_NOT_SUPPORTED {
				t.Errorf("GetRetiredPagesPendingStatus (row remapping GPUs): %v, want ERROR_NOT_SUPPORTED", r)
			}
		})
	}
}

// serverGPU returns the GPU config of a go-nvml mock server.
func serverGPU(t *testing.T, s *server.Server) gpus.Config {
	t.Helper()
	return s.Devices[0].(*server.Device).Config
}

func TestDeterministicUUIDs(t *testing.T) {
	uuids := func(st *State) []string {
		t.Helper()
		_, lib := startSim(t, st)
		n, _ := lib.DeviceGetCount()
		var out []string
		for i := range n {
			u, _ := handle(t, lib, i).GetUUID()
			out = append(out, u)
		}
		return out
	}
	base := uuids(mustParse(t, "machine: dgx-h100\nnodeSeed: node-a\ngpus: 4"))
	tests := []struct {
		name  string
		state string
		same  bool
	}{
		{name: "same node again", state: "machine: dgx-h100\nnodeSeed: node-a\ngpus: 4", same: true},
		{name: "same node, other settings", state: "machine: dgx-h100\nnodeSeed: node-a\ngpus: 4\ntopology: pcie\ndevices: [{index: 1, powerW: 500}]", same: true},
		{name: "another node", state: "machine: dgx-h100\nnodeSeed: node-b\ngpus: 4"},
		{name: "another machine", state: "machine: dgx-h200\nnodeSeed: node-a\ngpus: 4"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := uuids(mustParse(t, tc.state))
			for i := range got {
				if (got[i] == base[i]) != tc.same {
					t.Errorf("GPU %d: UUID %s vs %s, want same=%v", i, got[i], base[i], tc.same)
				}
			}
		})
	}
}

func TestInitRefcount(t *testing.T) {
	sim, err := New(mustParse(t, "machine: dgx-a100\ngpus: 1"))
	if err != nil {
		t.Fatal(err)
	}
	lib := sim.Interface()
	if _, r := lib.DeviceGetCount(); r != nvml.ERROR_UNINITIALIZED {
		t.Fatalf("DeviceGetCount before Init: %v", r)
	}
	wantRet(t, "Init", lib.Init(), nvml.SUCCESS)
	wantRet(t, "Init", lib.Init(), nvml.SUCCESS)
	d := handle(t, lib, 0)
	wantRet(t, "Shutdown", lib.Shutdown(), nvml.SUCCESS)
	if _, r := d.GetUUID(); r != nvml.SUCCESS {
		t.Fatalf("GetUUID with one Init left: %v", r)
	}
	wantRet(t, "Shutdown", lib.Shutdown(), nvml.SUCCESS)
	if _, r := d.GetUUID(); r != nvml.ERROR_UNINITIALIZED {
		t.Fatalf("GetUUID after the last Shutdown: %v", r)
	}
	if _, r := d.GetFanSpeed(); r != nvml.ERROR_UNINITIALIZED {
		t.Fatalf("stubbed GetFanSpeed after the last Shutdown: %v", r)
	}
	wantRet(t, "extra Shutdown", lib.Shutdown(), nvml.ERROR_UNINITIALIZED)
}

func TestLibraryLevelCalls(t *testing.T) {
	_, lib := startSim(t, mustParse(t, "machine: dgx-h100\ngpus: 2"))
	d := handle(t, lib, 1)
	uuid, r := lib.DeviceGetUUID(d)
	wantRet(t, "DeviceGetUUID", r, nvml.SUCCESS)
	if want, _ := d.GetUUID(); uuid != want {
		t.Errorf("DeviceGetUUID = %s, method says %s", uuid, want)
	}
	if lvl, r := lib.DeviceGetTopologyCommonAncestor(handle(t, lib, 0), d); r != nvml.SUCCESS || lvl != nvml.TOPOLOGY_SINGLE {
		t.Errorf("DeviceGetTopologyCommonAncestor = %v, %v", lvl, r)
	}
	if _, r := lib.DeviceGetFanSpeed(d); r != nvml.ERROR_NOT_SUPPORTED {
		t.Errorf("DeviceGetFanSpeed: %v", r)
	}
	if _, r := lib.DeviceGetUUID(nil); r != nvml.ERROR_INVALID_ARGUMENT {
		t.Errorf("DeviceGetUUID(nil): %v", r)
	}
	if _, r := lib.GetExcludedDeviceCount(); r != nvml.ERROR_NOT_SUPPORTED {
		t.Errorf("GetExcludedDeviceCount: %v", r)
	}
	if err := lib.Extensions().LookupSymbol("nvmlDeviceGetMigMode"); err != nil {
		t.Errorf("LookupSymbol: %v", err)
	}
}
