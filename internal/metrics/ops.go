package metrics

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/nvml"
)

// Ops records what gpulet itself does: allocations through either API and
// how long they took, config reloads, failed NVML calls. The device plugin,
// the DRA driver and the config watcher call it. All methods are safe on a
// nil *Ops (recording nothing), so a caller built without metrics needs no
// checks.
type Ops struct {
	allocations      *prometheus.CounterVec
	allocateSeconds  *prometheus.HistogramVec
	prepareSeconds   prometheus.Histogram
	unprepareSeconds prometheus.Histogram
	reloads          *prometheus.CounterVec
	lastReloadOK     prometheus.Gauge
	nvmlErrors       *prometheus.CounterVec
}

// latencyBuckets span a fast Allocate (milliseconds) to a Prepare that
// creates a MIG device (seconds).
var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// Results of an operation, as label values.
const (
	resultOK     = "ok"
	resultFailed = "failed"
)

// NewOps creates gpulet's own metrics and registers them with reg.
func NewOps(reg prometheus.Registerer) *Ops {
	o := &Ops{
		allocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gpulet_allocations_total",
			Help: "Allocations gpulet handled, by kubelet API (device-plugin: Allocate calls; dra: claims prepared) and result.",
		}, []string{"api", "result"}),
		allocateSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gpulet_device_plugin_allocate_duration_seconds",
			Help:    "Time the device plugin's Allocate calls took, by resource name.",
			Buckets: latencyBuckets,
		}, []string{"resource"}),
		prepareSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "gpulet_dra_prepare_duration_seconds",
			Help:    "Time preparing one DRA claim took (creating MIG devices and writing CDI specs included).",
			Buckets: latencyBuckets,
		}),
		unprepareSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "gpulet_dra_unprepare_duration_seconds",
			Help:    "Time unpreparing one DRA claim took.",
			Buckets: latencyBuckets,
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gpulet_config_reloads_total",
			Help: "Config file reloads, by result (a failed reload keeps the last good config).",
		}, []string{"result"}),
		lastReloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gpulet_config_last_reload_successful",
			Help: "Whether the last config reload succeeded (1) or was rejected (0).",
		}),
		nvmlErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gpulet_nvml_errors_total",
			Help: "Failed NVML reads, by call and reason (gpu_lost, not_found, timeout, no_answer, other).",
		}, []string{"call", "reason"}),
	}
	for _, api := range []ledger.API{ledger.DevicePlugin, ledger.DRA} {
		for _, r := range []string{resultOK, resultFailed} {
			o.allocations.WithLabelValues(string(api), r)
		}
	}
	for _, r := range []string{resultOK, resultFailed} {
		o.reloads.WithLabelValues(r)
	}
	o.lastReloadOK.Set(1)
	reg.MustRegister(o.allocations, o.allocateSeconds, o.prepareSeconds, o.unprepareSeconds, o.reloads, o.lastReloadOK, o.nvmlErrors)
	return o
}

func result(err error) string {
	if err != nil {
		return resultFailed
	}
	return resultOK
}

// ObserveAllocate records one device-plugin Allocate call on a resource
// (it is the device plugin's Observer).
func (o *Ops) ObserveAllocate(resource string, took time.Duration, err error) {
	if o == nil {
		return
	}
	o.allocations.WithLabelValues(string(ledger.DevicePlugin), result(err)).Inc()
	o.allocateSeconds.WithLabelValues(resource).Observe(took.Seconds())
}

// ObservePrepare records preparing one DRA claim.
func (o *Ops) ObservePrepare(took time.Duration, err error) {
	if o == nil {
		return
	}
	o.allocations.WithLabelValues(string(ledger.DRA), result(err)).Inc()
	o.prepareSeconds.Observe(took.Seconds())
}

// ObserveUnprepare records unpreparing one DRA claim.
func (o *Ops) ObserveUnprepare(took time.Duration, _ error) {
	if o == nil {
		return
	}
	o.unprepareSeconds.Observe(took.Seconds())
}

// ObserveConfigReload records a config reload: nil for one applied, the
// error for one rejected.
func (o *Ops) ObserveConfigReload(err error) {
	if o == nil {
		return
	}
	o.reloads.WithLabelValues(result(err)).Inc()
	if err != nil {
		o.lastReloadOK.Set(0)
	} else {
		o.lastReloadOK.Set(1)
	}
}

// ObserveNVMLError records a failed NVML read by the name of the call
// ("telemetry", "processes", ...). A nil error records nothing.
func (o *Ops) ObserveNVMLError(call string, err error) {
	if o == nil || err == nil {
		return
	}
	o.nvmlErrors.WithLabelValues(call, nvmlReason(err)).Inc()
}

// errNoAnswer is a device that did not answer within the read timeout.
var errNoAnswer = errors.New("no answer within the read timeout")

func nvmlReason(err error) string {
	switch {
	case errors.Is(err, nvml.ErrGPULost):
		return "gpu_lost"
	case errors.Is(err, nvml.ErrNotFound):
		return "not_found"
	case errors.Is(err, nvml.ErrTimeout):
		return "timeout"
	case errors.Is(err, errNoAnswer):
		return "no_answer"
	}
	return "other"
}
