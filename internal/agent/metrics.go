package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"

	configv1 "github.com/gpulet/gpulet/api/config/v1"
	"github.com/gpulet/gpulet/internal/deviceplugin"
	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/metrics"
	"github.com/gpulet/gpulet/internal/nvml"
	"github.com/gpulet/gpulet/internal/podresources"
)

// metricsParts are what the metrics endpoint is built from: the registry
// and Ops exist before the device plugin and the config watcher, which
// record into them.
type metricsParts struct {
	registry  *prometheus.Registry
	ops       *metrics.Ops
	readiness *metrics.Readiness
}

func newMetricsParts() *metricsParts {
	reg := prometheus.NewRegistry()
	ready := metrics.NewReadiness(metrics.CheckNVML)
	// Run opens NVML and discovers the node before anything else is
	// built: by the time this exists, that check holds.
	ready.Set(metrics.CheckNVML, nil)
	return &metricsParts{registry: reg, ops: metrics.NewOps(reg), readiness: ready}
}

// registeredCheck is ready when the kubelet accepted every resource the
// device plugin serves.
func registeredCheck(dp *deviceplugin.Manager) func() error {
	return func() error {
		reg := dp.Registered()
		if len(reg) == 0 {
			return errors.New("no device-plugin resource registered with the kubelet yet")
		}
		var missing []string
		for name, ok := range reg {
			if !ok {
				missing = append(missing, name)
			}
		}
		if len(missing) > 0 {
			slices.Sort(missing)
			return fmt.Errorf("not registered with the kubelet: %s", strings.Join(missing, ", "))
		}
		return nil
	}
}

// idleOptions turns the config's idle section into the sampler's options,
// Events sent through recorder (nil: none).
func idleOptions(m configv1.Metrics, recorder events.EventRecorder) metrics.IdleOptions {
	idle := metrics.IdleOptions{EventAfter: m.Idle.EventAfter.Duration, Recorder: recorder}
	if m.Idle.UtilizationThreshold != nil {
		idle.Threshold = *m.Idle.UtilizationThreshold
	}
	return idle
}

// runMetrics serves the Prometheus endpoint and runs the telemetry
// sampler until ctx ends; configs from reloads retune the sampler (its
// interval and idle settings). Pod names (for per-pod memory) and idle
// Events need the API server; without a usable kubeconfig they are left
// out, and the rest is served.
func runMetrics(ctx context.Context, opts Options, cfg *configv1.Config, reloads <-chan *configv1.Config, parts *metricsParts,
	adapter *nvml.Adapter, inv *inventory.Inventory, led *ledger.Ledger, monitor *health.Monitor) error {
	logger := klog.FromContext(ctx).WithName("metrics")
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m := cfg.Gpulet.Metrics

	kubelet, err := podresources.Dial(podresources.SocketPath(opts.KubeletRoot), podresources.DefaultTimeout)
	if err != nil {
		return err
	}
	defer func() { _ = kubelet.Close() }()

	sampler := metrics.SamplerOptions{
		Source:       adapter,
		Inventory:    inv,
		Discover:     func() (*inventory.Inventory, error) { return inventory.Discover(adapter) },
		Interval:     m.SampleInterval.Duration,
		Ledger:       led,
		PodResources: kubelet,
		ProcRoot:     opts.ProcRoot,
		Ops:          parts.ops,
	}
	if cfg.Gpulet.DRA.DriverName != "" {
		sampler.DRADriverName = cfg.Gpulet.DRA.DriverName
	}
	var recorder events.EventRecorder
	if client, err := kubeClient(opts.Kubeconfig); err != nil {
		logger.Info("No API server: per-pod GPU memory is labelled by pod UID only, and no idle Events are sent", "err", err)
	} else {
		sampler.Pods = metrics.NewKubePods(client, opts.NodeName)
		// Started even with idle Events off, so a reload can turn them on.
		r, stop, err := metrics.StartEventRecorder(ctx, client, "gpulet")
		if err != nil {
			return err
		}
		defer stop()
		recorder = r
	}
	sampler.Idle = idleOptions(m, recorder)
	tunings := make(chan metrics.Tuning)
	sampler.Tunings = tunings
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case next := <-reloads:
				t := metrics.Tuning{Interval: next.Gpulet.Metrics.SampleInterval.Duration, Idle: idleOptions(next.Gpulet.Metrics, recorder)}
				select {
				case tunings <- t:
				case <-ctx.Done():
					return
				}
			}
		}
	}()

	var healthSource metrics.HealthSource
	if !cfg.Gpulet.Health.Disabled {
		healthSource = monitor
	}
	return metrics.Run(ctx, metrics.Config{
		Server: metrics.ServerOptions{
			Address:       opts.MetricsAddress,
			WebConfigFile: opts.WebConfigFile,
			Readiness:     parts.readiness,
		},
		Sampler:  sampler,
		Registry: parts.registry,
		Health:   healthSource,
	})
}

func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("API client config: %w", err)
	}
	rc.UserAgent = "gpulet-metrics"
	return kubernetes.NewForConfig(rc)
}
