package metrics

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/nvml/gpusim"
	"github.com/gpulet/gpulet/internal/podresources"
)

// Pod UIDs and container IDs of the golden nodes' workloads.
const (
	uidNotebook1 = "1b2c3d4e-0000-4000-8000-000000000001"
	uidNotebook2 = "1b2c3d4e-0000-4000-8000-000000000002"
	uidLLM       = "1b2c3d4e-0000-4000-8000-000000000003"
	ctrNotebook1 = "aaaa000000000000000000000000000000000000000000000000000000000001"
	ctrNotebook2 = "bbbb000000000000000000000000000000000000000000000000000000000002"
	ctrLLM       = "cccc000000000000000000000000000000000000000000000000000000000003"
)

// goldenResolver names the golden workloads' pods.
var goldenResolver = staticResolver{
	uidNotebook1: {ns: "team-a", name: "notebook-1", containers: map[string]string{ctrNotebook1: "jupyter"}},
	uidNotebook2: {ns: "team-b", name: "notebook-2", containers: map[string]string{ctrNotebook2: "jupyter"}},
	uidLLM:       {ns: "team-c", name: "llm-server", containers: map[string]string{ctrLLM: "server"}},
}

// h100State: GPU 0 allocated and idle, GPU 1 time-sliced between two
// pods (a cgroup v1 cgroupfs and a v2 systemd process), GPU 2 held
// through a DRA claim, GPU 3 with ECC errors, GPU 7 lost after discovery.
const h100State = `machine: dgx-h100
nodeSeed: golden
devices:
- index: 0
  utilization: {gpu: 0, memory: 0}
  powerW: 72
  temperatureC: 31
- index: 1
  utilization: {gpu: {pattern: sine, min: 20, max: 80, period: 1m}, memory: 40}
  powerW: 420
  temperatureC: 61
  smClockMHz: 1980
  processes:
  - {pid: 1101, usedMemoryMiB: 20480, cgroup: /kubepods/burstable/pod` + uidNotebook1 + `/` + ctrNotebook1 + `}
  - {pid: 1102, usedMemoryMiB: 10240, cgroup: /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c3d4e_0000_4000_8000_000000000002.slice/cri-containerd-` + ctrNotebook2 + `.scope}
  - {pid: 1103, usedMemoryMiB: 512, name: Xorg, type: graphics}
- index: 2
  utilization: {gpu: 97, memory: 71}
  powerW: {pattern: ramp, min: 500, max: 700, period: 10m}
  temperatureC: 74
  smClockMHz: 1755
  processes:
  - {pid: 2201, usedMemoryMiB: 71680, cgroup: /kubepods.slice/kubepods-pod1b2c3d4e_0000_4000_8000_000000000003.slice/cri-containerd-` + ctrLLM + `.scope}
- index: 3
  ecc: {corrected: 12, uncorrected: 1}
`

// a100State: a MIG-mixed DGX A100. GPU 0 in seven 1g.10gb, GPU 1 mixed,
// GPU 2 in 4g+3g, GPU 3 whole as 7g.80gb, GPU 4 in MIG mode without
// instances, GPUs 5-7 whole.
const a100State = `machine: dgx-a100
nodeSeed: golden
devices:
- index: 0
  migEnabled: true
  mig: [{profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}]
  processes:
  - {pid: 3001, usedMemoryMiB: 6144, gpuInstance: 7, computeInstance: 0, cgroup: /kubepods/burstable/pod` + uidNotebook1 + `/` + ctrNotebook1 + `}
- index: 1
  migEnabled: true
  mig: [{profile: 3g.40gb, start: 4}, {profile: 2g.20gb, start: 0}, {profile: 1g.10gb, start: 2}, {profile: 1g.10gb, start: 3}]
  processes:
  - {pid: 3101, usedMemoryMiB: 30720, gpuInstance: 2, computeInstance: 0, cgroup: /kubepods.slice/kubepods-pod1b2c3d4e_0000_4000_8000_000000000003.slice/cri-containerd-` + ctrLLM + `.scope}
- index: 2
  migEnabled: true
  mig: [{profile: 4g.40gb, start: 0}, {profile: 3g.40gb, start: 4}]
- index: 3
  migEnabled: true
  mig: [{profile: 7g.80gb}]
- index: 4
  migEnabled: true
- index: 5
  utilization: {gpu: 55, memory: 30}
  powerW: 310
- index: 6
  utilization: {gpu: 0, memory: 0}
`

// goldenOps records a fixed history of gpulet's own operations.
func goldenOps(reg prometheus.Registerer) *Ops {
	ops := NewOps(reg)
	ops.ObserveAllocate("nvidia.com/gpu", 3*time.Millisecond, nil)
	ops.ObserveAllocate("nvidia.com/gpu", 4*time.Millisecond, nil)
	ops.ObserveAllocate("nvidia.com/gpu", 40*time.Millisecond, errors.New("device already held"))
	ops.ObservePrepare(1200*time.Millisecond, nil)
	ops.ObserveUnprepare(80*time.Millisecond, nil)
	ops.ObserveConfigReload(nil)
	ops.ObserveConfigReload(errors.New("bad config"))
	return ops
}

