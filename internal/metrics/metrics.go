// Package metrics tells Prometheus how the node's GPUs are used and by
// whom, cheaply.
//
// A Sampler reads every GPU and MIG device through NVML on its own
// schedule (1s by default) into an immutable Snapshot: telemetry, with
// utilization averaged over NVML's samples since the previous reading;
// who holds each device, from the ledger and the kubelet's PodResources
// API; device memory per pod, from NVML's running processes and their
// cgroups; and how long each allocated device has stayed idle, with a
// Kubernetes Event when that passes a limit. A Collector renders the
// latest snapshot and the health monitor's states at scrape time, so a
// scrape never calls NVML and many scrapers cost no more than one. Ops
// records gpulet's own work (allocations, their latency, config reloads,
// failed NVML reads). Server serves it all with the Prometheus
// exporter-toolkit (TLS and basic auth from its web config file), with
// /healthz and /readyz beside /metrics.
//
// Metric names are prefixed gpulet_, in base units (bytes, seconds,
// watts, joules, hertz, celsius), counters end in _total and ratios in
// _ratio.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Config is what Run needs: the endpoint, the sampler, and where health
// comes from.
type Config struct {
	Server  ServerOptions
	Sampler SamplerOptions
	// Registry holds gpulet's own metrics (usually Ops); Run adds the Go
	// and process collectors. The device metrics are served beside it.
	Registry *prometheus.Registry
	// Health is the health monitor (optional).
	Health HealthSource
}

// Run starts the endpoint and the sampler and serves until ctx ends. A
// bad web config file or a taken address is returned at once.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Registry == nil {
		return errors.New("metrics: no registry")
	}
	sampler := NewSampler(cfg.Sampler)
	if err := RegisterRuntime(cfg.Registry); err != nil {
		return err
	}
	opts := cfg.Server
	opts.Devices = NewCollector(sampler, cfg.Health)
	if opts.MaxAge <= 0 {
		opts.MaxAge = sampler.opts.Interval
	}
	opts.Gatherer, opts.Registerer = cfg.Registry, cfg.Registry
	srv, err := NewServer(ctx, opts)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = sampler.Run(ctx)
	}()
	err = srv.Run(ctx)
	cancel()
	wg.Wait()
	return err
}

// RegisterRuntime adds the Go runtime and process collectors to reg:
// gpulet's own CPU, memory and file descriptors.
func RegisterRuntime(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("metrics: register collector: %w", err)
		}
	}
	return nil
}
