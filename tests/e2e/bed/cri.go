package bed

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CRI is a container runtime stub for one kubelet: a CRI v1 gRPC server on
// a unix socket, in the test process, that keeps sandboxes and containers as
// records and runs nothing. A container is "running" from StartContainer
// until StopContainer. It records every CreateContainerRequest so tests can
// assert what a container would have been given (CDI devices, env, mounts,
// device nodes). It outlives kubelet restarts, as a real runtime does.
type CRI struct {
	socket string
	dir    string // fallback log dir and the "image filesystem"
	server *grpc.Server

	mu         sync.Mutex
	sandboxes  map[string]*sandbox
	containers map[string]*container
	images     map[string]*runtimeapi.Image // by name as pulled, and by ID
	records    []*ContainerRecord           // every create, in order
	nextIP     int
}

type sandbox struct {
	config *runtimeapi.PodSandboxConfig
	status *runtimeapi.PodSandboxStatus
}

type container struct {
	sandboxID string
	status    *runtimeapi.ContainerStatus
	record    *ContainerRecord
}

// ContainerRecord is what the kubelet asked the runtime to create, with the
// times the container was started, stopped and removed (zero until then).
type ContainerRecord struct {
	ID        string
	SandboxID string

	PodNamespace string
	PodName      string
	PodUID       string
	Name         string // container name in the pod
	Attempt      uint32
	Image        string // as the pod spec names it
	ImageRef     string // as the kubelet resolved it (the stub's image ID)

	CDIDevices  []string          // fully qualified CDI device names
	Env         map[string]string // CRI v1 carries values as bytes; decoded here
	Mounts      []Mount
	Devices     []Device
	Annotations map[string]string
	Labels      map[string]string

	Created time.Time
	Started time.Time
	Stopped time.Time
	Removed time.Time

	// Request is the full CreateContainerRequest, for anything not above.
	Request *runtimeapi.CreateContainerRequest
}

// Mount is one bind mount the kubelet asked for.
type Mount struct {
	HostPath      string
	ContainerPath string
	ReadOnly      bool
}

// Device is one device node the kubelet asked for (device plugins'
// DeviceSpecs end up here).
type Device struct {
	HostPath      string
	ContainerPath string
	Permissions   string
}

// Running reports whether the container was started and not yet stopped.
func (r ContainerRecord) Running() bool { return !r.Started.IsZero() && r.Stopped.IsZero() }

// imageSize is what every pulled image weighs: the kubelet treats an image
// of size 0 as missing and fails the container with CreateContainerConfigError.
const imageSize = 4 << 20

func newCRI(socket, dir string) (*CRI, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	_ = os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("CRI stub listen on %s: %w", socket, err)
	}
	c := &CRI{
		socket:     socket,
		dir:        dir,
		server:     grpc.NewServer(),
		sandboxes:  map[string]*sandbox{},
		containers: map[string]*container{},
		images:     map[string]*runtimeapi.Image{},
	}
	runtimeapi.RegisterRuntimeServiceServer(c.server, &criRuntime{c: c})
	runtimeapi.RegisterImageServiceServer(c.server, &criImages{c: c})
	go func() { _ = c.server.Serve(l) }()
	return c, nil
}

// Endpoint is the stub's socket as the kubelet's containerRuntimeEndpoint.
func (c *CRI) Endpoint() string { return "unix://" + c.socket }

func (c *CRI) stop() { c.server.Stop() }

// Containers returns a copy of every container record, oldest first,
// including containers since removed.
func (c *CRI) Containers() []ContainerRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]ContainerRecord, 0, len(c.records))
	for _, r := range c.records {
		out = append(out, *r)
	}
	return out
}

// PodContainers returns the records of one pod's containers, oldest first.
func (c *CRI) PodContainers(namespace, pod string) []ContainerRecord {
	var out []ContainerRecord
	for _, r := range c.Containers() {
		if r.PodNamespace == namespace && r.PodName == pod {
			out = append(out, r)
		}
	}
	return out
}

// WaitContainer waits until a record matches and returns the newest match.
func (c *CRI) WaitContainer(t testing.TB, timeout time.Duration, what string, match func(ContainerRecord) bool) ContainerRecord {
	t.Helper()
	var found ContainerRecord
	Eventually(t, timeout, what, func(context.Context) error {
		recs := c.Containers()
		for i := len(recs) - 1; i >= 0; i-- {
			if match(recs[i]) {
				found = recs[i]
				return nil
			}
		}
		return fmt.Errorf("no matching container among %d records", len(recs))
	})
	return found
}