// healthyAll reports every device healthy except those given.
func healthyAll(inv *inventory.Inventory, except map[string]health.State) map[string]health.State {
	out := map[string]health.State{}
	for _, g := range inv.GPUs {
		out[g.UUID] = health.State{Healthy: true}
		for _, m := range g.MigDevices {
			out[m.UUID] = health.State{Healthy: true}
		}
	}
	for k, v := range except {
		out[k] = v
	}
	return out
}

func mustReserve(t testing.TB, l *ledger.Ledger, recs ...ledger.Record) {
	t.Helper()
	for _, r := range recs {
		if err := l.Reserve(r); err != nil {
			t.Fatal(err)
		}
	}
}

// goldenScenario is one simulated node with its holders, stepped to a
// fixed time and sampled.
type goldenScenario struct {
	state string
	// setup reserves devices, sets the kubelet's answer and health, and
	// may change the node after discovery.
	setup func(t *testing.T, n *testNode, l *ledger.Ledger) (staticPods, staticHealth)
}

func TestExpositionGolden(t *testing.T) {
	tests := map[string]goldenScenario{
		"dgx-h100.prom":           {state: h100State, setup: setupH100},
		"dgx-a100-mig-mixed.prom": {state: a100State, setup: setupA100},
	}
	for name, sc := range tests {
		t.Run(name, func(t *testing.T) {
			n := newTestNode(t, sc.state)
			l, err := ledger.Open("", ledger.WithClock(n.clock.Now))
			if err != nil {
				t.Fatal(err)
			}
			pods, h := sc.setup(t, n, l)
			reg := prometheus.NewPedanticRegistry()
			ops := goldenOps(reg)
			s := NewSampler(SamplerOptions{
				Source: n.Adapter, Inventory: n.Inventory, Ledger: l, PodResources: pods,
				Pods: goldenResolver, ProcRoot: n.procRoot, Ops: ops, Now: n.clock.Now,
				ReadTimeout: 10 * time.Second,
			})
			if err := reg.Register(NewCollector(s, h)); err != nil {
				t.Fatal(err)
			}
			// Two samples a second apart: the second averages utilization
			// over the six NVML samples between them.
			for _, at := range []time.Duration{20 * time.Second, 21 * time.Second} {
				n.clock.Set(at)
				s.SampleOnce(context.Background())
			}
			golden(t, name, exposition(t, reg))
			lint(t, reg)
		})
	}
}

func setupH100(t *testing.T, n *testNode, l *ledger.Ledger) (staticPods, staticHealth) {
	gpus := n.Inventory.GPUs
	mustReserve(t, l,
		ledger.Record{ID: gpus[0].UUID, API: ledger.DevicePlugin, Resources: []ledger.Resource{{GPU: gpus[0].UUID, Device: gpus[0].UUID}}},
		ledger.Record{ID: gpus[1].UUID + "::0", API: ledger.DevicePlugin, Resources: []ledger.Resource{{GPU: gpus[1].UUID, Device: gpus[1].UUID, Shared: true}}},
		ledger.Record{ID: gpus[1].UUID + "::1", API: ledger.DevicePlugin, Resources: []ledger.Resource{{GPU: gpus[1].UUID, Device: gpus[1].UUID, Shared: true}}},
		ledger.Record{ID: "claim-uid-llm", API: ledger.DRA, Namespace: "team-c", Name: "llm-claim", Resources: []ledger.Resource{{GPU: gpus[2].UUID, Device: gpus[2].Name}}},
		// A claim prepared whose pod the kubelet has not reported yet.
		ledger.Record{ID: "claim-uid-pending", API: ledger.DRA, Namespace: "team-c", Name: "pending-claim", Resources: []ledger.Resource{{GPU: gpus[3].UUID, Device: gpus[3].Name}}},
	)
	pods := staticPods{
		{Namespace: "team-a", Name: "forgotten-experiment", Containers: []podresources.Container{{Name: "main",
			Devices: []podresources.Devices{{ResourceName: "nvidia.com/gpu", IDs: []string{gpus[0].UUID}}}}}},
		{Namespace: "team-a", Name: "notebook-1", Containers: []podresources.Container{{Name: "jupyter",
			Devices: []podresources.Devices{{ResourceName: "nvidia.com/gpu.shared", IDs: []string{gpus[1].UUID + "::0"}}}}}},
		{Namespace: "team-b", Name: "notebook-2", Containers: []podresources.Container{{Name: "jupyter",
			Devices: []podresources.Devices{{ResourceName: "nvidia.com/gpu.shared", IDs: []string{gpus[1].UUID + "::1"}}}}}},
		{Namespace: "team-c", Name: "llm-server", Containers: []podresources.Container{{Name: "server",
			Claims: []podresources.Claim{{Namespace: "team-c", Name: "llm-claim", Devices: []podresources.ClaimDevice{{Driver: DefaultDRADriverName, Pool: "node", Device: gpus[2].Name}}}}}}},
		// Another vendor's devices are not gpulet's to report.
		{Namespace: "team-d", Name: "nic", Containers: []podresources.Container{{Name: "main",
			Devices: []podresources.Devices{{ResourceName: "example.com/nic", IDs: []string{"nic-0"}}}}}},
	}
	// GPU 7 falls off the bus after discovery.
	st := n.Sim.State()
	st.Devices = append(st.Devices, gpusim.DeviceState{Index: 7, Lost: true})
	if err := n.Sim.Apply(st); err != nil {
		t.Fatal(err)
	}
	h := staticHealth{
		states: healthyAll(n.Inventory, map[string]health.State{
			gpus[3].UUID: {Reason: health.ReasonXID, XID: 48, Message: "XID 48"},
			gpus[7].UUID: {Reason: health.ReasonLost, Message: "GPU does not answer (fallen off the bus)"},
		}),
		xids: map[string]map[uint64]uint64{
			gpus[3].UUID: {13: 2, 48: 1},
			gpus[7].UUID: {79: 1},
		},
	}
	return pods, h
}

