package podresources_test

import (
	"context"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/podresources"
	"github.com/gpulet/gpulet/internal/podresources/podresourcestest"
)

func TestListAndGet(t *testing.T) {
	srv := podresourcestest.Start(t)
	srv.Set(
		podresourcestest.DevicePluginPod("team-a", "train", "main", "nvidia.com/gpu", "GPU-1", "GPU-2::3"),
		podresourcestest.DRAPod("team-b", "infer", "server", "gpu-claim", "gpu.gpulet.dev", "gpu-abc"),
	)
	c, err := podresources.Dial(srv.Socket(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	ctx := context.Background()

	tests := []struct {
		name string
		get  func() (any, error)
		want any
	}{
		{
			name: "list",
			get:  func() (any, error) { return c.List(ctx) },
			want: []podresources.Pod{
				{Namespace: "team-a", Name: "train", Containers: []podresources.Container{{
					Name: "main", Devices: []podresources.Devices{{ResourceName: "nvidia.com/gpu", IDs: []string{"GPU-1", "GPU-2::3"}}},
				}}},
				{Namespace: "team-b", Name: "infer", Containers: []podresources.Container{{
					Name: "server", Claims: []podresources.Claim{{Namespace: "team-b", Name: "gpu-claim", Devices: []podresources.ClaimDevice{{
						Driver: "gpu.gpulet.dev", Pool: "pool", Device: "gpu-abc", CDIDevices: []string{"gpu.gpulet.dev/gpu=gpu-abc"},
					}}}},
				}}},
			},
		},
		{
			name: "get",
			get:  func() (any, error) { return c.Get(ctx, "team-a", "train") },
			want: podresources.Pod{Namespace: "team-a", Name: "train", Containers: []podresources.Container{{
				Name: "main", Devices: []podresources.Devices{{ResourceName: "nvidia.com/gpu", IDs: []string{"GPU-1", "GPU-2::3"}}},
			}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.get()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestErrorsNameTheSocketAndPod(t *testing.T) {
	srv := podresourcestest.Start(t)
	missing := filepath.Join(t.TempDir(), "kubelet.sock")
	tests := []struct {
		name   string
		socket string
		call   func(*podresources.Client) error
		want   string
	}{
		{
			name:   "no kubelet",
			socket: missing,
			call:   func(c *podresources.Client) error { _, err := c.List(context.Background()); return err },
			want:   missing,
		},
		{
			name:   "unknown pod",
			socket: srv.Socket(),
			call:   func(c *podresources.Client) error { _, err := c.Get(context.Background(), "ns", "gone"); return err },
			want:   "ns/gone",
		},
		{
			name:   "no name",
			socket: srv.Socket(),
			call:   func(c *podresources.Client) error { _, err := c.Get(context.Background(), "ns", ""); return err },
			want:   "namespace and name are required",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := podresources.Dial(tt.socket, 200*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = c.Close() }()
			start := time.Now()
			err = tt.call(c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one naming %q", err, tt.want)
			}
			if time.Since(start) > 10*time.Second { // a hang, not a slow machine
				t.Errorf("took %v; the timeout is 200ms", time.Since(start))
			}
		})
	}
}

func TestSocketPath(t *testing.T) {
	if got := podresources.SocketPath("/var/lib/kubelet"); got != "/var/lib/kubelet/pod-resources/kubelet.sock" {
		t.Errorf("SocketPath = %q", got)
	}
}
