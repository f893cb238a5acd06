package agent

import (
	"context"
	"time"

	"k8s.io/klog/v2"

	"github.com/gpulet/gpulet/internal/deviceplugin"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/podresources"
)

// holdingsSync keeps the ledger's device-plugin records equal to what the
// kubelet reports in use. The device-plugin API never says when a pod has
// let a device go, and gpulet's own records of Allocate calls are lost on
// restart; the kubelet's PodResources API knows both.
type holdingsSync struct {
	kubelet *podresources.Client
	dp      *deviceplugin.Manager
	ledger  *ledger.Ledger
	// every is how often the kubelet is asked.
	every time.Duration
	// grace keeps a record of a fresh Allocate the kubelet has not
	// recorded yet.
	grace time.Duration
}

// once syncs now; it fails when the kubelet cannot be asked.
func (h *holdingsSync) once(ctx context.Context) error {
	pods, err := h.kubelet.List(ctx)
	if err != nil {
		return err
	}
	if err := h.ledger.SyncDevicePlugin(h.dp.Held(pods), h.grace); err != nil {
		// A device in use by a pod that DRA also holds: both are already
		// allocated; nothing here can undo that, so it is reported.
		klog.FromContext(ctx).Error(err, "The kubelet reports device-plugin devices that the ledger has given to a DRA claim")
	}
	return nil
}

// run syncs until ctx ends.
func (h *holdingsSync) run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithName("holdings")
	ctx = klog.NewContext(ctx, logger)
	ticker := time.NewTicker(h.every)
	defer ticker.Stop()
	failing := false
	for {
		err := h.once(ctx)
		switch {
		case err != nil && !failing:
			logger.Info("Cannot ask the kubelet which devices pods hold; will keep trying", "err", err)
			failing = true
		case err == nil && failing:
			logger.Info("The kubelet answers again")
			failing = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}
