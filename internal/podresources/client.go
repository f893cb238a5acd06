// Package podresources is a small client of the kubelet's PodResources
// API (k8s.io/kubelet/pkg/apis/podresources/v1) over its unix socket: which
// containers hold which device-plugin devices and which DRA claims. It
// returns plain structs, so callers do not handle protobuf types.
package podresources

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// SocketPath is where the kubelet serves the API under its root directory.
func SocketPath(kubeletRoot string) string {
	return filepath.Join(kubeletRoot, "pod-resources", "kubelet.sock")
}

// DefaultTimeout bounds one connection attempt and one call.
const DefaultTimeout = 5 * time.Second

// maxMessageSize is the kubelet's own limit for this API's responses
// (16 MiB): a node with many pods exceeds gRPC's default of 4 MiB.
const maxMessageSize = 16 << 20

// Pod is one pod's resources as the kubelet reports them.
type Pod struct {
	Namespace  string
	Name       string
	Containers []Container
}

// Container is one container's devices and claims.
type Container struct {
	Name string
	// Devices are the device-plugin devices, by resource name.
	Devices []Devices
	// Claims are the DRA claims the container uses.
	Claims []Claim
}

// Devices are device-plugin devices of one resource.
type Devices struct {
	ResourceName string
	// IDs are the device IDs the plugin advertised ("GPU-...", or
	// "GPU-...::2" for a time-sliced replica).
	IDs []string
}

// Claim is a DRA claim a container uses, with the devices allocated to it.
type Claim struct {
	Namespace string
	Name      string
	Devices   []ClaimDevice
}

// ClaimDevice is a device allocated to a claim.
type ClaimDevice struct {
	Driver string
	Pool   string
	Device string
	// ShareID is set when the device is shared (consumable capacity).
	ShareID string
	// CDIDevices are the fully qualified CDI names the kubelet injected.
	CDIDevices []string
}

// Client talks to one kubelet's PodResources socket. It is safe for
// concurrent use; the connection is re-established by gRPC when the
// kubelet restarts.
type Client struct {
	socket  string
	timeout time.Duration
	conn    *grpc.ClientConn
	api     podresourcesv1.PodResourcesListerClient
}

// Dial returns a client of the socket. It does not wait for the kubelet:
// each connection attempt and each call is bounded by timeout (0 means
// DefaultTimeout), and a kubelet that is not there yet is an error of the
// call, not of Dial.
func Dial(socket string, timeout time.Duration) (*Client, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: timeout}
		return d.DialContext(ctx, "unix", addr)
	}
	conn, err := grpc.NewClient("passthrough:///"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageSize)),
	)
	if err != nil {
		return nil, fmt.Errorf("pod resources socket %s: %w", socket, err)
	}
	return &Client{socket: socket, timeout: timeout, conn: conn, api: podresourcesv1.NewPodResourcesListerClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// List returns every pod the kubelet knows with its resources.
func (c *Client) List(ctx context.Context) ([]Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.api.List(ctx, &podresourcesv1.ListPodResourcesRequest{})
	if err != nil {
		return nil, fmt.Errorf("list pod resources from %s: %w", c.socket, err)
	}
	pods := make([]Pod, 0, len(resp.GetPodResources()))
	for _, p := range resp.GetPodResources() {
		pods = append(pods, convertPod(p))
	}
	return pods, nil
}

// Get returns one pod's resources.
func (c *Client) Get(ctx context.Context, namespace, name string) (Pod, error) {
	if namespace == "" || name == "" {
		return Pod{}, errors.New("get pod resources: namespace and name are required")
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.api.Get(ctx, &podresourcesv1.GetPodResourcesRequest{PodNamespace: namespace, PodName: name})
	if err != nil {
		return Pod{}, fmt.Errorf("get pod resources of %s/%s from %s: %w", namespace, name, c.socket, err)
	}
	return convertPod(resp.GetPodResources()), nil
}

func convertPod(p *podresourcesv1.PodResources) Pod {
	pod := Pod{Namespace: p.GetNamespace(), Name: p.GetName()}
	for _, c := range p.GetContainers() {
		ctr := Container{Name: c.GetName()}
		for _, d := range c.GetDevices() {
			ctr.Devices = append(ctr.Devices, Devices{ResourceName: d.GetResourceName(), IDs: d.GetDeviceIds()})
		}
		for _, dr := range c.GetDynamicResources() {
			cl := Claim{Namespace: dr.GetClaimNamespace(), Name: dr.GetClaimName()}
			for _, r := range dr.GetClaimResources() {
				cd := ClaimDevice{Driver: r.GetDriverName(), Pool: r.GetPoolName(), Device: r.GetDeviceName(), ShareID: r.GetShareId()}
				for _, cdi := range r.GetCdiDevices() {
					cd.CDIDevices = append(cd.CDIDevices, cdi.GetName())
				}
				cl.Devices = append(cl.Devices, cd)
			}
			ctr.Claims = append(ctr.Claims, cl)
		}
		pod.Containers = append(pod.Containers, ctr)
	}
	return pod
}
