package v1

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Defaults of the gpulet section.
const (
	// DefaultDeviceListStrategy passes CDI device names through the CRI:
	// no NVIDIA runtime needed, and only the allocated devices are injected.
	DefaultDeviceListStrategy = DeviceListStrategyCDICRI
	// DefaultRecoveryQuietPeriod is how long a device stays unhealthy after a
	// transient error before it is offered again.
	DefaultRecoveryQuietPeriod = 5 * time.Minute
	// DefaultDRADriverName is the DRA driver name.
	DefaultDRADriverName = "gpu.gpulet.dev"
	// DefaultSampleInterval is how often telemetry is sampled.
	DefaultSampleInterval = time.Second
	// DefaultIdleUtilizationThreshold is the utilization below which an
	// allocated device counts as idle.
	DefaultIdleUtilizationThreshold = 0.05
)

// Limits on the metrics sample interval: faster than NVML's counters update
// is wasted work, slower than a minute blurs every rate.
const (
	minSampleInterval = 100 * time.Millisecond
	maxSampleInterval = time.Minute
)

// DefaultIgnoredXIDs returns the XIDs that the health checker ignores by
// default: errors an application causes on its own context (13 graphics
// engine exception, 31 memory page fault, 43 GPU stopped processing, 45
// preemptive cleanup, 68 video processor exception, 109 context switch
// timeout), after which the GPU is fine for the next workload. NVIDIA's
// plugin ignores the same list.
func DefaultIgnoredXIDs() []uint64 {
	return []uint64{13, 31, 43, 45, 68, 109}
}

// Gpulet holds gpulet's own settings, the "gpulet:" section of the file.
type Gpulet struct {
	// DeviceListStrategy is how the device plugin passes devices:
	// "cdi-cri" (default) or "envvar" (NVIDIA_VISIBLE_DEVICES, for nodes
	// whose runtime is the NVIDIA container runtime without CDI).
	DeviceListStrategy DeviceListStrategy `json:"deviceListStrategy,omitempty"`
	// Health configures device health checking.
	Health Health `json:"health,omitzero"`
	// DevicePlugin configures the kubelet device plugin API.
	DevicePlugin DevicePlugin `json:"devicePlugin,omitzero"`
	// DRA configures the DRA driver.
	DRA DRA `json:"dra,omitzero"`
	// Metrics configures the Prometheus metrics.
	Metrics Metrics `json:"metrics,omitzero"`
}

// Health configures device health checking.
type Health struct {
	// Disabled turns health checking off: every device stays healthy.
	Disabled bool `json:"disabled,omitempty"`
	// IgnoredXIDs are XIDs that do not make a device unhealthy. Unset means
	// [DefaultIgnoredXIDs]; an empty list ignores none.
	IgnoredXIDs []uint64 `json:"ignoredXids"`
	// RecoveryQuietPeriod is how long a device that had a transient error
	// must stay quiet before it is healthy again. Zero means the default, 5m:
	// long enough that a device failing every few minutes is not offered to
	// pod after pod in between, short enough that a one-off error costs little
	// capacity. Set a small value such as "1s" to recover at once.
	RecoveryQuietPeriod Duration `json:"recoveryQuietPeriod,omitzero"`
}

// DevicePlugin configures the kubelet device plugin API.
type DevicePlugin struct {
	// Enabled serves nvidia.com/gpu and friends. Unset means true: gpulet is
	// a drop-in for NVIDIA's plugin.
	Enabled *bool `json:"enabled,omitempty"`
}

// DRA configures the DRA driver.
type DRA struct {
	// Enabled publishes ResourceSlices and serves claims. Default false:
	// with the device plugin also on, the scheduler would count each GPU
	// twice, so running both is a choice to make on purpose.
	Enabled bool `json:"enabled,omitempty"`
	// DriverName is the DRA driver name. Default gpu.gpulet.dev.
	DriverName string `json:"driverName,omitempty"`
	// Sharing configures how devices may be shared between claims.
	Sharing DRASharing `json:"sharing,omitzero"`
}

// DRASharing configures how DRA devices may be shared between claims.
type DRASharing struct {
	// ConsumableCapacity publishes GPUs that several claims can share, each
	// requesting part of the GPU's memory.
	ConsumableCapacity ConsumableCapacity `json:"consumableCapacity,omitzero"`
}

// ConsumableCapacity configures GPUs shared through DRA consumable capacity.
type ConsumableCapacity struct {
	// Enabled publishes GPUs with allowMultipleAllocations and a "memory"
	// capacity that claims consume. Default false (beta in Kubernetes 1.37).
	Enabled bool `json:"enabled,omitempty"`
}

