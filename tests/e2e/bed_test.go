package e2e_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
	"k8s.io/utils/ptr"

	"github.com/gpulet/gpulet/tests/e2e/bed"
)

func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }

// TestBedSmoke checks the bed itself, each step against the real
// components: the API server's version and DRA API, a kubelet that becomes a
// Ready Node, a pod scheduled by the real scheduler and run through the CRI
// stub, the PodResources socket, a device plugin registered through the
// kubelet's private device-plugin directory from outside its mount
// namespace, and a kubelet restart.
func TestBedSmoke(t *testing.T) {
	c := bed.Cluster(t)
	client := c.Client()
	ctx := t.Context()

	v, err := client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != "v1.37.2" {
		t.Errorf("API server version %s, want v1.37.2", v.GitVersion)
	}

	start := time.Now()
	node := c.StartNode(t, bed.NodeOptions{Labels: map[string]string{"e2e.gpulet.dev/smoke": "true"}})
	t.Logf("node %s Ready without taints in %s", node.Name(), time.Since(start).Round(time.Millisecond))
	obj, err := node.Object(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := obj.Status.NodeInfo.KubeletVersion; got != "v1.37.2" {
		t.Errorf("kubelet version %q, want v1.37.2", got)
	}
	if got := obj.Status.NodeInfo.ContainerRuntimeVersion; got != "gpulet-e2e-cri://0.1.0" {
		t.Errorf("node runtime %q, want the CRI stub", got)
	}
	if obj.Labels["e2e.gpulet.dev/smoke"] != "true" {
		t.Errorf("node labels %v lack the requested label", obj.Labels)
	}

	ns := c.Namespace(t)

	t.Run("plain pod runs", func(t *testing.T) {
		pod := runPod(t, c, node, ns, "plain", nil)
		rec := node.CRI().WaitPodContainer(t, 30*time.Second, ns, pod.Name, "main")
		if rec.PodUID != string(pod.UID) || rec.Image != "registry.example/smoke:1" {
			t.Errorf("CRI record %+v does not match pod %s (uid %s)", rec, pod.Name, pod.UID)
		}
		if rec.Env["SMOKE"] != "yes" {
			t.Errorf("container env %v lacks SMOKE=yes", rec.Env)
		}
		if !slices.ContainsFunc(rec.Mounts, func(m bed.Mount) bool {
			return m.ContainerPath == "/var/run/secrets/kubernetes.io/serviceaccount"
		}) {
			t.Errorf("container mounts %v lack the service-account token volume", rec.Mounts)
		}
		if !rec.Running() {
			t.Errorf("container not running in the CRI stub: %+v", rec)
		}
	})

	t.Run("pod resources socket answers", func(t *testing.T) {
		listPodResources(t, node, ns, "plain")
	})

	t.Run("device plugin through the bind mount", func(t *testing.T) {
		// Served on the host, outside the kubelet's mount namespace: the
		// kubelet dials it through its bind mount, and this test registers
		// with the kubelet's socket through the same directory.
		startFakeDevicePlugin(t, node, "example.com/smoke", 2)
		bed.Eventually(t, 60*time.Second, "allocatable example.com/smoke=2", func(ctx context.Context) error {
			n, err := node.Object(ctx)
			if err != nil {
				return err
			}
			q := n.Status.Allocatable["example.com/smoke"]
			if q.Value() != 2 {
				return fmt.Errorf("allocatable example.com/smoke=%s", q.String())
			}
			return nil
		})
		pod := runPod(t, c, node, ns, "with-device", corev1.ResourceList{"example.com/smoke": resource.MustParse("1")})
		rec := node.CRI().WaitPodContainer(t, 30*time.Second, ns, pod.Name, "main")
		if len(rec.CDIDevices) != 1 || !strings.HasPrefix(rec.CDIDevices[0], "example.com/smoke=dev-") {
			t.Errorf("CDI devices %v, want one example.com/smoke device", rec.CDIDevices)
		}
		if !strings.HasPrefix(rec.Env["SMOKE_DEVICE"], "dev-") {
			t.Errorf("env %v lacks SMOKE_DEVICE from Allocate", rec.Env)
		}
		if len(rec.Devices) != 1 || rec.Devices[0].ContainerPath != "/dev/smoke0" {
			t.Errorf("device nodes %v, want /dev/smoke0 from Allocate", rec.Devices)
		}
		res := listPodResources(t, node, ns, pod.Name)
		if len(res) != 1 || res[0].GetResourceName() != "example.com/smoke" || len(res[0].GetDeviceIds()) != 1 {
			t.Errorf("pod resources %v, want one example.com/smoke device", res)
		}
	})

	t.Run("DRA API served", func(t *testing.T) {
		draAPI(t, c, node)
	})

	t.Run("kubelet restart keeps the node Ready", func(t *testing.T) {
		before := len(node.CRI().Containers())
		start := time.Now()
		node.RestartKubelet(t)
		t.Logf("kubelet back, Lease renewed, node Ready in %s", time.Since(start).Round(time.Millisecond))
		// The pod survives the restart with its container, as with a real
		// runtime, and the PodResources socket is back.
		bed.Eventually(t, 60*time.Second, "pod plain Running after restart", func(ctx context.Context) error {
			return podRunning(ctx, c, ns, "plain")
		})
		if after := len(node.CRI().Containers()); after != before {
			t.Errorf("containers recreated by the restart: %d records before, %d after", before, after)
		}
		listPodResources(t, node, ns, "plain")
	})

	t.Run("API server restart", func(t *testing.T) {
		start := time.Now()
		c.StopAPIServer(t)
		c.StartAPIServer(t)
		t.Logf("API server back in %s", time.Since(start).Round(time.Millisecond))
		node.WaitReady(t, 60*time.Second)
		// The scheduler, controller-manager and kubelet reconnect by
		// themselves: a new pod is scheduled and run.
		runPod(t, c, node, ns, "after-apiserver-restart", nil)
	})
}

// runPod creates a pod pinned by label (not nodeName) to node, so the real
// scheduler binds it, and waits for it to be Running.
func runPod(t *testing.T, c *bed.ControlPlane, node *bed.Node, ns, name string, limits corev1.ResourceList) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			NodeSelector: map[string]string{"kubernetes.io/hostname": node.Name()},
			Containers: []corev1.Container{{
				Name:      "main",
				Image:     "registry.example/smoke:1",
				Env:       []corev1.EnvVar{{Name: "SMOKE", Value: "yes"}},
				Resources: corev1.ResourceRequirements{Limits: limits},
			}},
			TerminationGracePeriodSeconds: ptr.To[int64](1),
		},
	}
	if _, err := c.Client().CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bed.Eventually(t, 60*time.Second, "pod "+name+" Running", func(ctx context.Context) error {
		return podRunning(ctx, c, ns, name)
	})
	pod, err := c.Client().CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Spec.NodeName != node.Name() {
		t.Fatalf("pod %s on node %q, want %s", name, pod.Spec.NodeName, node.Name())
	}
	return pod
}

