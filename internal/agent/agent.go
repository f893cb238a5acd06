// Package agent wires gpulet's parts together for `gpulet serve`: NVML,
// the inventory, health, the ledger, and the surfaces that publish them.
// It owns every goroutine it starts and waits for them on shutdown.
package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"time"

	"k8s.io/klog/v2"

	configv1 "github.com/gpulet/gpulet/api/config/v1"
	"github.com/gpulet/gpulet/internal/cdi"
	"github.com/gpulet/gpulet/internal/deviceplugin"
	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/metrics"
	"github.com/gpulet/gpulet/internal/nvml"
	"github.com/gpulet/gpulet/internal/podresources"
)

// Options are what `gpulet serve` is told on its command line.
type Options struct {
	// NVML says where NVML comes from.
	NVML nvml.Spec
	// ConfigFile is the config file ("" for defaults).
	ConfigFile string
	// NodeName is the Kubernetes node this agent serves.
	NodeName string
	// Kubeconfig is the kubeconfig file ("" for in-cluster config).
	Kubeconfig string
	// KubeletRoot is the kubelet's root directory.
	KubeletRoot string
	// CDIRoot is where CDI specs are written.
	CDIRoot string
	// CDIHookPath is nvidia-cdi-hook on the host, named in CDI specs.
	CDIHookPath string
	// StateDir holds gpulet's checkpoints (and the simulator's files).
	StateDir string
	// MetricsAddress is the Prometheus endpoint's listen address; empty
	// runs neither the endpoint nor the telemetry sampler.
	MetricsAddress string
	// WebConfigFile is the metrics endpoint's exporter-toolkit web config
	// (TLS, basic auth); "" serves plain HTTP.
	WebConfigFile string
	// ProcRoot is where processes' cgroups are read to attribute GPU
	// memory to pods; "" means /proc (the host's, with hostPID).
	ProcRoot string
}

