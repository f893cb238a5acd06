package health

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/nvml/gpusim"
	"github.com/gpulet/gpulet/internal/simnode"
)

// fast options: real time, but short enough for a test.
var fast = Options{QuietPeriod: 300 * time.Millisecond, ProbeInterval: 20 * time.Millisecond, WaitSlice: 20 * time.Millisecond}

func devicesOf(inv *inventory.Inventory) []Device {
	var out []Device
	for _, g := range inv.GPUs {
		out = append(out, Device{UUID: g.UUID})
		for _, m := range g.MigDevices {
			out = append(out, Device{UUID: m.UUID, Parent: g.UUID, GIID: m.GIID, CIID: m.CIID})
		}
	}
	return out
}

// run starts a monitor of node and stops it when the test ends.
func run(t *testing.T, node *simnode.Node, opts Options) *Monitor {
	t.Helper()
	m := New(node.Adapter, devicesOf(node.Inventory), opts)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := m.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	waitWatches(t, m, 1)
	return m
}

// waitWatches waits until the monitor has registered for events n times:
// an event injected before that would be lost, as with real NVML.
func waitWatches(t *testing.T, m *Monitor, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for m.Watches() < n {
		if time.Now().After(deadline) {
			t.Fatalf("event registration %d never happened", n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// apply swaps the simulator's state for the given YAML.
func apply(t *testing.T, node *simnode.Node, yaml string) {
	t.Helper()
	st, err := gpusim.Parse([]byte(yaml), "edit.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Sim.Apply(st); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls the monitor's state of uuid until ok says yes.
func waitFor(t *testing.T, m *Monitor, uuid, what string, ok func(State) bool) State {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := m.States()[uuid]
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %+v after 10s", what, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func healthy(s State) bool   { return s.Healthy }
func unhealthy(s State) bool { return !s.Healthy }

func TestCriticalXIDMakesUnhealthyThenRecovers(t *testing.T) {
	node := simnode.New(t, "machine: dgx-h100\ngpus: 2")
	m := run(t, node, fast)
	uuid := node.Inventory.GPUs[1].UUID
	apply(t, node, `
machine: dgx-h100
gpus: 2
devices: [{index: 1, xids: [{id: a, xid: 79}]}]`)
	st := waitFor(t, m, uuid, "after XID 79", unhealthy)
	if st.Reason != ReasonXID || st.XID != 79 {
		t.Errorf("state = %+v: want reason xid, XID 79", st)
	}
	if other := m.States()[node.Inventory.GPUs[0].UUID]; !other.Healthy {
		t.Errorf("GPU 0 unhealthy too: %+v", other)
	}
	waitFor(t, m, uuid, "after the quiet period", healthy)
	if n := m.XIDCounts()[uuid][79]; n != 1 {
		t.Errorf("XID 79 counted %d times, want 1", n)
	}
}

func TestApplicationXIDIsIgnored(t *testing.T) {
	node := simnode.New(t, "machine: dgx-h100\ngpus: 1")
	m := run(t, node, fast)
	uuid := node.Inventory.GPUs[0].UUID
	apply(t, node, `
machine: dgx-h100
gpus: 1
devices: [{index: 0, xids: [{id: a, xid: 13}, {id: b, xid: 43}]}]`)
	deadline := time.Now().Add(5 * time.Second)
	for m.XIDCounts()[uuid][43] == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the XIDs never arrived")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := m.States()[uuid]; !st.Healthy {
		t.Errorf("application XIDs made the GPU unhealthy: %+v", st)
	}
}

func TestLostGPURecoversWhenItAnswersAgain(t *testing.T) {
	node := simnode.New(t, "machine: dgx-h100\ngpus: 2")
	m := run(t, node, fast)
	uuid := node.Inventory.GPUs[0].UUID
	apply(t, node, "machine: dgx-h100\ngpus: 2\ndevices: [{index: 0, lost: true}]")
	// XID 79 may come first; the probe then finds the GPU gone.
	waitFor(t, m, uuid, "GPU lost", func(s State) bool { return s.Reason == ReasonLost })
	watches := m.Watches()
	apply(t, node, "machine: dgx-h100\ngpus: 2")
	waitFor(t, m, uuid, "GPU back on the bus", healthy)
	waitWatches(t, m, watches+1)

	// The event registration was renewed: a new XID still arrives.
	apply(t, node, "machine: dgx-h100\ngpus: 2\ndevices: [{index: 0, xids: [{id: later, xid: 48}]}]")
	waitFor(t, m, uuid, "XID after recovery", unhealthy)
}

func TestECCAndRowRemapping(t *testing.T) {
	node := simnode.New(t, "machine: dgx-h100\ngpus: 1")
	m := run(t, node, fast)
	uuid := node.Inventory.GPUs[0].UUID
	apply(t, node, "machine: dgx-h100\ngpus: 1\ndevices: [{index: 0, ecc: {uncorrected: 3}}]")
	if st := waitFor(t, m, uuid, "double-bit ECC", unhealthy); st.Reason != ReasonECC {
		t.Errorf("state = %+v: want reason %s", st, ReasonECC)
	}
	waitFor(t, m, uuid, "ECC quiet period over", healthy)

	apply(t, node, "machine: dgx-h100\ngpus: 1\ndevices: [{index: 0, ecc: {uncorrected: 3}, remappedRows: {uncorrected: 1, pending: true}}]")
	if st := waitFor(t, m, uuid, "row remap pending", unhealthy); st.Reason != ReasonPendingReset {
		t.Errorf("state = %+v: want reason %s", st, ReasonPendingReset)
	}
	apply(t, node, "machine: dgx-h100\ngpus: 1\ndevices: [{index: 0, ecc: {uncorrected: 3}, remappedRows: {uncorrected: 1}}]")
	waitFor(t, m, uuid, "row remap done", healthy)
}

func TestMIGScopedXIDOnlyTouchesThatMIGDevice(t *testing.T) {
	const state = `
machine: dgx-a100
gpus: 1
devices:
- index: 0
  migEnabled: true
  mig: [{profile: 3g.40gb}, {profile: 3g.40gb}]
%s`
	node := simnode.New(t, fmt.Sprintf(state, ""))
	m := run(t, node, fast)
	g := node.Inventory.GPUs[0]
	if len(g.MigDevices) != 2 {
		t.Fatalf("%d MIG devices, want 2", len(g.MigDevices))
	}
	hit, spared := g.MigDevices[0], g.MigDevices[1]
	apply(t, node, fmt.Sprintf(state, fmt.Sprintf("  xids: [{id: a, xid: 94, gpuInstance: %d, computeInstance: %d}]", hit.GIID, hit.CIID)))
	waitFor(t, m, hit.UUID, "MIG-scoped XID", unhealthy)
	if st := m.States()[spared.UUID]; !st.Healthy {
		t.Errorf("the other MIG device went unhealthy: %+v", st)
	}
	if st := m.States()[g.UUID]; !st.Healthy {
		t.Errorf("the parent GPU went unhealthy: %+v", st)
	}
}

func TestSubscribersSeeChanges(t *testing.T) {
	node := simnode.New(t, "machine: dgx-h100\ngpus: 1")
	m := run(t, node, fast)
	ch, cancel := m.Subscribe()
	defer cancel()
	<-ch // primed with the current states
	apply(t, node, "machine: dgx-h100\ngpus: 1\ndevices: [{index: 0, xids: [{id: a, xid: 79}]}]")
	timeout := time.After(10 * time.Second)
	for {
		select {
		case u := <-ch:
			if !u.States[node.Inventory.GPUs[0].UUID].Healthy {
				return
			}
		case <-timeout:
			t.Fatal("no update showing the GPU unhealthy")
		}
	}
}