func podRunning(ctx context.Context, c *bed.ControlPlane, ns, name string) error {
	p, err := c.Client().CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if p.Status.Phase != corev1.PodRunning {
		return fmt.Errorf("phase %s, conditions %v, containers %v", p.Status.Phase, p.Status.Conditions, p.Status.ContainerStatuses)
	}
	for _, cs := range p.Status.ContainerStatuses {
		if !cs.Ready {
			return fmt.Errorf("container %s not ready: %v", cs.Name, cs.State)
		}
	}
	return nil
}

// listPodResources waits until the kubelet's PodResources List shows the
// named pod's container "main" and returns that container's devices. After a
// kubelet restart the list fills again as the kubelet re-admits its pods.
func listPodResources(t *testing.T, node *bed.Node, ns, pod string) []*podresourcesapi.ContainerDevices {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+node.PodResourcesSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := podresourcesapi.NewPodResourcesListerClient(conn)
	var devices []*podresourcesapi.ContainerDevices
	bed.Eventually(t, 30*time.Second, "PodResources List shows "+ns+"/"+pod, func(ctx context.Context) error {
		resp, err := client.List(ctx, &podresourcesapi.ListPodResourcesRequest{})
		if err != nil {
			return fmt.Errorf("PodResources List: %w", err)
		}
		for _, p := range resp.GetPodResources() {
			if p.GetNamespace() != ns || p.GetName() != pod {
				continue
			}
			for _, ctr := range p.GetContainers() {
				if ctr.GetName() == "main" {
					devices = ctr.GetDevices()
					return nil
				}
			}
		}
		return fmt.Errorf("no container main of %s/%s among %d pods", ns, pod, len(resp.GetPodResources()))
	})
	return devices
}

