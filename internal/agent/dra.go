package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	configv1 "github.com/gpulet/gpulet/api/config/v1"
	"github.com/gpulet/gpulet/internal/cdi"
	"github.com/gpulet/gpulet/internal/dra"
	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/metrics"
	"github.com/gpulet/gpulet/internal/nvml"
)

// newDRADriver builds the DRA driver over the agent's NVML, ledger, CDI
// generator and health monitor, with an API client from --kubeconfig (or
// the in-cluster config) rate-limited for bursts of prepares (dra.NewClient).
func newDRADriver(ctx context.Context, opts Options, cfg *configv1.Config, backend *nvml.Backend,
	inv *inventory.Inventory, led *ledger.Ledger, ledgerSetAside bool, gen *cdi.Generator, monitor *health.Monitor, mp *metricsParts) (*dra.Driver, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", opts.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("DRA driver: API client config: %w", err)
	}
	client, err := dra.NewClient(rc)
	if err != nil {
		return nil, err
	}
	do := dra.Options{
		DriverName:         cfg.Gpulet.DRA.DriverName,
		NodeName:           opts.NodeName,
		KubeClient:         client,
		KubeletRoot:        opts.KubeletRoot,
		NVML:               backend.Adapter,
		Inventory:          inv,
		Ledger:             led,
		CDI:                gen,
		ConsumableCapacity: cfg.Gpulet.DRA.Sharing.ConsumableCapacity.Enabled,
		CheckpointPath:     filepath.Join(opts.StateDir, "ledger.json"),
		CheckpointSetAside: ledgerSetAside,
		// MIG devices created on demand get health tracking of their own.
		OnInventory: func(inv *inventory.Inventory) { monitor.SetDevices(healthDevices(inv)) },
		Observer:    draObserver{mp},
	}
	if !cfg.Gpulet.Health.Disabled {
		do.Health = monitor
	}
	if backend.Sim != nil {
		// The simulator's GPUs are not in sysfs: group them by NVML's
		// PCIe topology instead.
		do.PCIeRoots = dra.TopologyPCIeRoots(inv)
	}
	return dra.New(ctx, do)
}

// draObserver records the DRA driver's work in gpulet's metrics and marks
// the endpoint ready once slices are published.
type draObserver struct{ mp *metricsParts }

func (o draObserver) ObservePrepare(took time.Duration, err error) {
	o.mp.ops.ObservePrepare(took, err)
}

func (o draObserver) ObserveUnprepare(took time.Duration, err error) {
	o.mp.ops.ObserveUnprepare(took, err)
}

func (o draObserver) ObservePublished(err error) { o.mp.readiness.Set(metrics.CheckSlices, err) }
