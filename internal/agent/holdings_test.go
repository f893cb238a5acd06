package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/deviceplugin"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/podresources"
	"github.com/gpulet/gpulet/internal/podresources/podresourcestest"
	"github.com/gpulet/gpulet/internal/simnode"
)

// TestHoldingsFollowTheKubelet: a pod the kubelet reports holding a GPU
// through the device plugin puts the GPU in the ledger (a DRA claim then
// cannot take it), and the GPU is released once the pod is gone.
func TestHoldingsFollowTheKubelet(t *testing.T) {
	node := simnode.New(t, "machine: dgx-h100\ngpus: 2")
	gpu := node.Inventory.GPUs[1].UUID
	kubelet := podresourcestest.Start(t)
	kubelet.Set(podresourcestest.DevicePluginPod("ns", "train", "main", "nvidia.com/gpu", gpu))
	client, err := podresources.Dial(kubelet.Socket(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Close() }()
	dp := deviceplugin.NewManager(deviceplugin.Options{})
	dp.Update(node.Inventory, deviceplugin.Config{})
	led, _ := ledger.Open("")
	hs := &holdingsSync{kubelet: client, dp: dp, ledger: led, every: time.Hour, grace: 0}

	if err := hs.once(context.Background()); err != nil {
		t.Fatal(err)
	}
	claim := ledger.Record{ID: "claim", API: ledger.DRA, Resources: []ledger.Resource{{GPU: gpu, Device: "gpu-1"}}}
	if err := led.Check(claim); !errors.Is(err, ledger.ErrConflict) {
		t.Fatalf("a DRA claim could take the GPU pod ns/train holds: %v", err)
	}
	if r, ok := led.Get(gpu); !ok || r.Pod != "train" {
		t.Errorf("ledger record = %+v, want pod train", r)
	}

	kubelet.Set() // the pod ended
	if err := hs.once(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := led.Check(claim); err != nil {
		t.Errorf("the GPU is still held after its pod ended: %v", err)
	}
}
