package deviceplugin

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	configv1 "github.com/gpulet/gpulet/api/config/v1"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/simnode"
)

func cdiName(uuid string) string { return "gpulet.dev/gpu=" + uuid }

// testServer serves one resource of inv on a unix socket in a temp dir and
// returns a client of it.
func testServer(t testing.TB, inv *inventory.Inventory, cfg Config, name string, l *ledger.Ledger) (*server, pluginapi.DevicePluginClient) {
	t.Helper()
	plan, _ := Plan(inv, cfg)
	var res *Resource
	for i := range plan {
		if plan[i].Name == name {
			res = &plan[i]
		}
	}
	if res == nil {
		t.Fatalf("no resource %s", name)
	}
	strategy := cfg.DeviceListStrategy
	d := &deps{ledger: l, cdiName: cdiName, strategy: func() configv1.DeviceListStrategy { return strategy }}
	s := newServer(*res, filepath.Join(shortTempDir(t), "gpulet.sock"), d, nvlinks(inv))
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.stop)
	s.setDevices(func(string) bool { return true }, func(Device) bool { return false })
	conn, err := grpc.NewClient("unix://"+s.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return s, pluginapi.NewDevicePluginClient(conn)
}

// shortTempDir is a temp dir with a path short enough for a unix socket
// (108 bytes), which t.TempDir's names (the test's name) can exceed.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func TestAllocateReturnsOnlyTheAllocatedDevices(t *testing.T) {
	node := simnode.New(t, "machine: dgx-h100")
	inv := node.Inventory
	tests := []struct {
		name     string
		cfg      Config
		ids      []string
		wantCDI  []string
		wantEnv  string
		resource string
	}{
		{
			name:     "cdi-cri: two GPUs",
			cfg:      Config{DeviceListStrategy: configv1.DeviceListStrategyCDICRI},
			ids:      []string{inv.GPUs[3].UUID, inv.GPUs[1].UUID},
			wantCDI:  []string{cdiName(inv.GPUs[1].UUID), cdiName(inv.GPUs[3].UUID)},
			resource: "nvidia.com/gpu",
		},
		{
			name:     "envvar",
			cfg:      Config{DeviceListStrategy: configv1.DeviceListStrategyEnvVar},
			ids:      []string{inv.GPUs[2].UUID},
			wantEnv:  inv.GPUs[2].UUID,
			resource: "nvidia.com/gpu",
		},
		{
			name:     "two replicas of one GPU: one CDI device",
			cfg:      Config{TimeSlicing: timeSlicing(`sharing: {timeSlicing: {resources: [{name: gpu, replicas: 4}]}}`)},
			ids:      []string{inv.GPUs[0].UUID + "::0", inv.GPUs[0].UUID + "::2"},
			wantCDI:  []string{cdiName(inv.GPUs[0].UUID)},
			resource: "nvidia.com/gpu",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, _ := ledger.Open("")
			_, client := testServer(t, inv, tt.cfg, tt.resource, l)
			resp, err := client.Allocate(context.Background(), &pluginapi.AllocateRequest{
				ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: tt.ids}},
			})
			if err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			cr := resp.ContainerResponses[0]
			var got []string
			for _, d := range cr.CdiDevices {
				got = append(got, d.Name)
			}
			if strings.Join(got, ",") != strings.Join(tt.wantCDI, ",") {
				t.Errorf("CDI devices = %v, want %v", got, tt.wantCDI)
			}
			if cr.Envs["NVIDIA_VISIBLE_DEVICES"] != tt.wantEnv {
				t.Errorf("NVIDIA_VISIBLE_DEVICES = %q, want %q", cr.Envs["NVIDIA_VISIBLE_DEVICES"], tt.wantEnv)
			}
			for _, id := range tt.ids {
				if _, ok := l.Get(id); !ok {
					t.Errorf("device %s allocated but not in the ledger", id)
				}
			}
		})
	}
}

