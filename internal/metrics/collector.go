package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/ledger"
)

// SnapshotSource hands out the latest snapshot; *Sampler is one.
type SnapshotSource interface {
	Snapshot() *Snapshot
}

// HealthSource reports device health and XID counts; *health.Monitor is
// one.
type HealthSource interface {
	States() map[string]health.State
	XIDCounts() map[string]map[uint64]uint64
}

// Collector renders the sampler's latest snapshot and the health
// monitor's states at scrape time. It never calls NVML.
type Collector struct {
	snaps  SnapshotSource
	health HealthSource

	info, utilization, memUtilization, memUsed, memTotal,
	power, powerLimit, energy, temperature, smClock, ecc, xid,
	healthy, allocation, allocated, podMemory, idle, sampleTime *prometheus.Desc
}

// deviceLabels name a device on every per-device metric.
var deviceLabels = []string{"device", "uuid"}

func deviceDesc(name, help string, extra ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, append(append([]string(nil), deviceLabels...), extra...), nil)
}

// NewCollector returns a collector of snaps and h (h may be nil: no health
// or XID metrics).
func NewCollector(snaps SnapshotSource, h HealthSource) *Collector {
	return &Collector{
		snaps:  snaps,
		health: h,
		info: deviceDesc("gpulet_device_info",
			"A GPU or MIG device of this node: its model, driver, MIG profile and parent GPU (empty for a GPU). Always 1.",
			"model", "driver_version", "mig_profile", "parent"),
		utilization: deviceDesc("gpulet_device_utilization_ratio",
			"Fraction of time a kernel ran on the GPU, averaged over NVML's samples since the previous reading (absent for MIG devices: NVML does not report it)."),
		memUtilization: deviceDesc("gpulet_device_memory_utilization_ratio",
			"Fraction of time device memory was read or written, averaged like gpulet_device_utilization_ratio."),
		memUsed:     deviceDesc("gpulet_device_memory_used_bytes", "Device memory in use, the driver's reserve included."),
		memTotal:    deviceDesc("gpulet_device_memory_total_bytes", "Device memory in total."),
		power:       deviceDesc("gpulet_device_power_watts", "Power draw."),
		powerLimit:  deviceDesc("gpulet_device_power_limit_watts", "Enforced power limit."),
		energy:      deviceDesc("gpulet_device_energy_joules_total", "Energy used since the driver loaded."),
		temperature: deviceDesc("gpulet_device_temperature_celsius", "GPU core temperature."),
		smClock:     deviceDesc("gpulet_device_sm_clock_hertz", "Current SM clock."),
		ecc: deviceDesc("gpulet_device_ecc_errors_total",
			"Memory ECC errors since the driver loaded (volatile counts), by type (corrected: single-bit, uncorrected: double-bit).", "type"),
		xid: deviceDesc("gpulet_device_xid_errors_total",
			"XID errors the GPU reported since gpulet started, by XID (application XIDs included).", "xid"),
		healthy: deviceDesc("gpulet_device_healthy",
			"Whether the device is healthy (1) or not (0); reason says why not (gpu-lost, xid, ecc-double-bit, ...).", "reason"),
		allocation: deviceDesc("gpulet_device_allocation_info",
			"Who holds a device: one series per holder, from the ledger and the kubelet's PodResources API. Always 1.",
			"namespace", "pod", "container", "claim", "api"),
		allocated: prometheus.NewDesc("gpulet_allocated_devices",
			"Devices (GPUs and MIG devices) held now, by the kubelet API that holds them.", []string{"api"}, nil),
		podMemory: deviceDesc("gpulet_pod_memory_used_bytes",
			"Device memory the processes of one container use on a device (from NVML's running processes and their cgroups); namespace, pod and container are empty when the pod cannot be named.",
			"namespace", "pod", "pod_uid", "container"),
		idle: deviceDesc("gpulet_device_allocated_idle_seconds",
			"How long a device allocated to a pod has stayed idle (under the utilization threshold, or for a MIG device without a process); 0 while busy.",
			"namespace", "pod"),
		sampleTime: prometheus.NewDesc("gpulet_sample_timestamp_seconds",
			"When the telemetry sampler took the snapshot these metrics come from (Unix time).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.info, c.utilization, c.memUtilization, c.memUsed, c.memTotal,
		c.power, c.powerLimit, c.energy, c.temperature, c.smClock, c.ecc, c.xid, c.healthy,
		c.allocation, c.allocated, c.podMemory, c.idle, c.sampleTime} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	snap := c.snaps.Snapshot()
	if snap == nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	var states map[string]health.State
	var xids map[string]map[uint64]uint64
	if c.health != nil {
		states, xids = c.health.States(), c.health.XIDCounts()
	}

	gauge(c.sampleTime, float64(snap.Time.UnixNano())/1e9)
	for _, d := range snap.Devices {
		gauge(c.info, 1, d.Name, d.UUID, d.Model, snap.DriverVersion, d.Profile, d.Parent)
		if st, ok := states[d.UUID]; ok {
			gauge(c.healthy, boolValue(st.Healthy), d.Name, d.UUID, string(st.Reason))
		}
		for x, n := range xids[d.UUID] {
			counter(c.xid, float64(n), d.Name, d.UUID, strconv.FormatUint(x, 10))
		}
		if !d.OK {
			continue
		}
		t := d.Telemetry
		optional(gauge, c.utilization, t.GPUUtilization, d)
		optional(gauge, c.memUtilization, t.MemoryUtilization, d)
		optional(gauge, c.power, t.PowerWatts, d)
		optional(gauge, c.powerLimit, t.PowerLimitWatts, d)
		optional(counter, c.energy, t.EnergyJoules, d)
		optional(gauge, c.temperature, t.TemperatureCelsius, d)
		optional(gauge, c.smClock, t.SMClockHz, d)
		if t.MemoryUsedBytes != nil {
			gauge(c.memUsed, float64(*t.MemoryUsedBytes), d.Name, d.UUID)
		}
		if t.MemoryTotalBytes != nil {
			gauge(c.memTotal, float64(*t.MemoryTotalBytes), d.Name, d.UUID)
		}
		if t.ECCCorrected != nil {
			counter(c.ecc, float64(*t.ECCCorrected), d.Name, d.UUID, "corrected")
		}
		if t.ECCUncorrected != nil {
			counter(c.ecc, float64(*t.ECCUncorrected), d.Name, d.UUID, "uncorrected")
		}
	}

	held := map[ledger.API]map[string]bool{ledger.DevicePlugin: {}, ledger.DRA: {}}
	for _, a := range snap.Allocations {
		gauge(c.allocation, 1, a.Device, a.UUID, a.Namespace, a.Pod, a.Container, a.Claim, string(a.API))
		if held[a.API] == nil {
			held[a.API] = map[string]bool{}
		}
		held[a.API][a.UUID] = true
	}
	for api, devs := range held {
		gauge(c.allocated, float64(len(devs)), string(api))
	}
	for _, m := range snap.PodMemory {
		gauge(c.podMemory, float64(m.Bytes), m.Device, m.UUID, m.Namespace, m.Pod, m.PodUID, m.Container)
	}
	for _, i := range snap.Idle {
		gauge(c.idle, i.Seconds, i.Device, i.UUID, i.Namespace, i.Pod)
	}
}

func optional(emit func(*prometheus.Desc, float64, ...string), d *prometheus.Desc, v *float64, dev DeviceSample) {
	if v != nil {
		emit(d, *v, dev.Name, dev.UUID)
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