// draAPI creates a DeviceClass and a ResourceSlice for node as admin and
// reads them back through resource.k8s.io/v1.
func draAPI(t *testing.T, c *bed.ControlPlane, node *bed.Node) {
	client := c.Client().ResourceV1()
	ctx := t.Context()
	driver := "smoke.e2e.gpulet.dev"

	dc, err := client.DeviceClasses().Create(ctx, &resourceapi.DeviceClass{
		ObjectMeta: metav1.ObjectMeta{Name: driver},
		Spec: resourceapi.DeviceClassSpec{Selectors: []resourceapi.DeviceSelector{{
			CEL: &resourceapi.CELDeviceSelector{Expression: `device.driver == "` + driver + `"`},
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create DeviceClass: %v", err)
	}
	t.Cleanup(func() { _ = client.DeviceClasses().Delete(context.Background(), dc.Name, metav1.DeleteOptions{}) })

	slice, err := client.ResourceSlices().Create(ctx, &resourceapi.ResourceSlice{
		ObjectMeta: metav1.ObjectMeta{Name: node.Name() + "-" + driver},
		Spec: resourceapi.ResourceSliceSpec{
			Driver:   driver,
			NodeName: ptr.To(node.Name()),
			Pool:     resourceapi.ResourcePool{Name: node.Name(), ResourceSliceCount: 1},
			Devices: []resourceapi.Device{{
				Name: "gpu-0",
				Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
					"productName": {StringValue: ptr.To("Smoke H100")},
				},
				Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{
					"memory": {Value: resource.MustParse("80Gi")},
				},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create ResourceSlice: %v", err)
	}
	t.Cleanup(func() { _ = client.ResourceSlices().Delete(context.Background(), slice.Name, metav1.DeleteOptions{}) })

	got, err := client.DeviceClasses().Get(ctx, driver, metav1.GetOptions{})
	if err != nil || len(got.Spec.Selectors) != 1 {
		t.Fatalf("read DeviceClass back: %v %+v", err, got)
	}
	list, err := client.ResourceSlices().List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node.Name()).String(),
	})
	if err != nil {
		t.Fatalf("list ResourceSlices of node %s: %v", node.Name(), err)
	}
	if len(list.Items) != 1 || list.Items[0].Spec.Driver != driver || len(list.Items[0].Spec.Devices) != 1 ||
		*list.Items[0].Spec.Devices[0].Attributes["productName"].StringValue != "Smoke H100" {
		t.Fatalf("ResourceSlices of node %s: %+v", node.Name(), list.Items)
	}
}

// fakeDevicePlugin is a minimal device plugin for the smoke test: n healthy
// devices, Allocate answering with a CDI device, an env var and a device node.
type fakeDevicePlugin struct {
	pluginapi.UnimplementedDevicePluginServer
	resource string
	n        int
}

func startFakeDevicePlugin(t *testing.T, node *bed.Node, resourceName string, n int) {
	t.Helper()
	sock := "smoke.sock"
	path := filepath.Join(node.DevicePluginDir(), sock)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, &fakeDevicePlugin{resource: resourceName, n: n})
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)

	conn, err := grpc.NewClient("unix://"+filepath.Join(node.DevicePluginDir(), "kubelet.sock"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     sock,
		ResourceName: resourceName,
	})
	if err != nil {
		t.Fatalf("register with the kubelet through %s: %v", node.DevicePluginDir(), err)
	}
}

func (p *fakeDevicePlugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

func (p *fakeDevicePlugin) ListAndWatch(_ *pluginapi.Empty, s pluginapi.DevicePlugin_ListAndWatchServer) error {
	var devs []*pluginapi.Device
	for i := range p.n {
		devs = append(devs, &pluginapi.Device{ID: fmt.Sprintf("dev-%d", i), Health: pluginapi.Healthy})
	}
	if err := s.Send(&pluginapi.ListAndWatchResponse{Devices: devs}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

func (p *fakeDevicePlugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, cr := range req.GetContainerRequests() {
		ids := cr.GetDevicesIds()
		car := &pluginapi.ContainerAllocateResponse{
			Envs:    map[string]string{"SMOKE_DEVICE": strings.Join(ids, ",")},
			Devices: []*pluginapi.DeviceSpec{{HostPath: "/dev/null", ContainerPath: "/dev/smoke0", Permissions: "rw"}},
		}
		for _, id := range ids {
			car.CdiDevices = append(car.CdiDevices, &pluginapi.CDIDevice{Name: p.resource + "=" + id})
		}
		resp.ContainerResponses = append(resp.ContainerResponses, car)
	}
	return resp, nil
}

// TestGpuletDevicePlugin runs the real gpulet binary on a bed node with the
// simulated DGX H100 and checks what the real kubelet then reports and runs:
// 8 nvidia.com/gpu, and a pod asking for 2 gets two CDI devices. It is the
// bed's check that StartGpulet reaches the kubelet; the device plugin's own
// cases live with the device plugin tests.
func TestGpuletDevicePlugin(t *testing.T) {
	c := bed.Cluster(t)
	node := c.StartNode(t, bed.NodeOptions{})
	node.StartGpulet(t, "--nvml=mock:dgx-h100")
	bed.Eventually(t, 90*time.Second, "allocatable nvidia.com/gpu=8", func(ctx context.Context) error {
		n, err := node.Object(ctx)
		if err != nil {
			return err
		}
		if q := n.Status.Allocatable["nvidia.com/gpu"]; q.Value() != 8 {
			return fmt.Errorf("allocatable nvidia.com/gpu=%s", q.String())
		}
		return nil
	})
	ns := c.Namespace(t)
	pod := runPod(t, c, node, ns, "two-gpus", corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("2")})
	rec := node.CRI().WaitPodContainer(t, 30*time.Second, ns, pod.Name, "main")
	if len(rec.CDIDevices) != 2 {
		t.Errorf("container got CDI devices %v, want 2", rec.CDIDevices)
	}
	t.Logf("container got CDI devices %v, env NVIDIA_VISIBLE_DEVICES=%q", rec.CDIDevices, rec.Env["NVIDIA_VISIBLE_DEVICES"])
}
