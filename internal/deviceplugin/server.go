package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	configv1 "github.com/gpulet/gpulet/api/config/v1"
	"github.com/gpulet/gpulet/internal/ledger"
)

// server serves one resource name on its own unix socket. Its resource
// plan never changes: a new plan is a new server. What changes while it
// runs is each device's health and whether the DRA driver holds it; the
// manager pushes those in through setDevices.
type server struct {
	pluginapi.UnimplementedDevicePluginServer

	res    Resource
	byID   map[string]Device
	socket string
	deps   *deps
	alloc  *allocator

	mu      sync.Mutex
	devices []*pluginapi.Device
	// changed is closed (and replaced) whenever devices change, waking
	// every ListAndWatch stream.
	changed chan struct{}

	grpc *grpc.Server
	wg   sync.WaitGroup
}

// deps are what every server shares: set once by the manager.
type deps struct {
	ledger   *ledger.Ledger
	cdiName  func(uuid string) string
	strategy func() configv1.DeviceListStrategy
	observe  Observer
}

// Observer records what the device plugin does, for metrics. A nil
// Observer records nothing.
type Observer interface {
	ObserveAllocate(resource string, took time.Duration, err error)
}

// newServer builds a server; links gives the NVLink count between two GPU
// indexes for topology-aware allocation (nil when the allocator is set by
// the caller).
func newServer(res Resource, socket string, d *deps, links func(i, j int) int) *server {
	s := &server{
		res:     res,
		byID:    make(map[string]Device, len(res.Devices)),
		socket:  socket,
		deps:    d,
		changed: make(chan struct{}),
	}
	for _, dev := range res.Devices {
		s.byID[dev.ID] = dev
	}
	s.alloc = newAllocator(res)
	if links != nil {
		s.alloc.setLinks(links)
	}
	return s
}

// start listens on the socket (replacing a stale file) and serves.
func (s *server) start() error {
	if err := os.Remove(s.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", s.socket, err)
	}
	lis, err := net.Listen("unix", s.socket)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.socket, err)
	}
	g := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(g, s)
	s.grpc = g
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = g.Serve(lis) // returns when stopped
	}()
	return nil
}

// stop ends the server and its streams and removes its socket.
func (s *server) stop() {
	if s.grpc != nil {
		s.grpc.Stop()
		s.wg.Wait()
		s.grpc = nil
	}
	_ = os.Remove(s.socket)
}

// setDevices publishes the devices' current health and availability to
// every ListAndWatch stream. A device held through the DRA driver is left
// out, so the kubelet cannot hand it to a pod too.
func (s *server) setDevices(healthy func(uuid string) bool, withdrawn func(Device) bool) {
	list := make([]*pluginapi.Device, 0, len(s.res.Devices))
	for _, d := range s.res.Devices {
		if withdrawn(d) {
			continue
		}
		h := pluginapi.Healthy
		if !healthy(d.UUID) {
			h = pluginapi.Unhealthy
		}
		pd := &pluginapi.Device{ID: d.ID, Health: h}
		if d.NUMANode != nil && *d.NUMANode >= 0 {
			pd.Topology = &pluginapi.TopologyInfo{Nodes: []*pluginapi.NUMANode{{ID: int64(*d.NUMANode)}}}
		}
		list = append(list, pd)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sameDevices(s.devices, list) {
		return
	}
	s.devices = list
	close(s.changed)
	s.changed = make(chan struct{})
}

func sameDevices(a, b []*pluginapi.Device) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].ID != b[i].ID || a[i].Health != b[i].Health {
			return false
		}
	}
	return true
}

func (s *server) snapshot() ([]*pluginapi.Device, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.devices, s.changed
}

// GetDevicePluginOptions says GetPreferredAllocation is worth calling.
func (s *server) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true}, nil
}

// ListAndWatch sends the device list now and after every change.
func (s *server) ListAndWatch(_ *pluginapi.Empty, stream grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	for {
		devices, changed := s.snapshot()
		if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: devices}); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// Allocate reserves the devices in the ledger and tells the kubelet what
// the containers get: the CDI devices of exactly the allocated physical
// devices (or NVIDIA_VISIBLE_DEVICES under the envvar strategy).
func (s *server) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (resp *pluginapi.AllocateResponse, err error) {
	start := time.Now()
	defer func() {
		if s.deps.observe != nil {
			s.deps.observe.ObserveAllocate(s.res.Name, time.Since(start), err)
		}
	}()
	resp = &pluginapi.AllocateResponse{ContainerResponses: make([]*pluginapi.ContainerAllocateResponse, 0, len(req.ContainerRequests))}
	var reserved []string
	for _, creq := range req.ContainerRequests {
		cresp, ids, err := s.allocateContainer(creq.DevicesIds)
		reserved = append(reserved, ids...)
		if err != nil {
			for _, id := range reserved {
				_ = s.deps.ledger.Release(id)
			}
			return nil, err
		}
		resp.ContainerResponses = append(resp.ContainerResponses, cresp)
	}
	return resp, nil
}

func (s *server) allocateContainer(ids []string) (*pluginapi.ContainerAllocateResponse, []string, error) {
	if s.res.FailRequestsGreaterThanOne && s.res.Replicas > 1 && len(ids) > 1 {
		return nil, nil, status.Errorf(codes.InvalidArgument,
			"%s: a container asked for %d shared devices, and this node is configured with failRequestsGreaterThanOne: ask for 1 (replicas of one GPU are not more GPU)", s.res.Name, len(ids))
	}
	var uuids []string
	seen := make(map[string]bool)
	var reserved []string
	for _, id := range ids {
		d, ok := s.byID[id]
		if !ok {
			return nil, reserved, status.Errorf(codes.InvalidArgument, "%s: unknown device %q", s.res.Name, id)
		}
		err := s.deps.ledger.Reserve(ledger.Record{ID: id, API: ledger.DevicePlugin, Resources: []ledger.Resource{d.resource()}})
		if err != nil {
			return nil, reserved, status.Errorf(codes.FailedPrecondition, "%s: allocate %s: %v", s.res.Name, id, err)
		}
		reserved = append(reserved, id)
		if !seen[d.UUID] {
			seen[d.UUID] = true
			uuids = append(uuids, d.UUID)
		}
	}
	sort.Strings(uuids)
	cresp := &pluginapi.ContainerAllocateResponse{}
	switch s.deps.strategy() {
	case configv1.DeviceListStrategyEnvVar:
		cresp.Envs = map[string]string{"NVIDIA_VISIBLE_DEVICES": strings.Join(uuids, ",")}
	default:
		for _, u := range uuids {
			cresp.CdiDevices = append(cresp.CdiDevices, &pluginapi.CDIDevice{Name: s.deps.cdiName(u)})
		}
	}
	return cresp, reserved, nil
}

// GetPreferredAllocation picks devices NVLink-close together (whole GPUs),
// or spread across physical GPUs (replicas). Unknown IDs, such as a GPU
// that has gone missing, are skipped rather than failing the call.
func (s *server) GetPreferredAllocation(_ context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	resp := &pluginapi.PreferredAllocationResponse{ContainerResponses: make([]*pluginapi.ContainerPreferredAllocationResponse, 0, len(req.ContainerRequests))}
	for _, creq := range req.ContainerRequests {
		ids := s.alloc.preferred(creq.AvailableDeviceIDs, creq.MustIncludeDeviceIDs, int(creq.AllocationSize))
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerPreferredAllocationResponse{DeviceIDs: ids})
	}
	return resp, nil
}

// PreStartContainer is not required (GetDevicePluginOptions says so); it
// answers for kubelets that call it anyway.
func (s *server) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}
