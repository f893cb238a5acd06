package gpusim

import (
	"runtime"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// register creates an event set and registers types of GPU i on it.
func register(t *testing.T, lib nvml.Interface, types uint64, gpus ...int) nvml.EventSet {
	t.Helper()
	set, r := lib.EventSetCreate()
	wantRet(t, "EventSetCreate", r, nvml.SUCCESS)
	t.Cleanup(func() { _ = set.Free() })
	for _, i := range gpus {
		wantRet(t, "RegisterEvents", handle(t, lib, i).RegisterEvents(types, set), nvml.SUCCESS)
	}
	return set
}

// expectEvent waits for one event and checks it.
func expectEvent(t *testing.T, lib nvml.Interface, set nvml.EventSet, gpu int, typ, data uint64) nvml.EventData {
	t.Helper()
	ev, r := lib.EventSetWait(set, 2000)
	wantRet(t, "EventSetWait", r, nvml.SUCCESS)
	want, _ := lib.DeviceGetHandleByIndex(gpu) // returned even for a lost GPU
	if ev.Device != want || ev.EventType != typ || ev.EventData != data {
		t.Fatalf("event %+v, want GPU %d type %#x data %d", ev, gpu, typ, data)
	}
	return ev
}

func expectNoEvent(t *testing.T, set nvml.EventSet) {
	t.Helper()
	if ev, r := set.Wait(50); r != nvml.ERROR_TIMEOUT {
		t.Fatalf("unexpected event %+v (%v)", ev, r)
	}
}

func TestEventRegistration(t *testing.T) {
	sim, lib := startSim(t, mustParse(t, "machine: dgx-h100\ngpus: 2"))
	other, _ := startSim(t, mustParse(t, "machine: dgx-h100\ngpus: 1"))
	d := handle(t, lib, 0)
	set, _ := lib.EventSetCreate()
	defer func() { _ = set.Free() }()
	foreign, _ := other.Interface().EventSetCreate()
	defer func() { _ = foreign.Free() }()
	supported, r := d.GetSupportedEventTypes()
	wantRet(t, "GetSupportedEventTypes", r, nvml.SUCCESS)
	tests := []struct {
		name  string
		types uint64
		set   nvml.EventSet
		want  nvml.Return
	}{
		{name: "xid", types: nvml.EventTypeXidCriticalError, set: set, want: nvml.SUCCESS},
		{name: "all supported", types: supported, set: set, want: nvml.SUCCESS},
		{name: "an unsupported type", types: nvml.EventTypeXidCriticalError | nvml.EventTypeClock, set: set, want: nvml.ERROR_NOT_SUPPORTED},
		{name: "not an event type", types: 1 << 40, set: set, want: nvml.ERROR_INVALID_ARGUMENT},
		{name: "another library's set", types: nvml.EventTypeXidCriticalError, set: foreign, want: nvml.ERROR_INVALID_ARGUMENT},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantRet(t, "RegisterEvents", d.RegisterEvents(tc.types, tc.set), tc.want)
		})
	}
	if supported&nvml.EventTypeXidCriticalError == 0 || supported&nvml.EventTypeDoubleBitEccError == 0 {
		t.Errorf("supported events %#x lack XID or DBE", supported)
	}
	_ = sim
}