// Metrics configures the Prometheus metrics.
type Metrics struct {
	// SampleInterval is how often telemetry is read from NVML, between 100ms
	// and 1m. Zero means the default, 1s: NVML's utilization counters move
	// about that often, and one second is cheap.
	SampleInterval Duration `json:"sampleInterval,omitzero"`
	// Idle configures idle-allocation detection.
	Idle Idle `json:"idle,omitzero"`
}

// Idle configures the detection of allocated devices that are not used.
type Idle struct {
	// UtilizationThreshold is the utilization ratio (0 to 1) below which an
	// allocated device counts as idle. Unset means 0.05.
	UtilizationThreshold *float64 `json:"utilizationThreshold,omitempty"`
	// EventAfter, when non-zero, emits a Kubernetes event for a pod whose
	// device has been idle this long. Zero (default) emits none.
	EventAfter Duration `json:"eventAfter,omitzero"`
}

// setDefaults fills unset fields of the gpulet section.
func (g *Gpulet) setDefaults() {
	if g.DeviceListStrategy == "" {
		g.DeviceListStrategy = DefaultDeviceListStrategy
	}
	if g.Health.IgnoredXIDs == nil {
		g.Health.IgnoredXIDs = DefaultIgnoredXIDs()
	}
	if g.Health.RecoveryQuietPeriod.Duration == 0 {
		g.Health.RecoveryQuietPeriod.Duration = DefaultRecoveryQuietPeriod
	}
	if g.DevicePlugin.Enabled == nil {
		g.DevicePlugin.Enabled = ptr(true)
	}
	if g.DRA.DriverName == "" {
		g.DRA.DriverName = DefaultDRADriverName
	}
	if g.Metrics.SampleInterval.Duration == 0 {
		g.Metrics.SampleInterval.Duration = DefaultSampleInterval
	}
	if g.Metrics.Idle.UtilizationThreshold == nil {
		g.Metrics.Idle.UtilizationThreshold = ptr(DefaultIdleUtilizationThreshold)
	}
}

// validate checks the gpulet section. Unset fields are valid: they take
// their defaults.
func (g *Gpulet) validate() error {
	var errs []error
	if g.DeviceListStrategy != "" {
		errs = append(errs, oneOf("gpulet.deviceListStrategy", g.DeviceListStrategy, DeviceListStrategyCDICRI, DeviceListStrategyEnvVar))
	}
	for i, xid := range g.Health.IgnoredXIDs {
		if xid == 0 {
			errs = append(errs, fmt.Errorf("gpulet.health.ignoredXids[%d]: must be >= 1, got 0", i))
		}
	}
	if d := g.Health.RecoveryQuietPeriod.Duration; d < 0 {
		errs = append(errs, fmt.Errorf("gpulet.health.recoveryQuietPeriod: must be >= 0, got %s", d))
	}
	if name := g.DRA.DriverName; name != "" {
		// The name becomes a directory and socket name under the kubelet's
		// plugin directories, so it must be a plain DNS subdomain.
		if msgs := validation.IsDNS1123Subdomain(name); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("gpulet.dra.driverName: %q: %s", truncate(name), strings.Join(msgs, "; ")))
		} else if len(name) > 63 {
			errs = append(errs, fmt.Errorf("gpulet.dra.driverName: %q: must be at most 63 characters, got %d", truncate(name), len(name)))
		}
	}
	if d := g.Metrics.SampleInterval.Duration; d != 0 && (d < minSampleInterval || d > maxSampleInterval) {
		errs = append(errs, fmt.Errorf("gpulet.metrics.sampleInterval: must be between %s and %s, got %s", minSampleInterval, maxSampleInterval, d))
	}
	if t := g.Metrics.Idle.UtilizationThreshold; t != nil && (math.IsNaN(*t) || *t < 0 || *t > 1) {
		errs = append(errs, fmt.Errorf("gpulet.metrics.idle.utilizationThreshold: must be a ratio between 0 and 1, got %v", *t))
	}
	if d := g.Metrics.Idle.EventAfter.Duration; d < 0 {
		errs = append(errs, fmt.Errorf("gpulet.metrics.idle.eventAfter: must be >= 0, got %s", d))
	}
	return errors.Join(errs...)
}

// warnings lists settings of the gpulet section that have no effect.
func (g *Gpulet) warnings() []string {
	var w []string
	pluginOn := g.DevicePlugin.Enabled == nil || *g.DevicePlugin.Enabled
	if !pluginOn && !g.DRA.Enabled {
		w = append(w, "gpulet: devicePlugin.enabled and dra.enabled are both false: gpulet serves metrics only")
	}
	if g.DRA.Sharing.ConsumableCapacity.Enabled && !g.DRA.Enabled {
		w = append(w, "gpulet.dra.sharing.consumableCapacity.enabled: has no effect while gpulet.dra.enabled is false")
	}
	return w
}
