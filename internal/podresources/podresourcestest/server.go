// Package podresourcestest serves the kubelet's PodResources API on a real
// unix socket for tests, with the kubelet's own API types: what a test
// sets is what List and Get answer.
package podresourcestest

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// Server is a fake kubelet PodResources endpoint.
type Server struct {
	podresourcesv1.UnimplementedPodResourcesListerServer

	socket string

	mu    sync.Mutex
	pods  []*podresourcesv1.PodResources
	calls map[string]int
}

// Start serves on a socket in a new temporary directory until the test
// ends.
func Start(t testing.TB) *Server {
	t.Helper()
	// A unix socket path must fit in 108 bytes; t.TempDir's can be longer.
	dir, err := os.MkdirTemp("", "podres-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	s := &Server{socket: filepath.Join(dir, "kubelet.sock"), calls: map[string]int{}}
	l, err := net.Listen("unix", s.socket)
	if err != nil {
		t.Fatalf("listen on %s: %v", s.socket, err)
	}
	g := grpc.NewServer()
	podresourcesv1.RegisterPodResourcesListerServer(g, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(l)
	}()
	t.Cleanup(func() {
		g.Stop()
		<-done
	})
	return s
}

// Socket is the socket's path.
func (s *Server) Socket() string { return s.socket }

// Set replaces what the kubelet reports.
func (s *Server) Set(pods ...*podresourcesv1.PodResources) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pods = pods
}

// Calls reports how many times a method ("List", "Get") was called.
func (s *Server) Calls(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

// List answers every pod set.
func (s *Server) List(context.Context, *podresourcesv1.ListPodResourcesRequest) (*podresourcesv1.ListPodResourcesResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["List"]++
	resp := &podresourcesv1.ListPodResourcesResponse{}
	for _, p := range s.pods {
		resp.PodResources = append(resp.PodResources, proto.Clone(p).(*podresourcesv1.PodResources))
	}
	return resp, nil
}

// Get answers one pod, NotFound like the kubelet when it is not set.
func (s *Server) Get(_ context.Context, req *podresourcesv1.GetPodResourcesRequest) (*podresourcesv1.GetPodResourcesResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["Get"]++
	for _, p := range s.pods {
		if p.GetNamespace() == req.GetPodNamespace() && p.GetName() == req.GetPodName() {
			return &podresourcesv1.GetPodResourcesResponse{PodResources: proto.Clone(p).(*podresourcesv1.PodResources)}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "pod %s/%s not found", req.GetPodNamespace(), req.GetPodName())
}

// DevicePluginPod is a pod with one container holding device-plugin
// devices of one resource.
func DevicePluginPod(namespace, name, container, resource string, ids ...string) *podresourcesv1.PodResources {
	return &podresourcesv1.PodResources{Namespace: namespace, Name: name, Containers: []*podresourcesv1.ContainerResources{{
		Name:    container,
		Devices: []*podresourcesv1.ContainerDevices{{ResourceName: resource, DeviceIds: ids}},
	}}}
}

// DRAPod is a pod with one container using one claim whose devices come
// from driver (pool "pool").
func DRAPod(namespace, name, container, claim, driver string, devices ...string) *podresourcesv1.PodResources {
	dr := &podresourcesv1.DynamicResource{ClaimName: claim, ClaimNamespace: namespace}
	for _, d := range devices {
		dr.ClaimResources = append(dr.ClaimResources, &podresourcesv1.ClaimResource{
			DriverName: driver, PoolName: "pool", DeviceName: d,
			CdiDevices: []*podresourcesv1.CDIDevice{{Name: driver + "/gpu=" + d}},
		})
	}
	return &podresourcesv1.PodResources{Namespace: namespace, Name: name, Containers: []*podresourcesv1.ContainerResources{{
		Name:             container,
		DynamicResources: []*podresourcesv1.DynamicResource{dr},
	}}}
}
