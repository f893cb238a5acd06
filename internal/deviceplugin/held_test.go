package deviceplugin

import (
	"testing"
	"time"

	configv1 "github.com/gpulet/gpulet/api/config/v1"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/podresources"
	"github.com/gpulet/gpulet/internal/simnode"
)

// TestHeldFeedsTheLedger: what the kubelet reports in use becomes ledger
// records with pod names; a device of another plugin is ignored; after a
// sync the DRA side sees the device as held.
func TestHeldFeedsTheLedger(t *testing.T) {
	node := simnode.New(t, a100Mixed)
	inv := node.Inventory
	m := NewManager(Options{})
	m.Update(inv, Config{MigStrategy: configv1.MigStrategyMixed, TimeSlicing: timeSlicing(`sharing: {timeSlicing: {resources: [{name: nvidia.com/mig-1g.10gb, replicas: 2}]}}`)})
	whole := inv.GPUs[3].UUID
	mig := inv.GPUs[0].MigDevices[2]
	pods := []podresources.Pod{{
		Namespace: "ns", Name: "train",
		Containers: []podresources.Container{{
			Name: "main",
			Devices: []podresources.Devices{
				{ResourceName: "nvidia.com/gpu", IDs: []string{whole}},
				{ResourceName: "nvidia.com/mig-1g.10gb", IDs: []string{mig.UUID + "::1"}},
				{ResourceName: "example.com/fpga", IDs: []string{"fpga-0"}},
			},
		}},
	}}
	held := m.Held(pods)
	if len(held) != 2 {
		t.Fatalf("held = %v, want the GPU and the MIG replica", held)
	}
	r := held[mig.UUID+"::1"]
	if r.Pod != "train" || r.Container != "main" || r.Resources[0].GPU != inv.GPUs[0].UUID || r.Resources[0].Slices == nil || !r.Resources[0].Shared {
		t.Errorf("MIG replica record = %+v", r)
	}

	l, _ := ledger.Open("")
	if err := l.SyncDevicePlugin(held, time.Minute); err != nil {
		t.Fatal(err)
	}
	err := l.Check(ledger.Record{ID: "claim", API: ledger.DRA, Resources: []ledger.Resource{{GPU: whole, Device: "gpu-x"}}})
	if err == nil {
		t.Error("a DRA claim could take the GPU the kubelet says a pod holds")
	}
}