func setupA100(t *testing.T, n *testNode, l *ledger.Ledger) (staticPods, staticHealth) {
	gpus := n.Inventory.GPUs
	mig0, mig1 := gpus[0].MigDevices, gpus[1].MigDevices
	mustReserve(t, l,
		// mig-1g.10gb through the device plugin (mixed strategy): the ID is the MIG UUID.
		ledger.Record{ID: mig0[0].UUID, API: ledger.DevicePlugin, Resources: []ledger.Resource{{GPU: gpus[0].UUID, Slices: span(mig0[0].Placement.Start, 1), Device: mig0[0].UUID}}},
		ledger.Record{ID: mig0[1].UUID, API: ledger.DevicePlugin, Resources: []ledger.Resource{{GPU: gpus[0].UUID, Slices: span(mig0[1].Placement.Start, 1), Device: mig0[1].UUID}}},
		// A DRA claim for a 3g.40gb, named by its DRA device name.
		ledger.Record{ID: "claim-uid-llm", API: ledger.DRA, Namespace: "team-c", Name: "llm-claim",
			Resources: []ledger.Resource{{GPU: gpus[1].UUID, Slices: span(4, 4), Device: mig1[0].Name}}},
		ledger.Record{ID: gpus[6].UUID, API: ledger.DevicePlugin, Resources: []ledger.Resource{{GPU: gpus[6].UUID, Device: gpus[6].UUID}}},
	)
	pods := staticPods{
		{Namespace: "team-a", Name: "notebook-1", Containers: []podresources.Container{{Name: "jupyter",
			Devices: []podresources.Devices{{ResourceName: "nvidia.com/mig-1g.10gb", IDs: []string{mig0[0].UUID}}}}}},
		// Allocated, and nothing runs on it: idle.
		{Namespace: "team-b", Name: "idle-mig", Containers: []podresources.Container{{Name: "main",
			Devices: []podresources.Devices{{ResourceName: "nvidia.com/mig-1g.10gb", IDs: []string{mig0[1].UUID}}}}}},
		{Namespace: "team-c", Name: "llm-server", Containers: []podresources.Container{{Name: "server",
			Claims: []podresources.Claim{{Namespace: "team-c", Name: "llm-claim", Devices: []podresources.ClaimDevice{{Driver: DefaultDRADriverName, Pool: "node", Device: mig1[0].Name}}}}}}},
		{Namespace: "team-b", Name: "forgotten-experiment", Containers: []podresources.Container{{Name: "main",
			Devices: []podresources.Devices{{ResourceName: "nvidia.com/gpu", IDs: []string{gpus[6].UUID}}}}}},
	}
	h := staticHealth{
		states: healthyAll(n.Inventory, map[string]health.State{
			gpus[2].UUID:               {Reason: health.ReasonPendingReset, Message: "retired pages or remapped rows pending a GPU reset"},
			gpus[2].MigDevices[0].UUID: {Reason: health.ReasonParentUnhealthy},
			gpus[2].MigDevices[1].UUID: {Reason: health.ReasonParentUnhealthy},
		}),
		xids: map[string]map[uint64]uint64{gpus[0].UUID: {31: 1}},
	}
	return pods, h
}

func span(start, size int) *ledger.Slices { return &ledger.Slices{Start: start, Size: size} }
