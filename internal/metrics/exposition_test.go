package metrics

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"

	"github.com/gpulet/gpulet/internal/health"
)

// TestCachedExposition checks that /metrics as served from the cache
// says exactly what promhttp would, and is rendered again when the
// snapshot, health or (after maxAge) gpulet's own metrics change.
func TestCachedExposition(t *testing.T) {
	n := newTestNode(t, "machine: dgx-h100\nnodeSeed: cache\ngpus: 2\n")
	s := NewSampler(SamplerOptions{Source: n.Adapter, Inventory: n.Inventory, ProcRoot: n.procRoot, Now: n.clock.Now, ReadTimeout: 10 * time.Second})
	gpu := n.Inventory.GPUs[0].UUID
	h := &mutableHealth{states: map[string]health.State{gpu: {Healthy: true}}}
	devices := NewCollector(s, h)
	live := prometheus.NewRegistry()
	ops := NewOps(live)

	devReg := prometheus.NewRegistry()
	devReg.MustRegister(devices)
	now := t0
	handler := newMetricsHandler(klog.Background(), devReg, deviceVersion(s, h), live, time.Second)
	handler.now = func() time.Time { return now }
	reference := promhttp.HandlerFor(prometheus.Gatherers{devReg, live}, promhttp.HandlerOpts{})

	get := func(hd http.Handler, header http.Header) (string, http.Header) {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Header = header
		rec := httptest.NewRecorder()
		hd.ServeHTTP(rec, req)
		body := rec.Body.Bytes()
		if rec.Header().Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if body, err = io.ReadAll(zr); err != nil {
				t.Fatal(err)
			}
		}
		return string(body), rec.Header()
	}
	text := http.Header{"Accept": {"text/plain;version=0.0.4"}}
	gz := http.Header{"Accept": {"text/plain;version=0.0.4"}, "Accept-Encoding": {"gzip"}}
	proto := http.Header{"Accept": {"application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"}}

	s.SampleOnce(context.Background())
	steps := []struct {
		name   string
		change func()
		want   string
		absent string
	}{
		{name: "first render", want: `gpulet_device_healthy{device="` + n.Inventory.GPUs[0].Name + `",reason="",uuid="` + gpu + `"} 1`},
		{name: "health change shows at once", change: func() { h.set(gpu, health.State{Reason: health.ReasonXID}) }, want: `reason="xid"`},
		{name: "new snapshot shows at once", change: func() { n.clock.Set(time.Minute); s.SampleOnce(context.Background()) }, want: "gpulet_sample_timestamp_seconds 1.79543526e+09"},
		{name: "own metrics wait for maxAge", change: func() { ops.ObserveConfigReload(nil) }, want: `gpulet_config_reloads_total{result="ok"} 0`},
		{name: "and show after it", change: func() { now = now.Add(time.Second) }, want: `gpulet_config_reloads_total{result="ok"} 1`},
	}
	for _, st := range steps {
		if st.change != nil {
			st.change()
		}
		plain, hdr := get(handler, text)
		if !strings.Contains(plain, st.want) {
			t.Errorf("%s: body lacks %q", st.name, st.want)
		}
		if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
			t.Errorf("%s: Content-Type %q", st.name, ct)
		}
		if zipped, _ := get(handler, gz); zipped != plain {
			t.Errorf("%s: the gzipped body differs from the plain one", st.name)
		}
	}

	// Once fresh, the cached body is what promhttp says of the same gatherers.
	now = now.Add(time.Second)
	if got, want := sortedLines(get(handler, text)), sortedLines(get(reference, text)); got != want {
		t.Errorf("cached body differs from promhttp's:\n%s", lineDiff(want, got))
	}
	// Protobuf goes to promhttp.
	if _, hdr := get(handler, proto); !strings.Contains(hdr.Get("Content-Type"), "protobuf") {
		t.Errorf("protobuf request answered with %q", hdr.Get("Content-Type"))
	}
}

func sortedLines(s string, _ http.Header) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// mutableHealth is a HealthSource a test changes.
type mutableHealth struct {
	states map[string]health.State
}

func (m *mutableHealth) set(uuid string, st health.State)        { m.states[uuid] = st }
func (m *mutableHealth) States() map[string]health.State         { return m.states }
func (m *mutableHealth) XIDCounts() map[string]map[uint64]uint64 { return nil }
