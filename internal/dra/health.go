package dra

import (
	"context"
	"time"

	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/gpulet/gpulet/internal/health"
)

// WatchHealthStatus implements kubeletplugin.DRAPlugin: it reports every
// published device's health to the kubelet (which shows it in the status
// of pods using the device), at once, on every change, and again every
// HealthResend so the kubelet's lease does not run out. A MIG placement
// or a shared twin has its GPU's health, or worse.
func (d *Driver) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	if d.opts.Health == nil {
		return kubeletplugin.ErrHealthNotSupported
	}
	updates, stop := d.opts.Health.Subscribe()
	defer stop()
	ticker := time.NewTicker(d.opts.HealthResend)
	defer ticker.Stop()
	var states map[string]health.State
	for {
		select {
		case <-ctx.Done():
			return nil
		case u := <-updates:
			states = u.States
		case <-ticker.C:
		}
		select {
		case <-ctx.Done():
			return nil
		case reports <- d.healthReport(states):
		}
	}
}

// healthReport is the health of every device the driver publishes.
func (d *Driver) healthReport(states map[string]health.State) kubeletplugin.DeviceHealthReport {
	d.mu.Lock()
	cat := d.cat
	d.mu.Unlock()
	now := time.Now()
	timeout := 3 * d.opts.HealthResend
	report := kubeletplugin.DeviceHealthReport{Devices: make([]kubeletplugin.DeviceHealth, 0, len(cat.devices))}
	for _, dev := range cat.devices {
		h := kubeletplugin.DeviceHealth{
			PoolName:           d.pool,
			DeviceName:         dev.name,
			Health:             kubeletplugin.HealthStatusHealthy,
			LastUpdated:        now,
			HealthCheckTimeout: timeout,
		}
		if st, ok := deviceHealth(dev, states); !ok {
			h.Health = kubeletplugin.HealthStatusUnhealthy
			h.Message = string(st.Reason)
			if st.Message != "" {
				h.Message += ": " + st.Message
			}
			if !st.Since.IsZero() {
				h.LastUpdated = st.Since
			}
		}
		report.Devices = append(report.Devices, h)
	}
	return report
}
