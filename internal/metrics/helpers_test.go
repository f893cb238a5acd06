package metrics

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"

	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/nvml"
	"github.com/gpulet/gpulet/internal/nvml/gpusim"
	"github.com/gpulet/gpulet/internal/podresources"
	"github.com/gpulet/gpulet/internal/simnode"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// t0 is when simulated nodes start; sampling times are offsets from it.
var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// fakeClock is a settable clock shared by the simulator and the sampler.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: t0} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Set moves the clock to t0 plus d.
func (c *fakeClock) Set(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t0.Add(d)
}

// testNode is a simulated node with its clock and fake proc tree.
type testNode struct {
	*simnode.Node
	clock    *fakeClock
	procRoot string
}

func newTestNode(t testing.TB, stateYAML string) *testNode {
	t.Helper()
	clock := newClock()
	procRoot := t.TempDir()
	n := simnode.New(t, stateYAML, gpusim.WithClock(clock.Now), gpusim.WithProcRoot(procRoot))
	return &testNode{Node: n, clock: clock, procRoot: procRoot}
}

// staticPods is a PodLister that answers a fixed list.
type staticPods []podresources.Pod

func (s staticPods) List(context.Context) ([]podresources.Pod, error) { return s, nil }

// staticResolver names pods from a fixed table keyed by pod UID.
type staticResolver map[string]struct {
	ns, name   string
	containers map[string]string
}

func (s staticResolver) ResolvePod(_ context.Context, uid, containerID string) (PodInfo, bool) {
	p, ok := s[uid]
	if !ok {
		return PodInfo{}, false
	}
	return PodInfo{Namespace: p.ns, Name: p.name, UID: uid, Container: p.containers[containerID]}, true
}

// staticHealth is a HealthSource with fixed answers.
type staticHealth struct {
	states map[string]health.State
	xids   map[string]map[uint64]uint64
}

func (h staticHealth) States() map[string]health.State         { return h.states }
func (h staticHealth) XIDCounts() map[string]map[uint64]uint64 { return h.xids }

// exposition renders everything reg gathers in the text format.
func exposition(t testing.TB, reg prometheus.Gatherer) []byte {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatalf("encode %s: %v", mf.GetName(), err)
		}
	}
	return buf.Bytes()
}

// lint fails the test for every problem promlint finds.
func lint(t testing.TB, reg prometheus.Gatherer) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// golden compares got with testdata/<name>, or rewrites it with -update.
func golden(t testing.TB, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("exposition differs from %s (run go test -update to accept):\n%s", path, lineDiff(string(want), string(got)))
	}
}

// lineDiff lists the lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	count := map[string]int{}
	for _, l := range splitLines(want) {
		count[l]++
	}
	for _, l := range splitLines(got) {
		count[l]--
	}
	var b bytes.Buffer
	for _, l := range splitLines(want) {
		if count[l] > 0 {
			b.WriteString("- " + l + "\n")
			count[l]--
		}
	}
	for _, l := range splitLines(got) {
		if count[l] < 0 {
			b.WriteString("+ " + l + "\n")
			count[l]++
		}
	}
	return b.String()
}

func splitLines(s string) []string {
	var out []string
	for _, l := range bytes.Split([]byte(s), []byte("\n")) {
		out = append(out, string(l))
	}
	return out
}

func systemFixture() nvml.System { return nvml.System{DriverVersion: "550.54.15"} }

// deviceFixture is two GPUs as discovery reports them: a whole GPU, and a
// GPU in MIG mode with one 1g.10gb device at slice 2.
func deviceFixture() []nvml.Device {
	const parent = "GPU-11111111-1111-1111-1111-111111111111"
	return []nvml.Device{
		{Index: 0, UUID: "GPU-00000000-0000-0000-0000-000000000000", Name: "NVIDIA H100 80GB HBM3"},
		{Index: 1, UUID: parent, Name: "NVIDIA H100 80GB HBM3", MIG: &nvml.MIG{Enabled: true, Devices: []nvml.MigDevice{{
			UUID: "MIG-22222222-2222-2222-2222-222222222222", ParentUUID: parent, Profile: "1g.10gb",
			Placement: nvml.Placement{Start: 2, Size: 1},
		}}}},
	}
}
