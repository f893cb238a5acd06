package dra

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"
)

// fakeAPI serves ResourceClaims over HTTP the way the API server does, so
// that the helper's per-claim GET goes through a real client-go REST
// client with its rate limiter.
type fakeAPI struct {
	mu     sync.Mutex
	claims map[string]*resourceapi.ResourceClaim
}

func (f *fakeAPI) add(c *resourceapi.ResourceClaim) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.claims == nil {
		f.claims = map[string]*resourceapi.ResourceClaim{}
	}
	c = c.DeepCopy()
	c.APIVersion, c.Kind = "resource.k8s.io/v1", "ResourceClaim"
	f.claims[c.Namespace+"/"+c.Name] = c
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// /apis/resource.k8s.io/v1/namespaces/<ns>/resourceclaims/<name>
	p := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if r.Method == http.MethodGet && len(p) == 7 && p[1] == "resource.k8s.io" && p[2] == "v1" && p[5] == "resourceclaims" {
		f.mu.Lock()
		c, ok := f.claims[p[4]+"/"+p[6]]
		f.mu.Unlock()
		if ok {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(c)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	_, _ = fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"%s not found"}`, r.URL.Path)
}

// pluginBench is a driver behind the kubeletplugin helper's real gRPC
// socket, with a kubelet-side client, and a bare gRPC server on the same
// kind of socket to compare with.
type pluginBench struct {
	bed    *testBed
	api    *fakeAPI
	client drapb.DRAPluginClient
	bare   drapb.DRAPluginClient
	claims []*resourceapi.ResourceClaim
}

// bareServer answers every call at once: the cost of gRPC over a unix
// socket and nothing else.
type bareServer struct {
	drapb.UnimplementedDRAPluginServer
}

func (bareServer) NodePrepareResources(context.Context, *drapb.NodePrepareResourcesRequest) (*drapb.NodePrepareResourcesResponse, error) {
	return &drapb.NodePrepareResourcesResponse{}, nil
}

// newPluginBench starts it all on a simulated DGX H100, with one claim per
// GPU. qps and burst set the API client's limits (qps 0: the driver's,
// NewClient; negative: none).
func newPluginBench(tb testing.TB, qps float32, burst int) *pluginBench {
	tb.Helper()
	pb := &pluginBench{api: &fakeAPI{}}
	srv := httptest.NewServer(pb.api)
	tb.Cleanup(srv.Close)
	cfg := &rest.Config{Host: srv.URL, ContentConfig: rest.ContentConfig{ContentType: "application/json"}}
	var client kubernetes.Interface
	var err error
	if qps == 0 {
		client, err = NewClient(cfg)
	} else {
		cfg.QPS, cfg.Burst = qps, burst
		client, err = kubernetes.NewForConfig(cfg)
	}
	if err != nil {
		tb.Fatal(err)
	}
	// Socket paths must stay short: t.TempDir's are too long.
	root, err := os.MkdirTemp("", "dra")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(root) })
	pb.bed = newTestBed(tb, stateH100, func(o *Options) {
		o.KubeClient = client
		o.KubeletRoot = root
		o.PluginOptions = []kubeletplugin.Option{kubeletplugin.GRPCVerbosity(-1)}
	})
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	helper, err := pb.bed.driver.startPlugin(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cancel(); helper.Stop() })
	pb.client = drapb.NewDRAPluginClient(dial(tb, filepath.Join(root, "plugins", DefaultDriverName, "dra.sock")))

	bareSock := filepath.Join(root, "bare.sock")
	l, err := net.Listen("unix", bareSock)
	if err != nil {
		tb.Fatal(err)
	}
	gs := grpc.NewServer()
	drapb.RegisterDRAPluginServer(gs, bareServer{})
	go func() { _ = gs.Serve(l) }()
	tb.Cleanup(gs.Stop)
	pb.bare = drapb.NewDRAPluginClient(dial(tb, bareSock))

	for i, g := range pb.bed.node.Inventory.GPUs {
		c := allocatedClaim(fmt.Sprintf("be0c0000-0000-0000-0000-%012d", i), fmt.Sprintf("bench-%d", i), []result{{request: "gpu", device: g.Name}})
		pb.api.add(c)
		pb.claims = append(pb.claims, c)
	}
	return pb
}

func dial(tb testing.TB, sock string) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}

// pair prepares and unprepares one claim through the helper's socket, as
// the kubelet does, and fails on any error.
func (pb *pluginBench) pair(tb testing.TB, c *resourceapi.ResourceClaim) {
	ctx := context.Background()
	ref := []*drapb.Claim{{Namespace: c.Namespace, Name: c.Name, Uid: string(c.UID)}}
	pr, err := pb.client.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: ref})
	if err != nil {
		tb.Fatal(err)
	}
	got := pr.Claims[string(c.UID)]
	if got == nil || got.Error != "" || len(got.Devices) != 1 || len(got.Devices[0].CdiDeviceIds) != 1 {
		tb.Fatalf("prepare %s: %+v", c.Name, got)
	}
	ur, err := pb.client.NodeUnprepareResources(ctx, &drapb.NodeUnprepareResourcesRequest{Claims: ref})
	if err != nil {
		tb.Fatal(err)
	}
	if e := ur.Claims[string(c.UID)].GetError(); e != "" {
		tb.Fatalf("unprepare %s: %s", c.Name, e)
	}
}

// bareCall is one unary call to the bare server.
func (pb *pluginBench) bareCall(tb testing.TB) {
	if _, err := pb.bare.NodePrepareResources(context.Background(), &drapb.NodePrepareResourcesRequest{}); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkPrepareUnprepare measures NodePrepareResources and
// NodeUnprepareResources of a one-GPU claim through the kubeletplugin
// helper's gRPC socket (the claim GET over HTTP; the ledger's journal
// synced and the CDI spec fsynced before prepare returns; the release
// synced before unprepare returns), and reports it as a multiple of a
// bare unary gRPC call on a unix socket measured in the same run. The API
// client is not rate-limited here: b.N pairs in a row would otherwise
// measure the limiter (BenchmarkPrepareBurst does that).
func BenchmarkPrepareUnprepare(b *testing.B) {
	pb := newPluginBench(b, -1, 0)
	for range 20 { // warm up connections and caches
		pb.pair(b, pb.claims[0])
		pb.bareCall(b)
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		pb.pair(b, pb.claims[i%len(pb.claims)])
	}
	pairs := time.Since(start)
	b.StopTimer()
	n := max(b.N, 2000)
	start = time.Now()
	for range n {
		pb.bareCall(b)
	}
	bare := time.Since(start) / time.Duration(n)
	per := pairs / time.Duration(b.N)
	b.ReportMetric(float64(bare.Nanoseconds()), "bare-grpc-ns")
	b.ReportMetric(float64(per)/float64(bare), "x-bare-grpc")
}

// BenchmarkPrepareBurst compares the per-pair time of a short burst (5
// prepare/unprepare pairs, with a fresh client) with the median of a
// following run of back-to-back pairs: with the driver's client (100
// pairs) the median stays near the burst figure; with client-go's default
// limits (5 QPS, burst 10; 25 pairs, to keep it short) the median is the
// limiter's 200ms.
func BenchmarkPrepareBurst(b *testing.B) {
	for _, tc := range []struct {
		name  string
		qps   float32
		burst int
		pairs int
	}{
		{name: "client=gpulet", pairs: 100},
		{name: "client=client-go-default", qps: rest.DefaultQPS, burst: rest.DefaultBurst, pairs: 25},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var burstSum, p50Sum time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				pb := newPluginBench(b, tc.qps, tc.burst)
				b.StartTimer()
				start := time.Now()
				for j := range 5 {
					pb.pair(b, pb.claims[j%len(pb.claims)])
				}
				burstSum += time.Since(start) / 5
				lat := make([]time.Duration, tc.pairs)
				for j := range lat {
					t0 := time.Now()
					pb.pair(b, pb.claims[j%len(pb.claims)])
					lat[j] = time.Since(t0)
				}
				slices.Sort(lat)
				p50Sum += lat[len(lat)/2]
			}
			burst := burstSum / time.Duration(b.N)
			p50 := p50Sum / time.Duration(b.N)
			b.ReportMetric(float64(burst.Microseconds()), "burst-us/pair")
			b.ReportMetric(float64(p50.Microseconds()), "p50-us/pair")
			b.ReportMetric(float64(p50)/float64(burst), "p50/burst")
		})
	}
}

// BenchmarkPrepareBurstConcurrent is the burst as the kubelet sends it
// when pods start together: 5 prepare/unprepare pairs for 5 claims at
// once, each from its own goroutine, on a fresh driver whose connections
// one earlier pair has opened (the kubelet's and the API server's are
// long-lived). It reports the burst's wall time per pair.
func BenchmarkPrepareBurstConcurrent(b *testing.B) {
	const n = 5
	var sum time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		pb := newPluginBench(b, 0, 0)
		pb.pair(b, pb.claims[len(pb.claims)-1])
		b.StartTimer()
		start := time.Now()
		var wg sync.WaitGroup
		for j := range n {
			wg.Go(func() { pb.pair(b, pb.claims[j]) })
		}
		wg.Wait()
		sum += time.Since(start)
	}
	b.ReportMetric(float64((sum / time.Duration(b.N*n)).Microseconds()), "burst-us/pair")
}