func TestEventDelivery(t *testing.T) {
	base := mustParse(t, "machine: dgx-h100\ngpus: 4\ndevices: [{index: 0, xids: [{id: old, xid: 43}]}]")
	sim, lib := startSim(t, base)
	xidSet := register(t, lib, nvml.EventTypeXidCriticalError, 0, 1)
	eccSet := register(t, lib, nvml.EventTypeDoubleBitEccError, 0)

	// XIDs present at start are history, not events.
	expectNoEvent(t, xidSet)

	st := base.clone()
	st.Devices = append(st.Devices,
		DeviceState{Index: 1, XIDs: []XID{{ID: "a", XID: 31}}},
		DeviceState{Index: 2, XIDs: []XID{{ID: "a", XID: 13}}}, // GPU 2 is not registered
	)
	st.Devices[0].ECC = &ECCCounts{Uncorrected: 3, Corrected: 5}
	if err := sim.Apply(st); err != nil {
		t.Fatal(err)
	}
	ev := expectEvent(t, lib, xidSet, 1, nvml.EventTypeXidCriticalError, 31)
	if ev.GpuInstanceId != 0xFFFFFFFF || ev.ComputeInstanceId != 0xFFFFFFFF {
		t.Errorf("instance ids %#x/%#x, want 0xFFFFFFFF", ev.GpuInstanceId, ev.ComputeInstanceId)
	}
	expectNoEvent(t, xidSet) // GPU 2's XID, single-bit ECC: not registered here
	for range 3 {
		expectEvent(t, lib, eccSet, 0, nvml.EventTypeDoubleBitEccError, 0)
	}
	expectNoEvent(t, eccSet) // single-bit errors are not registered

	// Applying the same entries again delivers nothing; a new id does.
	if err := sim.Apply(st); err != nil {
		t.Fatal(err)
	}
	expectNoEvent(t, xidSet)
	st.Devices[1].XIDs = append(st.Devices[1].XIDs, XID{ID: "b", XID: 31})
	if err := sim.Apply(st); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, lib, xidSet, 1, nvml.EventTypeXidCriticalError, 31)
}

func TestEventWait(t *testing.T) {
	sim, lib := startSim(t, mustParse(t, "machine: dgx-b200\ngpus: 1"))
	set := register(t, lib, nvml.EventTypeXidCriticalError, 0)

	start := time.Now()
	if _, r := set.Wait(0); r != nvml.ERROR_TIMEOUT || time.Since(start) > 5*time.Second {
		t.Errorf("Wait(0) = %v after %v", r, time.Since(start))
	}
	start = time.Now()
	if _, r := lib.EventSetWait(set, 120); r != nvml.ERROR_TIMEOUT {
		t.Errorf("Wait(120) = %v", r)
	}
	if el := time.Since(start); el < 110*time.Millisecond || el > 5*time.Second {
		t.Errorf("Wait(120) took %v", el)
	}

	// A blocked Wait returns as soon as an event arrives.
	got := make(chan nvml.Return, 1)
	go func() {
		_, r := set.Wait(10_000)
		got <- r
	}()
	time.Sleep(20 * time.Millisecond)
	st := sim.State()
	st.Devices = []DeviceState{{Index: 0, XIDs: []XID{{ID: "x", XID: 94}}}}
	start = time.Now()
	if err := sim.Apply(st); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		wantRet(t, "blocked Wait", r, nvml.SUCCESS)
	case <-time.After(5 * time.Second): // far less than the Wait's 10s
		t.Fatalf("a blocked Wait missed the event (still waiting %v after it)", time.Since(start))
	}
}

func TestEventSetFree(t *testing.T) {
	_, lib := startSim(t, mustParse(t, "machine: dgx-h200\ngpus: 1"))
	before := runtime.NumGoroutine()
	set, _ := lib.EventSetCreate()
	wantRet(t, "RegisterEvents", handle(t, lib, 0).RegisterEvents(nvml.EventTypeXidCriticalError, set), nvml.SUCCESS)
	got := make(chan nvml.Return, 1)
	go func() {
		_, r := set.Wait(10_000)
		got <- r
	}()
	time.Sleep(20 * time.Millisecond)
	wantRet(t, "EventSetFree", lib.EventSetFree(set), nvml.SUCCESS)
	select {
	case r := <-got:
		wantRet(t, "Wait on a freed set", r, nvml.ERROR_INVALID_ARGUMENT)
	case <-time.After(time.Second):
		t.Fatal("Free did not wake a blocked Wait")
	}
	wantRet(t, "second Free", set.Free(), nvml.ERROR_INVALID_ARGUMENT)
	wantRet(t, "register on a freed set", handle(t, lib, 0).RegisterEvents(nvml.EventTypeXidCriticalError, set), nvml.ERROR_INVALID_ARGUMENT)
	deadline := time.Now().Add(time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after Free, %d before", n, before)
	}
}
