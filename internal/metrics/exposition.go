package metrics

import (
	"bytes"
	"compress/gzip"
	"hash/fnv"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	"k8s.io/klog/v2"
)

// metricsHandler serves /metrics so that many scrapers cost no more than
// one. The device metrics change only when the sampler publishes a
// snapshot (or health changes): their text is encoded once per snapshot.
// gpulet's own, Go and process metrics are gathered again once maxAge has
// passed (the sampler's interval: nothing is staler than the device
// metrics). The body, and its gzip, are built once and reused by every
// scrape until one of them changes. Formats other than the classic text
// format (protobuf, which Prometheus asks for when it scrapes native
// histograms) are served by promhttp over both gatherers, uncached.
type metricsHandler struct {
	devices  prometheus.Gatherer // the device Collector alone
	version  func() uint64       // changes whenever the device metrics may
	live     prometheus.Gatherer
	maxAge   time.Duration
	now      func() time.Time
	fallback http.Handler
	formats  []expfmt.Format // what promhttp would negotiate among
	logger   klog.Logger

	// mu is held while a body is built, so concurrent scrapers wait for
	// one build instead of each doing it.
	mu         sync.Mutex
	format     expfmt.Format
	deviceKey  uint64
	deviceText []byte
	liveAt     time.Time
	body       []byte
	gzipped    []byte
}

func newMetricsHandler(logger klog.Logger, devices prometheus.Gatherer, version func() uint64, live prometheus.Gatherer, maxAge time.Duration) *metricsHandler {
	return &metricsHandler{
		devices:  devices,
		version:  version,
		live:     live,
		maxAge:   maxAge,
		now:      time.Now,
		fallback: promhttp.HandlerFor(prometheus.Gatherers{devices, live}, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}),
		formats:  expfmt.DefaultAcceptedFormats(),
		logger:   logger,
	}
}

// ServeHTTP implements http.Handler.
func (h *metricsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	format := expfmt.NegotiateAccept(r.Header, h.formats...)
	if format.FormatType() != expfmt.TypeTextPlain {
		h.fallback.ServeHTTP(w, r)
		return
	}
	gz := acceptsGzip(r)
	body := h.render(format, gz)
	w.Header().Set("Content-Type", string(format))
	if gz {
		w.Header().Set("Content-Encoding", "gzip")
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}

// render returns the body for format, gzipped or not, building what is
// out of date.
func (h *metricsHandler) render(format expfmt.Format, gz bool) []byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	key := h.version()
	fresh := format == h.format && h.body != nil
	if !fresh || key != h.deviceKey {
		var err error
		if h.deviceText, err = encode(h.devices, format); err != nil {
			h.logger.Error(err, "Rendering device metrics")
		}
		h.deviceKey = key
		fresh = false
	}
	if !fresh || now.Sub(h.liveAt) >= h.maxAge {
		live, err := encode(h.live, format)
		if err != nil {
			// Served partially, as promhttp's ContinueOnError does.
			h.logger.V(2).Info("Rendering gpulet's own metrics", "err", err)
		}
		h.body = append(append(make([]byte, 0, len(h.deviceText)+len(live)), h.deviceText...), live...)
		h.format, h.liveAt, h.gzipped = format, now, nil
	}
	if !gz {
		return h.body
	}
	if h.gzipped == nil {
		var buf bytes.Buffer
		// Speed over ratio: the text still shrinks about tenfold, and the
		// CPU is the node's.
		w, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
		_, _ = w.Write(h.body)
		_ = w.Close()
		h.gzipped = buf.Bytes()
	}
	return h.gzipped
}

// encode gathers g and renders it in format; what could be gathered is
// rendered even when an error is returned.
func encode(g prometheus.Gatherer, format expfmt.Format) ([]byte, error) {
	var buf bytes.Buffer
	mfs, err := g.Gather()
	enc := expfmt.NewEncoder(&buf, format)
	for _, mf := range mfs {
		if eerr := enc.Encode(mf); eerr != nil && err == nil {
			err = eerr
		}
	}
	return buf.Bytes(), err
}

func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		enc, q, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(enc), "gzip") && strings.TrimSpace(q) != "q=0" {
			return true
		}
	}
	return false
}

// deviceVersion is the version of what the device Collector would render
// now: the snapshot it reads and a fingerprint of the health states and
// XID counts (which change between snapshots).
func deviceVersion(snaps SnapshotSource, h HealthSource) func() uint64 {
	// Snapshots are immutable and published whole: their pointer is their
	// version. A counter keyed by pointer keeps the number stable.
	var (
		mu   sync.Mutex
		last *Snapshot
		seq  uint64
	)
	return func() uint64 {
		snap := snaps.Snapshot()
		mu.Lock()
		if snap != last {
			last, seq = snap, seq+1
		}
		v := seq
		mu.Unlock()
		if h == nil {
			return v
		}
		return v*1_000_003 ^ healthFingerprint(h)
	}
}

// healthFingerprint hashes every device's health and XID counts, order
// independently (a sum of per-entry hashes).
func healthFingerprint(h HealthSource) uint64 {
	var sum uint64
	entry := fnv.New64a()
	add := func(parts ...string) {
		entry.Reset()
		for _, p := range parts {
			_, _ = entry.Write([]byte(p))
			_, _ = entry.Write([]byte{0})
		}
		sum += entry.Sum64()
	}
	for uuid, st := range h.States() {
		add("s", uuid, strconv.FormatBool(st.Healthy), string(st.Reason))
	}
	for uuid, counts := range h.XIDCounts() {
		for x, n := range counts {
			add("x", uuid, strconv.FormatUint(x, 10), strconv.FormatUint(n, 10))
		}
	}
	return sum
}
