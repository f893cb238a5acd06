package gpusim

import (
	"fmt"
	"strings"
	"testing"

	nvdevice "github.com/NVIDIA/go-nvlib/pkg/nvlib/device"
	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// giProfile returns the GPU-instance profile named name on d.
func giProfile(t *testing.T, sim *Simulator, d nvml.Device, name string) *nvml.GpuInstanceProfileInfo {
	t.Helper()
	id, ok := sim.m.names().gi[name]
	if !ok {
		t.Fatalf("no profile %s on %s", name, sim.m.name)
	}
	info, r := d.GetGpuInstanceProfileInfo(id)
	wantRet(t, "GetGpuInstanceProfileInfo "+name, r, nvml.SUCCESS)
	return &info
}

func TestMIGLifecycle(t *testing.T) {
	for _, m := range Machines() {
		t.Run(m, func(t *testing.T) {
			sim, lib := startSim(t, mustParse(t, fmt.Sprintf("machine: %s\ngpus: 2\ndevices: [{index: 0, migEnabled: true}]", m)))
			names := sim.m.giProfileNames()
			full, half, small := names[4], names[3], names[0] // 7g, 4g, 1g
			third := names[2]                                 // 3g
			d := handle(t, lib, 0)
			if cur, pend, r := d.GetMigMode(); r != nvml.SUCCESS || cur != nvml.DEVICE_MIG_ENABLE || pend != nvml.DEVICE_MIG_ENABLE {
				t.Fatalf("GetMigMode = %d, %d, %v", cur, pend, r)
			}
			if n, _ := d.GetMaxMigDeviceCount(); n != 7 {
				t.Errorf("GetMaxMigDeviceCount = %d, want 7", n)
			}
			if _, r := d.GetMigDeviceHandleByIndex(0); r != nvml.ERROR_NOT_FOUND {
				t.Errorf("GetMigDeviceHandleByIndex(0) on an empty GPU: %v", r)
			}

			// Placements come from go-nvml's mock.
			p4 := giProfile(t, sim, d, half)
			pls, r := d.GetGpuInstancePossiblePlacements(p4)
			wantRet(t, "GetGpuInstancePossiblePlacements", r, nvml.SUCCESS)
			if len(pls) != 1 || pls[0].Start != 0 {
				t.Fatalf("placements of %s: %v", half, pls)
			}

			// Refusals.
			if _, r := d.CreateGpuInstance(&nvml.GpuInstanceProfileInfo{Id: nvml.GPU_INSTANCE_PROFILE_8_SLICE}); r != nvml.ERROR_INVALID_ARGUMENT {
				t.Errorf("create with an unknown profile: %v", r)
			}
			p3 := giProfile(t, sim, d, third)
			if _, r := d.CreateGpuInstanceWithPlacement(p3, &nvml.GpuInstancePlacement{Start: 1}); r != nvml.ERROR_INVALID_ARGUMENT {
				t.Errorf("create at an impossible placement: %v", r)
			}
			gi4, r := d.CreateGpuInstanceWithPlacement(p4, &pls[0])
			wantRet(t, "create "+half, r, nvml.SUCCESS)
			if _, r := d.CreateGpuInstanceWithPlacement(p3, &nvml.GpuInstancePlacement{Start: 0}); r != nvml.ERROR_INSUFFICIENT_RESOURCES {
				t.Errorf("create over %s: %v, want ERROR_INSUFFICIENT_RESOURCES", half, r)
			}
			if _, r := d.CreateGpuInstance(giProfile(t, sim, d, full)); r != nvml.ERROR_INSUFFICIENT_RESOURCES {
				t.Errorf("create %s on a used GPU: %v", full, r)
			}
			if n, _ := d.GetGpuInstanceRemainingCapacity(p3); n != 1 {
				t.Errorf("remaining %s capacity: %d, want 1", third, n)
			}
			gi1, r := d.CreateGpuInstance(giProfile(t, sim, d, small))
			wantRet(t, "create "+small, r, nvml.SUCCESS)
			info1, _ := gi1.GetInfo()
			if info1.Placement.Start < 4 || info1.Device != d {
				t.Errorf("%s placed at %d (want the first free slice after the 4g instance), device %v", small, info1.Placement.Start, info1.Device)
			}
			info4, _ := gi4.GetInfo()
			if info4.Id != 1 {
				t.Errorf("%s got GPU instance id %d, want 1", half, info4.Id)
			}
			if got, r := d.GetGpuInstanceById(int(info4.Id)); r != nvml.SUCCESS || got != gi4 {
				t.Errorf("GetGpuInstanceById = %v, %v", got, r)
			}
			if _, r := d.GetGpuInstanceById(6); r != nvml.ERROR_NOT_FOUND {
				t.Errorf("GetGpuInstanceById(unused): %v", r)
			}
			if gis, _ := d.GetGpuInstances(p4); len(gis) != 1 || gis[0] != gi4 {
				t.Errorf("GetGpuInstances = %v", gis)
			}

			// Compute instances and MIG devices.
			ciFull, r := gi4.GetComputeInstanceProfileInfo(nvml.COMPUTE_INSTANCE_PROFILE_4_SLICE, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
			wantRet(t, "GetComputeInstanceProfileInfo", r, nvml.SUCCESS)
			ci1, r := gi4.GetComputeInstanceProfileInfo(nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
			wantRet(t, "GetComputeInstanceProfileInfo", r, nvml.SUCCESS)
			ci, r := gi4.CreateComputeInstanceWithPlacement(&ci1, &nvml.ComputeInstancePlacement{Start: 1, Size: 1})
			wantRet(t, "CreateComputeInstanceWithPlacement", r, nvml.SUCCESS)
			if _, r := gi4.CreateComputeInstance(&ciFull); r != nvml.ERROR_INSUFFICIENT_RESOURCES {
				t.Errorf("full compute instance over a 1-slice one: %v", r)
			}
			if _, r := gi1.CreateComputeInstance(nil); r != nvml.ERROR_INVALID_ARGUMENT {
				t.Errorf("CreateComputeInstance(nil): %v", r)
			}
			wantRet(t, "destroy a GPU instance with compute instances", gi4.Destroy(), nvml.ERROR_IN_USE)

			mig, r := d.GetMigDeviceHandleByIndex(0)
			wantRet(t, "GetMigDeviceHandleByIndex(0)", r, nvml.SUCCESS)
			if isMig, _ := mig.IsMigDeviceHandle(); !isMig {
				t.Error("IsMigDeviceHandle = false")
			}
			uuid, _ := mig.GetUUID()
			if !migUUIDRE.MatchString(uuid) {
				t.Errorf("MIG UUID %q", uuid)
			}
			if h, r := lib.DeviceGetHandleByUUID(uuid); r != nvml.SUCCESS || h != mig {
				t.Errorf("DeviceGetHandleByUUID(MIG uuid) = %v, %v", h, r)
			}
			if parent, _ := mig.GetDeviceHandleFromMigDeviceHandle(); parent != d {
				t.Errorf("parent %v, want %v", parent, d)
			}
			if id, _ := mig.GetGpuInstanceId(); id != 1 {
				t.Errorf("MIG device GPU instance %d, want 1", id)
			}
			if id, _ := mig.GetComputeInstanceId(); id != 1 {
				t.Errorf("MIG device compute instance %d, want 1 (its placement start)", id)
			}
			attrs, _ := mig.GetAttributes()
			if attrs.MemorySizeMB != p4.MemorySizeMB || attrs.GpuInstanceSliceCount != 4 || attrs.ComputeInstanceSliceCount != 1 || attrs.MultiprocessorCount == 0 {
				t.Errorf("MIG attributes %+v", attrs)
			}
			if mem, _ := mig.GetMemoryInfo(); mem.Total != p4.MemorySizeMB<<20 {
				t.Errorf("MIG memory %+v", mem)
			}
			if name, _ := mig.GetName(); !strings.HasSuffix(name, " MIG 1c."+half) {
				t.Errorf("MIG device name %q", name)
			}
			if idx, _ := mig.GetIndex(); idx != 0 {
				t.Errorf("MIG index %d", idx)
			}
			if _, r := d.GetUtilizationRates(); r != nvml.ERROR_NOT_SUPPORTED {
				t.Errorf("utilization with MIG on: %v", r)
			}

			wantRet(t, "CI Destroy", ci.Destroy(), nvml.SUCCESS)
			wantRet(t, "CI Destroy again", ci.Destroy(), nvml.ERROR_INVALID_ARGUMENT)
			if _, r := mig.GetUUID(); r != nvml.ERROR_INVALID_ARGUMENT {
				t.Errorf("stale MIG handle: %v", r)
			}
			wantRet(t, "GI Destroy", gi4.Destroy(), nvml.SUCCESS)
			wantRet(t, "GI Destroy", gi1.Destroy(), nvml.SUCCESS)
			r1, r2 := d.SetMigMode(nvml.DEVICE_MIG_DISABLE)
			wantRet(t, "SetMigMode", r2, nvml.SUCCESS)
			wantRet(t, "SetMigMode activation", r1, nvml.SUCCESS)

			// A GPU without MIG.
			other := handle(t, lib, 1)
			if _, r := other.CreateGpuInstance(p4); r != nvml.ERROR_NOT_SUPPORTED {
				t.Errorf("create with MIG off: %v", r)
			}
			if n, _ := other.GetMaxMigDeviceCount(); n != 0 {
				t.Errorf("GetMaxMigDeviceCount with MIG off: %d", n)
			}
		})
	}
}

func TestMIGLayoutFromState(t *testing.T) {
	st, err := Load("testdata/dgx-h100-mig.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, lib := startSim(t, st)
	want := map[int][]string{
		0: {"3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb+me"}, // by GPU instance id: 2, 3, 9, 10
		1: {"3c.7g.80gb", "1c.7g.80gb", "2c.7g.80gb"},      // by compute instance id: 0, 3, 4
	}
	lib2 := nvdevice.New(lib)
	seen := map[int]int{}
	err = lib2.VisitMigDevices(func(i int, d nvdevice.Device, j int, m nvdevice.MigDevice) error {
		seen[i]++
		p, err := m.GetProfile()
		if err != nil {
			return err
		}
		if got := p.String(); got != want[i][j] {
			t.Errorf("GPU %d MIG device %d: go-nvlib profile %s, want %s", i, j, got, want[i][j])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen[0] != len(want[0]) || seen[1] != len(want[1]) || len(seen) != 2 {
		t.Errorf("MIG devices per GPU %v", seen)
	}
	d := handle(t, lib, 0)
	procs, r := d.GetComputeRunningProcesses()
	wantRet(t, "GetComputeRunningProcesses", r, nvml.SUCCESS)
	if len(procs) != 1 || procs[0].Pid != 4242 || procs[0].GpuInstanceId != 2 || procs[0].ComputeInstanceId != 0 || procs[0].UsedGpuMemory != 8000<<20 {
		t.Errorf("processes %+v", procs)
	}
	gi, _ := d.GetGpuInstanceById(2)
	ci, _ := gi.GetComputeInstanceById(0)
	wantRet(t, "destroy a compute instance a process runs on", ci.Destroy(), nvml.ERROR_IN_USE)
	mig, _ := d.GetMigDeviceHandleByIndex(0)
	if procs, _ := mig.GetComputeRunningProcesses(); len(procs) != 1 {
		t.Errorf("MIG device processes %+v", procs)
	}
	if mem, _ := mig.GetMemoryInfo(); mem.Used != 8000<<20 {
		t.Errorf("MIG device memory %+v", mem)
	}
}

// TestMIGSurvivesReload: instances created through NVML stay when a new
// state leaves the GPU's MIG settings alone, and go when it changes them.
func TestMIGSurvivesReload(t *testing.T) {
	base := "machine: dgx-h100\ngpus: 2\ndevices:\n- index: 0\n  migEnabled: true\n  mig: [{profile: 3g.40gb, start: 4}]\n"
	sim, lib := startSim(t, mustParse(t, base))
	d := handle(t, lib, 0)
	migUUIDs := func() []string {
		var out []string
		n, _ := d.GetMaxMigDeviceCount()
		for i := range n {
			if m, r := d.GetMigDeviceHandleByIndex(i); r == nvml.SUCCESS {
				u, _ := m.GetUUID()
				out = append(out, u)
			}
		}
		return out
	}
	gi, r := d.CreateGpuInstance(giProfile(t, sim, d, "1g.10gb"))
	wantRet(t, "CreateGpuInstance", r, nvml.SUCCESS)
	p, _ := gi.GetComputeInstanceProfileInfo(nvml.COMPUTE_INSTANCE_PROFILE_1_SLICE, nvml.COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
	if _, r := gi.CreateComputeInstance(&p); r != nvml.SUCCESS {
		t.Fatalf("CreateComputeInstance: %v", r)
	}
	before := migUUIDs()
	if len(before) != 2 {
		t.Fatalf("MIG devices %v, want 2", before)
	}

	if err := sim.Apply(mustParse(t, base+"- index: 1\n  powerW: 400\n")); err != nil {
		t.Fatal(err)
	}
	if after := migUUIDs(); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Errorf("MIG devices changed on an unrelated edit: %v -> %v", before, after)
	}

	if err := sim.Apply(mustParse(t, strings.Replace(base, "start: 4", "start: 0", 1))); err != nil {
		t.Fatal(err)
	}
	if after := migUUIDs(); len(after) != 1 || after[0] == before[0] {
		t.Errorf("after a layout change: %v", after)
	}
	if _, r := gi.GetInfo(); r != nvml.ERROR_INVALID_ARGUMENT {
		t.Errorf("GPU instance from before the layout change: %v", r)
	}

	// The same layout always yields the same MIG UUIDs.
	_, lib2 := startSim(t, mustParse(t, strings.Replace(base, "start: 4", "start: 0", 1)))
	m2, _ := handle(t, lib2, 0).GetMigDeviceHandleByIndex(0)
	u2, _ := m2.GetUUID()
	if got := migUUIDs(); got[0] != u2 {
		t.Errorf("MIG UUID not deterministic: %s vs %s", got[0], u2)
	}
}