// WaitPodContainer waits for a started container of the named pod.
func (c *CRI) WaitPodContainer(t testing.TB, timeout time.Duration, namespace, pod, name string) ContainerRecord {
	t.Helper()
	return c.WaitContainer(t, timeout, fmt.Sprintf("container %s of pod %s/%s started", name, namespace, pod),
		func(r ContainerRecord) bool {
			return r.PodNamespace == namespace && r.PodName == pod && r.Name == name && !r.Started.IsZero()
		})
}

func newID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// criRuntime and criImages are the two gRPC services over one CRI state.
type criRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	c *CRI
}

type criImages struct {
	runtimeapi.UnimplementedImageServiceServer
	c *CRI
}

func (s *criRuntime) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{
		Version: "0.1.0", RuntimeName: "gpulet-e2e-cri", RuntimeVersion: "0.1.0", RuntimeApiVersion: "v1",
	}, nil
}

func (s *criRuntime) Status(context.Context, *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	return &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true},
		{Type: runtimeapi.NetworkReady, Status: true},
	}}}, nil
}

func (s *criRuntime) RuntimeConfig(context.Context, *runtimeapi.RuntimeConfigRequest) (*runtimeapi.RuntimeConfigResponse, error) {
	return &runtimeapi.RuntimeConfigResponse{Linux: &runtimeapi.LinuxRuntimeConfiguration{
		CgroupDriver: runtimeapi.CgroupDriver_CGROUPFS,
	}}, nil
}

func (s *criRuntime) UpdateRuntimeConfig(context.Context, *runtimeapi.UpdateRuntimeConfigRequest) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	return &runtimeapi.UpdateRuntimeConfigResponse{}, nil
}

func (s *criRuntime) RunPodSandbox(_ context.Context, req *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	id := newID()
	c.nextIP++
	cfg := req.GetConfig()
	c.sandboxes[id] = &sandbox{
		config: proto.Clone(cfg).(*runtimeapi.PodSandboxConfig),
		status: &runtimeapi.PodSandboxStatus{
			Id:        id,
			Metadata:  cfg.GetMetadata(),
			State:     runtimeapi.PodSandboxState_SANDBOX_READY,
			CreatedAt: time.Now().UnixNano(),
			Network:   &runtimeapi.PodSandboxNetworkStatus{Ip: fmt.Sprintf("10.244.%d.%d", c.nextIP/250, c.nextIP%250+2)},
			// Echo the namespace options: otherwise the kubelet thinks the
			// network namespace changed and recreates the sandbox forever.
			Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{
				Options: cfg.GetLinux().GetSecurityContext().GetNamespaceOptions(),
			}},
			Labels:         cfg.GetLabels(),
			Annotations:    cfg.GetAnnotations(),
			RuntimeHandler: req.GetRuntimeHandler(),
		},
	}
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: id}, nil
}

func (s *criRuntime) StopPodSandbox(_ context.Context, req *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	sb, ok := c.sandboxes[req.GetPodSandboxId()]
	if !ok {
		return &runtimeapi.StopPodSandboxResponse{}, nil // idempotent, as the CRI asks
	}
	sb.status.State = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	for _, ct := range c.containers {
		if ct.sandboxID == sb.status.Id {
			c.stopLocked(ct)
		}
	}
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

func (s *criRuntime) RemovePodSandbox(_ context.Context, req *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	id := req.GetPodSandboxId()
	for cid, ct := range c.containers {
		if ct.sandboxID == id {
			c.removeLocked(cid, ct)
		}
	}
	delete(c.sandboxes, id)
	return &runtimeapi.RemovePodSandboxResponse{}, nil
}

func (s *criRuntime) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	sb, ok := c.sandboxes[req.GetPodSandboxId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "pod sandbox %q not found", req.GetPodSandboxId())
	}
	return &runtimeapi.PodSandboxStatusResponse{Status: proto.Clone(sb.status).(*runtimeapi.PodSandboxStatus)}, nil
}

func (s *criRuntime) ListPodSandbox(_ context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	return &runtimeapi.ListPodSandboxResponse{Items: s.c.listSandboxes(req.GetFilter())}, nil
}