// Run serves until ctx is cancelled. A bad config file is an error at
// start; NVML that cannot be initialised is retried with backoff, so a
// node whose driver is still loading comes up by itself.
func Run(ctx context.Context, opts Options) error {
	logger := klog.FromContext(ctx)
	cfg, warnings, err := loadConfig(opts.ConfigFile)
	if err != nil {
		return err
	}
	for _, w := range warnings {
		logger.Info("Config warning", "file", opts.ConfigFile, "warning", w)
	}

	backend, err := openNVML(ctx, opts)
	if err != nil {
		return err
	}
	if backend == nil {
		return nil // stopped while waiting for NVML
	}
	defer func() {
		if err := backend.Close(); err != nil {
			logger.Error(err, "Shutting NVML down")
		}
	}()
	if backend.Sim != nil {
		logger.Info("Using the simulated NVML backend: edit the state file to change the node or inject faults",
			"stateFile", backend.StateFile, "driverRoot", backend.DriverRoot)
	}
	inv, err := inventory.Discover(backend.Adapter)
	if inv == nil {
		return err
	}
	if err != nil {
		logger.Error(err, "Some GPUs could not be read; serving the others")
	}
	for _, g := range inv.GPUs {
		logger.Info("Found GPU", "index", g.Index, "uuid", g.UUID, "name", g.Name, "product", g.Device.Name,
			"memoryBytes", g.MemoryBytes, "migEnabled", g.MigEnabled(), "migDevices", len(g.MigDevices))
	}

	led, ledgerSetAside, err := openLedger(logger, filepath.Join(opts.StateDir, "ledger.json"))
	if err != nil {
		return err
	}
	// Runs after every goroutine below has stopped (wg.Wait is deferred
	// later): folds the journal into the snapshot.
	defer func() {
		if err := led.Close(); err != nil {
			logger.Error(err, "Closing the ledger")
		}
	}()
	cdiGen, err := cdi.New(ctx, cdiOptions(opts, cfg, backend))
	if err != nil {
		return err
	}
	if err := cdiGen.WriteNodeSpec(ctx, inv); err != nil {
		// Devices whose edits failed are left out of the spec and named
		// here; the others are served.
		logger.Error(err, "Writing the node's CDI spec")
	}
	logger.Info("CDI spec written", "path", cdiGen.NodeSpecPath(), "mode", cdiGen.Mode())
	monitor := health.New(backend.Adapter, healthDevices(inv), healthOptions(cfg))

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	spawn := func(name string, run func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	if !cfg.Gpulet.Health.Disabled {
		spawn("health", monitor.Run)
	}

	// Metrics (internal/metrics): Ops and readiness exist before what
	// records into them; the endpoint and sampler start below.
	mp := newMetricsParts()

	var dp *deviceplugin.Manager
	if devicePluginEnabled(cfg) {
		dir := filepath.Join(opts.KubeletRoot, "device-plugins")
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return fmt.Errorf("device plugin directory: %w", err)
		}
		dp = deviceplugin.NewManager(deviceplugin.Options{
			SocketDir: dir,
			Ledger:    led,
			Health:    monitor,
			CDIName:   cdiGen.DeviceName,
			Observer:  mp.ops,
		})
		dp.Update(inv, devicePluginConfig(cfg))
		spawn("device plugin", dp.Run)
		mp.readiness.AddFunc(metrics.CheckKubelet, registeredCheck(dp))

		// What pods hold through the device plugin is learnt from the
		// kubelet before the DRA driver may hand anything out, so a
		// restarted gpulet cannot give a pod's GPU to a claim.
		kubelet, err := podresources.Dial(podresources.SocketPath(opts.KubeletRoot), podresources.DefaultTimeout)
		if err != nil {
			return err
		}
		defer func() { _ = kubelet.Close() }()
		hs := &holdingsSync{kubelet: kubelet, dp: dp, ledger: led, every: 10 * time.Second, grace: 30 * time.Second}
		if err := hs.once(ctx); err != nil {
			logger.Info("The kubelet does not answer yet; device-plugin holdings will be learnt when it does", "err", err)
		}
		spawn("device-plugin holdings", hs.run)
	}

	// DRA driver (internal/dra): publishes ResourceSlices and serves
	// claims through the kubelet's DRA plugin API.
	if cfg.Gpulet.DRA.Enabled {
		mp.readiness.Set(metrics.CheckSlices, errors.New("ResourceSlices not published yet"))
		drv, err := newDRADriver(ctx, opts, cfg, backend, inv, led, ledgerSetAside, cdiGen, monitor, mp)
		if err != nil {
			return err
		}
		spawn("DRA driver", drv.Run)
	}

	// Config reloads reach the metrics sampler through here, latest first.
	metricsReloads := make(chan *configv1.Config, 1)
	if opts.ConfigFile != "" {
		w := newConfigWatcher(opts.ConfigFile,
			func(next *configv1.Config, warnings []string) {
				for _, w := range warnings {
					logger.Info("Config warning", "file", opts.ConfigFile, "warning", w)
				}
				logger.Info("Config changed: applying", "file", opts.ConfigFile)
				if stale := needsRestart(cfg, next); len(stale) > 0 {
					logger.Info("Config change needs a gpulet restart to take effect; the rest is applied now",
						"file", opts.ConfigFile, "settings", stale)
				}
				mp.ops.ObserveConfigReload(nil)
				monitor.SetOptions(healthOptions(next))
				if dp != nil {
					dp.Update(inv, devicePluginConfig(next))
				}
				sendLatest(metricsReloads, next)
			},
			func(err error) {
				mp.ops.ObserveConfigReload(err)
				logger.Error(err, "Config change rejected; the last good config stays in force", "file", opts.ConfigFile)
			})
		spawn("config watch", w.run)
	}

	if opts.MetricsAddress != "" {
		spawn("metrics", func(ctx context.Context) error {
			return runMetrics(ctx, opts, cfg, metricsReloads, mp, backend.Adapter, inv, led, monitor)
		})
	}

	logger.Info("Serving", "node", opts.NodeName, "gpus", len(inv.GPUs), "devicePlugin", dp != nil, "dra", cfg.Gpulet.DRA.Enabled)
	select {
	case <-ctx.Done():
		logger.Info("Shutting down")
		return nil
	case err := <-errs:
		cancel()
		return err
	}
}

// openNVML opens the backend, retrying with backoff while NVML cannot be
// initialised. It returns nil, nil if ctx ends first.
func openNVML(ctx context.Context, opts Options) (*nvml.Backend, error) {
	logger := klog.FromContext(ctx)
	backoff := time.Second
	for {
		b, err := nvml.Open(ctx, nvml.BackendOptions{Spec: opts.NVML, MockDir: filepath.Join(opts.StateDir, "mock"), Watch: true, NodeSeed: opts.NodeName})
		if err == nil {
			return b, nil
		}
		if opts.NVML.Mock {
			// A bad state file is the user's to fix, not a driver to wait for.
			return nil, err
		}
		logger.Error(err, "NVML is not available; no devices are advertised until it is", "retryIn", backoff)
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Minute)
	}
}

