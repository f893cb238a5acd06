package gpusim

import (
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

func TestLostGPU(t *testing.T) {
	base := mustParse(t, `
machine: dgx-h100
gpus: 3
devices:
- index: 1
  migEnabled: true
  mig: [{profile: 3g.40gb}]
`)
	sim, lib := startSim(t, base)
	set := register(t, lib, nvml.EventTypeXidCriticalError, 1)
	d := handle(t, lib, 1)
	uuid, _ := d.GetUUID()
	mig, r := d.GetMigDeviceHandleByIndex(0)
	wantRet(t, "GetMigDeviceHandleByIndex", r, nvml.SUCCESS)
	migUUID, _ := mig.GetUUID()

	lost := base.clone()
	lost.Devices[0].Lost = true
	if err := sim.Apply(lost); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, lib, set, 1, nvml.EventTypeXidCriticalError, 79)

	checks := []struct {
		name string
		ret  func() nvml.Return
	}{
		{"GetUUID", func() nvml.Return { _, r := d.GetUUID(); return r }},
		{"GetMemoryInfo", func() nvml.Return { _, r := d.GetMemoryInfo(); return r }},
		{"GetTemperature", func() nvml.Return { _, r := d.GetTemperature(nvml.TEMPERATURE_GPU); return r }},
		{"GetFanSpeed (stub)", func() nvml.Return { _, r := d.GetFanSpeed(); return r }},
		{"DeviceGetPowerUsage", func() nvml.Return { _, r := lib.DeviceGetPowerUsage(d); return r }},
		{"DeviceGetHandleByIndex", func() nvml.Return { _, r := lib.DeviceGetHandleByIndex(1); return r }},
		{"DeviceGetHandleByUUID", func() nvml.Return { _, r := lib.DeviceGetHandleByUUID(uuid); return r }},
		{"RegisterEvents", func() nvml.Return { return d.RegisterEvents(nvml.EventTypeXidCriticalError, set) }},
		{"MIG GetUUID", func() nvml.Return { _, r := mig.GetUUID(); return r }},
		{"MIG GetMemoryInfo", func() nvml.Return { _, r := mig.GetMemoryInfo(); return r }},
		{"MIG DeviceGetHandleByUUID", func() nvml.Return { _, r := lib.DeviceGetHandleByUUID(migUUID); return r }},
		{"GetGpuInstances", func() nvml.Return {
			_, r := d.GetGpuInstances(&nvml.GpuInstanceProfileInfo{Id: nvml.GPU_INSTANCE_PROFILE_3_SLICE})
			return r
		}},
	}
	for _, c := range checks {
		if r := c.ret(); r != nvml.ERROR_GPU_IS_LOST {
			t.Errorf("%s on a lost GPU: %v, want ERROR_GPU_IS_LOST", c.name, r)
		}
	}
	if _, r := handle(t, lib, 2).GetUUID(); r != nvml.SUCCESS {
		t.Errorf("another GPU: %v", r)
	}
	if n, r := lib.DeviceGetCount(); r != nvml.SUCCESS || n != 3 {
		t.Errorf("DeviceGetCount with a lost GPU = %d, %v; want 3", n, r)
	}
	if lvl, r := handle(t, lib, 0).GetTopologyCommonAncestor(d); r != nvml.ERROR_GPU_IS_LOST {
		t.Errorf("topology towards a lost GPU: %v, %v", lvl, r)
	}

	// The fault clears: same GPU, same UUID, same MIG devices, no new XID.
	if err := sim.Apply(base); err != nil {
		t.Fatal(err)
	}
	if got, r := d.GetUUID(); r != nvml.SUCCESS || got != uuid {
		t.Errorf("after recovery: %q, %v; want %q", got, r, uuid)
	}
	if got, r := mig.GetUUID(); r != nvml.SUCCESS || got != migUUID {
		t.Errorf("MIG device after recovery: %q, %v", got, r)
	}
	expectNoEvent(t, set)
}

