package deviceplugin

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	configv1 "github.com/gpulet/gpulet/api/config/v1"
	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/nvml/gpusim"
	"github.com/gpulet/gpulet/internal/simnode"
)

// percentile returns the p-th percentile (0..100) of durations.
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// BenchmarkAllocate measures Allocate of one GPU through a real unix
// socket against a bare gRPC unary call (the gRPC health check) served by
// the same server on the same socket, in the same run. The ratio of their
// medians is the device plugin's own cost (goal: <= 2).
func BenchmarkAllocate(b *testing.B) {
	node := simnode.New(b, "machine: dgx-h100")
	l, _ := ledger.Open("")
	plan, _ := Plan(node.Inventory, Config{})
	d := &deps{ledger: l, cdiName: cdiName, strategy: func() configv1.DeviceListStrategy { return configv1.DeviceListStrategyCDICRI }}
	s := newServer(plan[0], "", d, nvlinks(node.Inventory))
	sock := filepath.Join(shortTempDir(b), "bench.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(g, s)
	healthpb.RegisterHealthServer(g, grpchealth.NewServer())
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	dp := pluginapi.NewDevicePluginClient(conn)
	hc := healthpb.NewHealthClient(conn)
	ctx := context.Background()
	req := &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{node.Inventory.GPUs[0].UUID}}}}

	// Warm both paths up.
	for i := 0; i < 200; i++ {
		if _, err := dp.Allocate(ctx, req); err != nil {
			b.Fatal(err)
		}
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			b.Fatal(err)
		}
	}
	allocs := make([]time.Duration, 0, b.N)
	bares := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Interleaved, so both see the same machine noise.
		t0 := time.Now()
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := dp.Allocate(ctx, req); err != nil {
			b.Fatal(err)
		}
		allocs = append(allocs, time.Since(t1))
		bares = append(bares, t1.Sub(t0))
	}
	b.StopTimer()
	pa, pb := percentile(allocs, 50), percentile(bares, 50)
	b.ReportMetric(float64(pa.Nanoseconds()), "allocate-p50-ns")
	b.ReportMetric(float64(pb.Nanoseconds()), "bare-grpc-p50-ns")
	b.ReportMetric(float64(pa)/float64(pb), "ratio-to-bare-grpc")
}

// benchPreferred times GetPreferredAllocation calls through a real unix
// socket and reports their p99.
func benchPreferred(b *testing.B, state string, cfg Config, resource string, size int) {
	node := simnode.New(b, state)
	l, _ := ledger.Open("")
	_, client := testServer(b, node.Inventory, cfg, resource, l)
	plan, _ := Plan(node.Inventory, cfg)
	var all []string
	for _, r := range plan {
		if r.Name == resource {
			all = ids(r.Devices)
		}
	}
	req := &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{
		AvailableDeviceIDs: all, AllocationSize: int32(size),
	}}}
	ctx := context.Background()
	took := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		resp, err := client.GetPreferredAllocation(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(t0))
		if got := len(resp.ContainerResponses[0].DeviceIDs); got != size {
			b.Fatalf("got %d devices, want %d", got, size)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(percentile(took, 99).Microseconds()), "p99-us")
	b.ReportMetric(float64(len(all)), "devices")
}

// BenchmarkGetPreferredAllocationNVLink8 picks 4 of 8 NVLink-connected
// GPUs in two islands (goal: p99 <= 1 ms).
func BenchmarkGetPreferredAllocationNVLink8(b *testing.B) {
	benchPreferred(b, "machine: dgx-h100\ntopology: islands", Config{}, "nvidia.com/gpu", 4)
}

// BenchmarkGetPreferredAllocationMIGReplicas picks from 8 GPUs x 7 MIG
// devices x 32 replicas = 1792 devices (goal: p99 <= 10 ms).
func BenchmarkGetPreferredAllocationMIGReplicas(b *testing.B) {
	var state = "machine: dgx-h100\ndevices:\n"
	for i := 0; i < 8; i++ {
		state += fmt.Sprintf("- {index: %d, migEnabled: true, mig: [{profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}]}\n", i)
	}
	cfg := Config{MigStrategy: configv1.MigStrategyMixed, TimeSlicing: timeSlicing(`sharing: {timeSlicing: {resources: [{name: nvidia.com/mig-1g.10gb, replicas: 32}]}}`)}
	benchPreferred(b, state, cfg, "nvidia.com/mig-1g.10gb", 4)
}

// BenchmarkXIDToListAndWatch measures the time from an XID injected into
// the simulator to the kubelet's ListAndWatch stream showing the GPU
// Unhealthy, through the health monitor and the manager (goal: <= 100 ms).
// An operation is a whole fault-and-recovery cycle; the p50/p99 metrics
// are the fault-to-stream latency alone.
func BenchmarkXIDToListAndWatch(b *testing.B) {
	node := simnode.New(b, "machine: dgx-h100\ngpus: 2")
	l, _ := ledger.Open("")
	mon := health.New(node.Adapter, []health.Device{{UUID: node.Inventory.GPUs[0].UUID}, {UUID: node.Inventory.GPUs[1].UUID}},
		// The quiet period keeps the GPU unhealthy long enough that the
		// stream cannot coalesce the fault away before sending it.
		health.Options{QuietPeriod: 10 * time.Millisecond, ProbeInterval: 2 * time.Millisecond, WaitSlice: 50 * time.Millisecond})
	dir := shortTempDir(b)
	m := NewManager(Options{SocketDir: dir, Ledger: l, Health: mon, CDIName: cdiName, RegisterTimeout: 10 * time.Millisecond})
	m.Update(node.Inventory, Config{})
	// Logs would break the benchmark's result line for benchstat.
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = mon.Run(ctx) }()
	go func() { defer wg.Done(); _ = m.Run(ctx) }()
	defer func() { cancel(); wg.Wait() }()

	sock := filepath.Join(dir, socketName("nvidia.com/gpu"))
	var conn *grpc.ClientConn
	var stream grpc.ServerStreamingClient[pluginapi.ListAndWatchResponse]
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err == nil {
			stream, err = pluginapi.NewDevicePluginClient(c).ListAndWatch(ctx, &pluginapi.Empty{})
			if err == nil {
				conn = c
				break
			}
			_ = c.Close()
		}
		if time.Now().After(deadline) {
			b.Fatalf("resource server never came up: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	defer func() { _ = conn.Close() }()
	for mon.Watches() == 0 {
		time.Sleep(time.Millisecond)
	}
	target := node.Inventory.GPUs[1].UUID
	waitHealth := func(want string) {
		for {
			resp, err := stream.Recv()
			if err != nil {
				b.Fatal(err)
			}
			for _, d := range resp.Devices {
				if d.ID == target && d.Health == want {
					return
				}
			}
		}
	}
	took := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		st, err := gpusim.Parse([]byte(fmt.Sprintf("machine: dgx-h100\ngpus: 2\ndevices: [{index: 1, xids: [{id: x%d, xid: 48}]}]", i)), "bench")
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := node.Sim.Apply(st); err != nil {
			b.Fatal(err)
		}
		waitHealth(pluginapi.Unhealthy)
		took = append(took, time.Since(t0))
		waitHealth(pluginapi.Healthy)
	}
	b.StopTimer()
	b.ReportMetric(float64(percentile(took, 50).Microseconds()), "p50-us")
	b.ReportMetric(float64(percentile(took, 99).Microseconds()), "p99-us")
}