func (s *criRuntime) StreamPodSandboxes(req *runtimeapi.StreamPodSandboxesRequest, stream runtimeapi.RuntimeService_StreamPodSandboxesServer) error {
	return stream.Send(&runtimeapi.StreamPodSandboxesResponse{PodSandboxes: s.c.listSandboxes(req.GetFilter())})
}

func (c *CRI) listSandboxes(f *runtimeapi.PodSandboxFilter) []*runtimeapi.PodSandbox {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*runtimeapi.PodSandbox
	for _, sb := range c.sandboxes {
		st := sb.status
		if f.GetId() != "" && f.GetId() != st.Id ||
			f.GetState() != nil && f.GetState().GetState() != st.State ||
			!labelsMatch(f.GetLabelSelector(), st.Labels) {
			continue
		}
		out = append(out, &runtimeapi.PodSandbox{
			Id: st.Id, Metadata: st.Metadata, State: st.State, CreatedAt: st.CreatedAt,
			Labels: st.Labels, Annotations: st.Annotations, RuntimeHandler: st.RuntimeHandler,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt < out[j].CreatedAt })
	return out
}

func (s *criRuntime) CreateContainer(_ context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	c := s.c
	cfg := req.GetConfig()
	c.mu.Lock()
	defer c.mu.Unlock()
	sb, ok := c.sandboxes[req.GetPodSandboxId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "pod sandbox %q not found", req.GetPodSandboxId())
	}
	id := newID()
	now := time.Now()

	// The kubelet gives a log path relative to the sandbox's log directory;
	// report it back absolute and make the file exist. An empty path makes
	// the kubelet's log housekeeping work on its own working directory.
	logDir := sb.config.GetLogDirectory()
	if logDir == "" {
		logDir = filepath.Join(c.dir, "logs", req.GetPodSandboxId())
	}
	logPath := filepath.Join(logDir, cfg.GetLogPath())
	if cfg.GetLogPath() == "" {
		logPath = filepath.Join(logDir, id+".log")
	}
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err == nil {
		if f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			f.Close()
		}
	}

	rec := &ContainerRecord{
		ID:           id,
		SandboxID:    req.GetPodSandboxId(),
		PodNamespace: sb.config.GetMetadata().GetNamespace(),
		PodName:      sb.config.GetMetadata().GetName(),
		PodUID:       sb.config.GetMetadata().GetUid(),
		Name:         cfg.GetMetadata().GetName(),
		Attempt:      cfg.GetMetadata().GetAttempt(),
		Image:        cfg.GetImage().GetUserSpecifiedImage(),
		ImageRef:     cfg.GetImage().GetImage(),
		Env:          map[string]string{},
		Annotations:  cfg.GetAnnotations(),
		Labels:       cfg.GetLabels(),
		Created:      now,
		Request:      proto.Clone(req).(*runtimeapi.CreateContainerRequest),
	}
	if rec.Image == "" {
		rec.Image = rec.ImageRef
	}
	for _, d := range cfg.GetCDIDevices() {
		rec.CDIDevices = append(rec.CDIDevices, d.GetName())
	}
	for _, kv := range cfg.GetEnvs() {
		rec.Env[kv.GetKey()] = string(kv.GetValue())
	}
	for _, m := range cfg.GetMounts() {
		rec.Mounts = append(rec.Mounts, Mount{HostPath: m.GetHostPath(), ContainerPath: m.GetContainerPath(), ReadOnly: m.GetReadonly()})
	}
	for _, d := range cfg.GetDevices() {
		rec.Devices = append(rec.Devices, Device{HostPath: d.GetHostPath(), ContainerPath: d.GetContainerPath(), Permissions: d.GetPermissions()})
	}
	c.records = append(c.records, rec)

	imageRef := cfg.GetImage().GetImage()
	if img, ok := c.images[imageRef]; ok {
		imageRef = img.Id
	}
	c.containers[id] = &container{
		sandboxID: req.GetPodSandboxId(),
		record:    rec,
		status: &runtimeapi.ContainerStatus{
			Id:          id,
			Metadata:    cfg.GetMetadata(),
			State:       runtimeapi.ContainerState_CONTAINER_CREATED,
			CreatedAt:   now.UnixNano(),
			Image:       cfg.GetImage(),
			ImageRef:    imageRef,
			ImageId:     imageRef,
			Labels:      cfg.GetLabels(),
			Annotations: cfg.GetAnnotations(),
			Mounts:      cfg.GetMounts(),
			LogPath:     logPath,
		},
	}
	return &runtimeapi.CreateContainerResponse{ContainerId: id}, nil
}