// openLedger opens the checkpoint; a corrupt one is set aside (kept for a
// person to look at) and gpulet starts with an empty ledger rather than
// crash-looping. setAside reports that (the DRA driver then keeps claim
// CDI specs it has no record of, which running containers may need).
func openLedger(logger klog.Logger, path string) (l *ledger.Ledger, setAside bool, err error) {
	l, err = ledger.Open(path)
	if err == nil {
		return l, false, nil
	}
	if !errors.Is(err, ledger.ErrCorrupt) {
		return nil, false, err
	}
	aside, serr := ledger.SetAside(path, time.Now())
	if serr != nil {
		return nil, false, errors.Join(err, serr)
	}
	logger.Error(err, "Checkpoint is corrupt: set aside, starting with an empty ledger", "setAsideAs", aside)
	l, err = ledger.Open(path)
	return l, true, err
}

// healthDevices lists what health tracks: every GPU and MIG device.
func healthDevices(inv *inventory.Inventory) []health.Device {
	var out []health.Device
	for _, g := range inv.GPUs {
		out = append(out, health.Device{UUID: g.UUID})
		for _, m := range g.MigDevices {
			out = append(out, health.Device{UUID: m.UUID, Parent: g.UUID, GIID: m.GIID, CIID: m.CIID})
		}
	}
	return out
}

func healthOptions(cfg *configv1.Config) health.Options {
	return health.Options{
		IgnoredXIDs: cfg.Gpulet.Health.IgnoredXIDs,
		QuietPeriod: cfg.Gpulet.Health.RecoveryQuietPeriod.Duration,
	}
}

// needsRestart names the settings that differ between the config gpulet
// started with and next and that only a restart applies: which APIs are
// served, the DRA driver's settings, and whether health checking runs at
// all. The device plugin's resources and sharing, health options and
// metrics settings are applied live.
func needsRestart(started, next *configv1.Config) []string {
	var out []string
	if devicePluginEnabled(started) != devicePluginEnabled(next) {
		out = append(out, "gpulet.devicePlugin.enabled")
	}
	if !reflect.DeepEqual(started.Gpulet.DRA, next.Gpulet.DRA) {
		out = append(out, "gpulet.dra")
	}
	if started.Gpulet.Health.Disabled != next.Gpulet.Health.Disabled {
		out = append(out, "gpulet.health.disabled")
	}
	return out
}

// sendLatest puts v in ch (capacity 1), replacing a value not yet taken.
func sendLatest[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}

func devicePluginEnabled(cfg *configv1.Config) bool {
	return cfg.Gpulet.DevicePlugin.Enabled == nil || *cfg.Gpulet.DevicePlugin.Enabled
}

func devicePluginConfig(cfg *configv1.Config) deviceplugin.Config {
	c := deviceplugin.Config{
		MigStrategy:        configv1.MigStrategyNone,
		TimeSlicing:        cfg.Sharing.TimeSlicing,
		DeviceListStrategy: cfg.Gpulet.DeviceListStrategy,
	}
	if cfg.Flags.MigStrategy != nil {
		c.MigStrategy = *cfg.Flags.MigStrategy
	}
	return c
}

// cdiOptions says where the driver is: the simulator's mock driver root,
// or the host's driver root as the config names it, seen where gpulet's
// container mounts it (containerDriverRoot) when that exists.
func cdiOptions(opts Options, cfg *configv1.Config, backend *nvml.Backend) cdi.Options {
	o := cdi.Options{Root: opts.CDIRoot, HookPath: opts.CDIHookPath, NVML: backend.Adapter}
	if backend.DriverRoot != "" {
		o.DriverRoot = backend.DriverRoot
		return o
	}
	host, hostDev := "/", ""
	if cfg.Flags.NvidiaDriverRoot != nil {
		host = *cfg.Flags.NvidiaDriverRoot
	}
	if cfg.Flags.NvidiaDevRoot != nil {
		hostDev = *cfg.Flags.NvidiaDevRoot
	}
	o.DriverRoot, o.HostDriverRoot, o.HostDevRoot = host, host, hostDev
	if cfg.Flags.Plugin != nil && cfg.Flags.Plugin.ContainerDriverRoot != nil {
		if _, err := os.Stat(*cfg.Flags.Plugin.ContainerDriverRoot); err == nil {
			o.DriverRoot = *cfg.Flags.Plugin.ContainerDriverRoot
		}
	}
	return o
}
