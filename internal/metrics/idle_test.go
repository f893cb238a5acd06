package metrics

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/nvml/gpusim"
	"github.com/gpulet/gpulet/internal/podresources"
)

const idleState = `machine: dgx-h100
nodeSeed: idle
gpus: 2
devices:
- index: 0
  utilization: {gpu: 0, memory: 0}
- index: 1
  utilization: {gpu: 0, memory: 0}
`

// setUtilization changes GPU i's utilization in the simulator.
func setUtilization(t *testing.T, n *testNode, i int, percent float64) {
	t.Helper()
	st := n.Sim.State()
	for k := range st.Devices {
		if st.Devices[k].Index == i {
			st.Devices[k].Utilization = &gpusim.Utilization{GPU: &gpusim.Value{Constant: percent}, Memory: &gpusim.Value{Constant: 0}}
		}
	}
	if err := n.Sim.Apply(st); err != nil {
		t.Fatal(err)
	}
}

// TestIdleAllocatedGPU: a GPU allocated to a pod at 0% utilization drives
// the idle gauge up and, past EventAfter, puts one Event on the pod per
// crossing. Events go to client-go's fake clientset (the e2e bed's real
// API server is not used here); the unallocated GPU 1, idle too, gets
// neither gauge nor Event.
func TestIdleAllocatedGPU(t *testing.T) {
	n := newTestNode(t, idleState)
	gpu := n.Inventory.GPUs[0]
	l, err := ledger.Open("")
	if err != nil {
		t.Fatal(err)
	}
	mustReserve(t, l, ledger.Record{ID: gpu.UUID, API: ledger.DevicePlugin, Resources: []ledger.Resource{{GPU: gpu.UUID, Device: gpu.UUID}}})
	pods := staticPods{{Namespace: "team-a", Name: "forgotten", Containers: []podresources.Container{{Name: "main",
		Devices: []podresources.Devices{{ResourceName: "nvidia.com/gpu", IDs: []string{gpu.UUID}}}}}}}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kube := fake.NewClientset()
	recorder, stop, err := StartEventRecorder(ctx, kube, "gpulet")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	s := NewSampler(SamplerOptions{
		Source: n.Adapter, Inventory: n.Inventory, Ledger: l, PodResources: pods, ProcRoot: n.procRoot,
		Now: n.clock.Now, ReadTimeout: 10 * time.Second,
		Idle: IdleOptions{Threshold: 0.05, EventAfter: time.Minute, Recorder: recorder},
	})
	c := NewCollector(s, nil)

	steps := []struct {
		name string
		at   time.Duration
		// util, if set, is applied before sampling.
		util        *float64
		wantSeconds float64
		// wantEvents is the Events created, wantCount the last one's count.
		wantEvents, wantCount int
	}{
		{name: "first idle sample", at: 10 * time.Second, wantSeconds: 0},
		{name: "idle for 30s", at: 40 * time.Second, wantSeconds: 30},
		{name: "idle for 60s crosses", at: 70 * time.Second, wantSeconds: 60, wantEvents: 1, wantCount: 1},
		{name: "still idle: no second Event", at: 130 * time.Second, wantSeconds: 120, wantEvents: 1, wantCount: 1},
		{name: "busy resets", at: 140 * time.Second, util: ptr(80.0), wantSeconds: 0, wantEvents: 1, wantCount: 1},
		{name: "idle again", at: 150 * time.Second, util: ptr(0.0), wantSeconds: 0, wantEvents: 1, wantCount: 1},
		{name: "second crossing", at: 210 * time.Second, wantSeconds: 60, wantEvents: 1, wantCount: 2},
	}
	for _, st := range steps {
		if st.util != nil {
			setUtilization(t, n, 0, *st.util)
		}
		n.clock.Set(st.at)
		s.SampleOnce(ctx)
		want := `# HELP gpulet_device_allocated_idle_seconds How long a device allocated to a pod has stayed idle (under the utilization threshold, or for a MIG device without a process); 0 while busy.
# TYPE gpulet_device_allocated_idle_seconds gauge
gpulet_device_allocated_idle_seconds{device="` + gpu.Name + `",namespace="team-a",pod="forgotten",uuid="` + gpu.UUID + `"} ` + strconv.FormatFloat(st.wantSeconds, 'g', -1, 64) + "\n"
		if err := testutil.CollectAndCompare(c, strings.NewReader(want), "gpulet_device_allocated_idle_seconds"); err != nil {
			t.Errorf("%s: %v", st.name, err)
		}
		evs := waitEvents(t, kube, st.wantEvents, st.wantCount)
		for _, ev := range evs {
			if ev.Regarding.Kind != "Pod" || ev.Regarding.Namespace != "team-a" || ev.Regarding.Name != "forgotten" ||
				ev.Reason != IdleEventReason || ev.Type != "Warning" || !strings.Contains(ev.Note, gpu.UUID) {
				t.Errorf("%s: event %+v: want a Warning %s on pod team-a/forgotten naming %s", st.name, ev, IdleEventReason, gpu.UUID)
			}
		}
	}
}

// waitEvents waits for the asynchronous recorder to have created want
// Events, the last with the given series count, and checks that no more
// arrive for a moment.
func waitEvents(t *testing.T, kube *fake.Clientset, want, count int) []eventsv1.Event {
	t.Helper()
	var got []eventsv1.Event
	deadline := time.Now().Add(5 * time.Second)
	settled := time.Time{}
	for time.Now().Before(deadline) {
		list, err := kube.EventsV1().Events("team-a").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got = list.Items
		if len(got) == want && (want == 0 || seriesCount(got[len(got)-1]) == count) {
			if settled.IsZero() {
				settled = time.Now()
			}
			if time.Since(settled) > 200*time.Millisecond {
				return got
			}
		} else {
			settled = time.Time{}
		}
		time.Sleep(20 * time.Millisecond)
	}
	last := 0
	if len(got) > 0 {
		last = seriesCount(got[len(got)-1])
	}
	t.Fatalf("events: got %d (last count %d), want %d (count %d)", len(got), last, want, count)
	return nil
}

func seriesCount(ev eventsv1.Event) int {
	if ev.Series == nil {
		return 1
	}
	return int(ev.Series.Count)
}

func ptr[T any](v T) *T { return &v }