func TestAllocateRefusals(t *testing.T) {
	node := simnode.New(t, "machine: dgx-h100")
	inv := node.Inventory
	gpu := inv.GPUs[0].UUID

	t.Run("device held through DRA", func(t *testing.T) {
		l, _ := ledger.Open("")
		if err := l.Reserve(ledger.Record{ID: "claim-uid", API: ledger.DRA, Namespace: "ns", Name: "my-claim",
			Resources: []ledger.Resource{{GPU: gpu, Device: "gpu-x"}}}); err != nil {
			t.Fatal(err)
		}
		_, client := testServer(t, inv, Config{}, "nvidia.com/gpu", l)
		_, err := client.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
			{DevicesIds: []string{inv.GPUs[1].UUID}},
			{DevicesIds: []string{gpu}},
		}})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "ns/my-claim") {
			t.Fatalf("Allocate = %v: want FailedPrecondition naming the claim", err)
		}
		if _, ok := l.Get(inv.GPUs[1].UUID); ok {
			t.Error("the other container's device stayed reserved after the failed Allocate")
		}
	})
	t.Run("failRequestsGreaterThanOne", func(t *testing.T) {
		l, _ := ledger.Open("")
		cfg := Config{TimeSlicing: timeSlicing(`sharing: {timeSlicing: {failRequestsGreaterThanOne: true, resources: [{name: gpu, replicas: 2}]}}`)}
		_, client := testServer(t, inv, cfg, "nvidia.com/gpu", l)
		_, err := client.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
			{DevicesIds: []string{gpu + "::0", gpu + "::1"}},
		}})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "failRequestsGreaterThanOne") {
			t.Fatalf("Allocate = %v: want InvalidArgument naming failRequestsGreaterThanOne", err)
		}
	})
	t.Run("unknown device", func(t *testing.T) {
		l, _ := ledger.Open("")
		_, client := testServer(t, inv, Config{}, "nvidia.com/gpu", l)
		_, err := client.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
			{DevicesIds: []string{"GPU-nope"}},
		}})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "GPU-nope") {
			t.Fatalf("Allocate = %v: want InvalidArgument naming the device", err)
		}
	})
}

func TestListAndWatchFollowsHealthAndDRAHoldings(t *testing.T) {
	node := simnode.New(t, "machine: dgx-h100")
	inv := node.Inventory
	l, _ := ledger.Open("")
	s, client := testServer(t, inv, Config{}, "nvidia.com/gpu", l)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	recv := func() map[string]string {
		t.Helper()
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, d := range r.Devices {
			out[d.ID] = d.Health
		}
		return out
	}
	if got := recv(); len(got) != 8 {
		t.Fatalf("first list has %d devices, want 8", len(got))
	}
	sick := inv.GPUs[2].UUID
	s.setDevices(func(u string) bool { return u != sick }, func(Device) bool { return false })
	if got := recv(); got[sick] != pluginapi.Unhealthy || len(got) != 8 {
		t.Fatalf("after a fault: %v, want %s Unhealthy of 8", got, sick)
	}
	held := inv.GPUs[5].UUID
	s.setDevices(func(string) bool { return true }, func(d Device) bool { return d.UUID == held })
	got := recv()
	if _, ok := got[held]; ok || len(got) != 7 || got[sick] != pluginapi.Healthy {
		t.Fatalf("after recovery and a DRA holding: %v, want 7 healthy without %s", got, held)
	}
}

func TestGetDevicePluginOptions(t *testing.T) {
	node := simnode.New(t, "machine: dgx-h100\ngpus: 2")
	l, _ := ledger.Open("")
	_, client := testServer(t, node.Inventory, Config{}, "nvidia.com/gpu", l)
	opts, err := client.GetDevicePluginOptions(context.Background(), &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if !opts.GetPreferredAllocationAvailable || opts.PreStartRequired {
		t.Errorf("options = %+v: want preferred allocation, no pre-start", opts)
	}
	if _, err := client.PreStartContainer(context.Background(), &pluginapi.PreStartContainerRequest{}); err != nil {
		t.Errorf("PreStartContainer: %v", err)
	}
}