func (s *criRuntime) StartContainer(_ context.Context, req *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	ct, ok := c.containers[req.GetContainerId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "container %q not found", req.GetContainerId())
	}
	if ct.status.State != runtimeapi.ContainerState_CONTAINER_CREATED {
		return nil, status.Errorf(codes.FailedPrecondition, "container %q is %s, not created", ct.status.Id, ct.status.State)
	}
	now := time.Now()
	ct.status.State = runtimeapi.ContainerState_CONTAINER_RUNNING
	ct.status.StartedAt = now.UnixNano()
	ct.record.Started = now
	return &runtimeapi.StartContainerResponse{}, nil
}

func (s *criRuntime) StopContainer(_ context.Context, req *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if ct, ok := c.containers[req.GetContainerId()]; ok {
		c.stopLocked(ct)
	}
	return &runtimeapi.StopContainerResponse{}, nil
}

// stopLocked ends a container as if its process had exited on SIGTERM.
func (c *CRI) stopLocked(ct *container) {
	if ct.status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
		return
	}
	now := time.Now()
	ct.status.State = runtimeapi.ContainerState_CONTAINER_EXITED
	ct.status.FinishedAt = now.UnixNano()
	ct.status.ExitCode = 0
	ct.status.Reason = "Completed"
	ct.record.Stopped = now
}

func (s *criRuntime) RemoveContainer(_ context.Context, req *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if ct, ok := c.containers[req.GetContainerId()]; ok {
		c.removeLocked(req.GetContainerId(), ct)
	}
	return &runtimeapi.RemoveContainerResponse{}, nil
}

func (c *CRI) removeLocked(id string, ct *container) {
	c.stopLocked(ct)
	ct.record.Removed = time.Now()
	delete(c.containers, id)
}

func (s *criRuntime) ListContainers(_ context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	return &runtimeapi.ListContainersResponse{Containers: s.c.listContainers(req.GetFilter())}, nil
}

func (s *criRuntime) StreamContainers(req *runtimeapi.StreamContainersRequest, stream runtimeapi.RuntimeService_StreamContainersServer) error {
	return stream.Send(&runtimeapi.StreamContainersResponse{Containers: s.c.listContainers(req.GetFilter())})
}

func (c *CRI) listContainers(f *runtimeapi.ContainerFilter) []*runtimeapi.Container {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*runtimeapi.Container
	for _, ct := range c.containers {
		st := ct.status
		if f.GetId() != "" && f.GetId() != st.Id ||
			f.GetPodSandboxId() != "" && f.GetPodSandboxId() != ct.sandboxID ||
			f.GetState() != nil && f.GetState().GetState() != st.State ||
			!labelsMatch(f.GetLabelSelector(), st.Labels) {
			continue
		}
		out = append(out, &runtimeapi.Container{
			Id: st.Id, PodSandboxId: ct.sandboxID, Metadata: st.Metadata, Image: st.Image,
			ImageRef: st.ImageRef, ImageId: st.ImageId, State: st.State, CreatedAt: st.CreatedAt,
			Labels: st.Labels, Annotations: st.Annotations,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt < out[j].CreatedAt })
	return out
}

func (s *criRuntime) ContainerStatus(_ context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	ct, ok := c.containers[req.GetContainerId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "container %q not found", req.GetContainerId())
	}
	return &runtimeapi.ContainerStatusResponse{Status: proto.Clone(ct.status).(*runtimeapi.ContainerStatus)}, nil
}

func (s *criRuntime) UpdateContainerResources(context.Context, *runtimeapi.UpdateContainerResourcesRequest) (*runtimeapi.UpdateContainerResourcesResponse, error) {
	return &runtimeapi.UpdateContainerResourcesResponse{}, nil
}

func (s *criRuntime) UpdatePodSandboxResources(context.Context, *runtimeapi.UpdatePodSandboxResourcesRequest) (*runtimeapi.UpdatePodSandboxResourcesResponse, error) {
	return &runtimeapi.UpdatePodSandboxResourcesResponse{}, nil
}