func TestMemoryErrors(t *testing.T) {
	sim, lib := startSim(t, mustParse(t, "machine: dgx-a100\ngpus: 1\ndevices: [{index: 0, ecc: {corrected: 4, uncorrected: 1}}]"))
	d := handle(t, lib, 0)
	set := register(t, lib, nvml.EventTypeDoubleBitEccError|nvml.EventTypeSingleBitEccError, 0)

	counts := []struct {
		typ     nvml.MemoryErrorType
		counter nvml.EccCounterType
		loc     nvml.MemoryLocation
		want    uint64
		ret     nvml.Return
	}{
		{nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC, nvml.MEMORY_LOCATION_DRAM, 4, nvml.SUCCESS},
		{nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.AGGREGATE_ECC, nvml.MEMORY_LOCATION_DEVICE_MEMORY, 1, nvml.SUCCESS},
		{nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC, nvml.MEMORY_LOCATION_SRAM, 0, nvml.SUCCESS},
		{nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC, nvml.MEMORY_LOCATION_L1_CACHE, 0, nvml.ERROR_NOT_SUPPORTED},
		{nvml.MEMORY_ERROR_TYPE_COUNT, nvml.VOLATILE_ECC, nvml.MEMORY_LOCATION_DRAM, 0, nvml.ERROR_INVALID_ARGUMENT},
	}
	for _, c := range counts {
		n, r := d.GetMemoryErrorCounter(c.typ, c.counter, c.loc)
		if n != c.want || r != c.ret {
			t.Errorf("GetMemoryErrorCounter(%v, %v, %v) = %d, %v; want %d, %v", c.typ, c.counter, c.loc, n, r, c.want, c.ret)
		}
	}
	if n, _ := d.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC); n != 4 {
		t.Errorf("GetTotalEccErrors = %d", n)
	}
	if c, u, pending, failed, r := d.GetRemappedRows(); c != 0 || u != 0 || pending || failed || r != nvml.SUCCESS {
		t.Errorf("GetRemappedRows = %d %d %v %v %v", c, u, pending, failed, r)
	}

	// An ECC storm, capped, and a pending row remap.
	st := sim.State()
	st.Devices[0].ECC = &ECCCounts{Corrected: 4, Uncorrected: 5001}
	st.Devices[0].RemappedRows = &RemappedRows{Uncorrected: 1, Pending: true}
	if err := sim.Apply(st); err != nil {
		t.Fatal(err)
	}
	for range maxEventsPerChange {
		if ev, r := set.Wait(1000); r != nvml.SUCCESS || ev.EventType != nvml.EventTypeDoubleBitEccError {
			t.Fatalf("storm event %+v, %v", ev, r)
		}
	}
	expectNoEvent(t, set)
	if n, _ := d.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC); n != 5001 {
		t.Errorf("uncorrected count %d after the storm", n)
	}
	if _, u, pending, _, _ := d.GetRemappedRows(); u != 1 || !pending {
		t.Errorf("remapped rows: %d pending=%v", u, pending)
	}

	// Page retirement: not supported since A100, unless asked for.
	if _, r := d.GetRetiredPagesPendingStatus(); r != nvml.ERROR_NOT_SUPPORTED {
		t.Errorf("GetRetiredPagesPendingStatus: %v", r)
	}
	st.Devices[0].RetiredPages = &RetiredPages{DoubleBit: 2, Pending: true}
	if err := sim.Apply(st); err != nil {
		t.Fatal(err)
	}
	if s, r := d.GetRetiredPagesPendingStatus(); s != nvml.FEATURE_ENABLED || r != nvml.SUCCESS {
		t.Errorf("GetRetiredPagesPendingStatus = %v, %v", s, r)
	}
	if pages, r := d.GetRetiredPages(nvml.PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR); len(pages) != 2 || r != nvml.SUCCESS {
		t.Errorf("GetRetiredPages = %v, %v", pages, r)
	}
}

func TestImmutableFields(t *testing.T) {
	sim, _ := startSim(t, mustParse(t, "machine: dgx-h100\ngpus: 2\nnodeSeed: a"))
	for _, change := range []string{
		"machine: dgx-a100\ngpus: 2\nnodeSeed: a",
		"machine: dgx-h100\ngpus: 3\nnodeSeed: a",
		"machine: dgx-h100\ngpus: 2\nnodeSeed: b",
	} {
		if err := sim.Apply(mustParse(t, change)); err == nil {
			t.Errorf("Apply(%q) changed what cannot change", change)
		}
		if sim.LastError() == nil {
			t.Error("LastError is nil after a refused Apply")
		}
	}
	if err := sim.Apply(mustParse(t, "machine: dgx-h100\ngpus: 2\nnodeSeed: a\ntopology: islands")); err != nil || sim.LastError() != nil {
		t.Errorf("Apply of a valid change: %v (LastError %v)", err, sim.LastError())
	}
}