func (s *criRuntime) ReopenContainerLog(context.Context, *runtimeapi.ReopenContainerLogRequest) (*runtimeapi.ReopenContainerLogResponse, error) {
	return &runtimeapi.ReopenContainerLogResponse{}, nil
}

// Stats: the stub has nothing to measure; empty answers keep the kubelet's
// summary and eviction code quiet instead of logging Unimplemented.

func (s *criRuntime) ContainerStats(_ context.Context, req *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	return nil, status.Errorf(codes.NotFound, "no stats for container %q", req.GetContainerId())
}

func (s *criRuntime) ListContainerStats(context.Context, *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	return &runtimeapi.ListContainerStatsResponse{}, nil
}

func (s *criRuntime) PodSandboxStats(_ context.Context, req *runtimeapi.PodSandboxStatsRequest) (*runtimeapi.PodSandboxStatsResponse, error) {
	return nil, status.Errorf(codes.NotFound, "no stats for pod sandbox %q", req.GetPodSandboxId())
}

func (s *criRuntime) ListPodSandboxStats(context.Context, *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	return &runtimeapi.ListPodSandboxStatsResponse{}, nil
}

func (s *criRuntime) ListMetricDescriptors(context.Context, *runtimeapi.ListMetricDescriptorsRequest) (*runtimeapi.ListMetricDescriptorsResponse, error) {
	return &runtimeapi.ListMetricDescriptorsResponse{}, nil
}

func (s *criRuntime) ListPodSandboxMetrics(context.Context, *runtimeapi.ListPodSandboxMetricsRequest) (*runtimeapi.ListPodSandboxMetricsResponse, error) {
	return &runtimeapi.ListPodSandboxMetricsResponse{}, nil
}

func (s *criImages) PullImage(_ context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	c := s.c
	name := req.GetImage().GetImage()
	c.mu.Lock()
	defer c.mu.Unlock()
	img, ok := c.images[name]
	if !ok {
		sum := sha256.Sum256([]byte(name))
		img = &runtimeapi.Image{
			Id:       "sha256:" + hex.EncodeToString(sum[:]),
			RepoTags: []string{name},
			Size:     imageSize,
			Spec:     req.GetImage(),
		}
		c.images[name] = img
		c.images[img.Id] = img
	}
	return &runtimeapi.PullImageResponse{ImageRef: img.Id}, nil
}

func (s *criImages) ImageStatus(_ context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	img, ok := c.images[req.GetImage().GetImage()]
	if !ok {
		return &runtimeapi.ImageStatusResponse{}, nil // nil image: not present
	}
	return &runtimeapi.ImageStatusResponse{Image: proto.Clone(img).(*runtimeapi.Image)}, nil
}

func (s *criImages) ListImages(context.Context, *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	return &runtimeapi.ListImagesResponse{Images: s.c.listImages()}, nil
}

func (s *criImages) StreamImages(_ *runtimeapi.StreamImagesRequest, stream runtimeapi.ImageService_StreamImagesServer) error {
	return stream.Send(&runtimeapi.StreamImagesResponse{Images: s.c.listImages()})
}

func (c *CRI) listImages() []*runtimeapi.Image {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*runtimeapi.Image
	for key, img := range c.images {
		if key == img.Id { // each image once
			out = append(out, proto.Clone(img).(*runtimeapi.Image))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

func (s *criImages) RemoveImage(_ context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if img, ok := c.images[req.GetImage().GetImage()]; ok {
		delete(c.images, img.Id)
		for _, tag := range img.RepoTags {
			delete(c.images, tag)
		}
	}
	return &runtimeapi.RemoveImageResponse{}, nil
}

func (s *criImages) ImageFsInfo(context.Context, *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	usage := func() *runtimeapi.FilesystemUsage {
		return &runtimeapi.FilesystemUsage{
			Timestamp:  time.Now().UnixNano(),
			FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: s.c.dir},
			UsedBytes:  &runtimeapi.UInt64Value{Value: imageSize},
			InodesUsed: &runtimeapi.UInt64Value{Value: 1},
		}
	}
	return &runtimeapi.ImageFsInfoResponse{
		ImageFilesystems:     []*runtimeapi.FilesystemUsage{usage()},
		ContainerFilesystems: []*runtimeapi.FilesystemUsage{usage()},
	}, nil
}

func labelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
