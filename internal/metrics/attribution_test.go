package metrics

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/podresources"
	"github.com/gpulet/gpulet/internal/podresources/podresourcestest"
)

func TestParseCgroup(t *testing.T) {
	const uid = "8f1c2c1e-2a1b-4c8d-9e0f-123456789abc"
	const id = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
	tests := []struct {
		name   string
		cgroup string
		want   PodContainer
		wantOK bool
	}{
		{name: "v1 cgroupfs burstable", cgroup: "12:memory:/kubepods/burstable/pod" + uid + "/" + id + "\n", want: PodContainer{uid, id}, wantOK: true},
		{name: "v1 cgroupfs guaranteed", cgroup: "4:cpu,cpuacct:/kubepods/pod" + uid + "/" + id + "\n", want: PodContainer{uid, id}, wantOK: true},
		{name: "v2 systemd containerd", cgroup: "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8f1c2c1e_2a1b_4c8d_9e0f_123456789abc.slice/cri-containerd-" + id + ".scope\n", want: PodContainer{uid, id}, wantOK: true},
		{name: "v2 systemd cri-o guaranteed", cgroup: "0::/kubepods.slice/kubepods-pod8f1c2c1e_2a1b_4c8d_9e0f_123456789abc.slice/crio-" + id + ".scope\n", want: PodContainer{uid, id}, wantOK: true},
		{name: "v1 systemd docker", cgroup: "11:devices:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8f1c2c1e_2a1b_4c8d_9e0f_123456789abc.slice/docker-" + id + ".scope\n", want: PodContainer{uid, id}, wantOK: true},
		{name: "kind node nested under a parent", cgroup: "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod8f1c2c1e_2a1b_4c8d_9e0f_123456789abc.slice/cri-containerd-" + id + ".scope\n", want: PodContainer{uid, id}, wantOK: true},
		{name: "seen from gpulet's own cgroup namespace", cgroup: "0::/../../kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8f1c2c1e_2a1b_4c8d_9e0f_123456789abc.slice/cri-containerd-" + id + ".scope\n", want: PodContainer{uid, id}, wantOK: true},
		{name: "static pod hash uid", cgroup: "0::/kubepods/burstable/pod0123456789abcdef0123456789abcdef/" + id + "\n", want: PodContainer{"0123456789abcdef0123456789abcdef", id}, wantOK: true},
		{name: "pod cgroup without container", cgroup: "0::/kubepods/besteffort/pod" + uid + "\n", want: PodContainer{PodUID: uid}, wantOK: true},
		{name: "v2 line wins over v1", cgroup: "12:memory:/kubepods/pod11111111-1111-1111-1111-111111111111/x\n0::/kubepods/pod" + uid + "/" + id + "\n", want: PodContainer{uid, id}, wantOK: true},
		{name: "host process", cgroup: "0::/system.slice/sshd.service\n"},
		{name: "own cgroup namespace", cgroup: "0::/\n"},
		{name: "podman is not a pod", cgroup: "0::/user.slice/podman-1234.scope\n"},
		{name: "empty", cgroup: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseCgroup([]byte(tt.cgroup))
			if ok != tt.wantOK || got != tt.want {
				t.Errorf("ParseCgroup = %+v, %v; want %+v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestAttribute(t *testing.T) {
	inv := inventory.Build(systemFixture(), deviceFixture())
	gpu, mig := inv.GPUs[0], inv.GPUs[1].MigDevices[0]
	tests := []struct {
		name        string
		records     []ledger.Record
		pods        []podresources.Pod
		want        []Allocation
		wantUnknown []string
	}{
		{
			name:    "device plugin: the kubelet names the pod",
			records: []ledger.Record{{ID: gpu.UUID, API: ledger.DevicePlugin, Resources: []ledger.Resource{{GPU: gpu.UUID, Device: gpu.UUID}}}},
			pods:    []podresources.Pod{{Namespace: "ns", Name: "p", Containers: []podresources.Container{{Name: "c", Devices: []podresources.Devices{{ResourceName: "nvidia.com/gpu", IDs: []string{gpu.UUID}}}}}}},
			want:    []Allocation{{Device: gpu.Name, UUID: gpu.UUID, API: ledger.DevicePlugin, Namespace: "ns", Pod: "p", Container: "c"}},
		},
		{
			name:    "device plugin: the ledger alone before the kubelet reports",
			records: []ledger.Record{{ID: gpu.UUID + "::1", API: ledger.DevicePlugin, Resources: []ledger.Resource{{GPU: gpu.UUID, Device: gpu.UUID, Shared: true}}}},
			want:    []Allocation{{Device: gpu.Name, UUID: gpu.UUID, API: ledger.DevicePlugin}},
		},
		{
			name: "dra: claim named by the ledger, pod by the kubelet",
			records: []ledger.Record{{ID: "uid", API: ledger.DRA, Namespace: "ns", Name: "claim",
				Resources: []ledger.Resource{{GPU: mig.ParentUUID, Slices: &ledger.Slices{Start: mig.Placement.Start, Size: mig.Placement.Size}, Device: mig.Name}}}},
			pods: []podresources.Pod{{Namespace: "ns", Name: "p", Containers: []podresources.Container{{Name: "c",
				Claims: []podresources.Claim{{Namespace: "ns", Name: "claim", Devices: []podresources.ClaimDevice{{Driver: DefaultDRADriverName, Device: mig.Name}}}}}}}},
			want: []Allocation{{Device: mig.Name, UUID: mig.UUID, API: ledger.DRA, Namespace: "ns", Pod: "p", Container: "c", Claim: "claim"}},
		},
		{
			name: "dra: a MIG device found by its slices when its name is unknown",
			records: []ledger.Record{{ID: "uid", API: ledger.DRA, Namespace: "ns", Name: "claim",
				Resources: []ledger.Resource{{GPU: mig.ParentUUID, Slices: &ledger.Slices{Start: mig.Placement.Start, Size: mig.Placement.Size}, Device: "renamed"}}}},
			want: []Allocation{{Device: mig.Name, UUID: mig.UUID, API: ledger.DRA, Namespace: "ns", Claim: "claim"}},
		},
		{
			name: "dra: a GPU's shared twin, named by the driver, resolved through the ledger",
			records: []ledger.Record{
				{ID: "uid-1", API: ledger.DRA, Namespace: "ns", Name: "a", Resources: []ledger.Resource{{GPU: gpu.UUID, Device: gpu.Name + "-shared", Shared: true}}},
				{ID: "uid-2", API: ledger.DRA, Namespace: "ns", Name: "b", Resources: []ledger.Resource{{GPU: gpu.UUID, Device: gpu.Name + "-shared", Shared: true}}},
			},
			pods: []podresources.Pod{
				{Namespace: "ns", Name: "p1", Containers: []podresources.Container{{Name: "c",
					Claims: []podresources.Claim{{Namespace: "ns", Name: "a", Devices: []podresources.ClaimDevice{{Driver: DefaultDRADriverName, Device: gpu.Name + "-shared", ShareID: "s1"}}}}}}},
				{Namespace: "ns", Name: "p2", Containers: []podresources.Container{{Name: "c",
					Claims: []podresources.Claim{{Namespace: "ns", Name: "b", Devices: []podresources.ClaimDevice{{Driver: DefaultDRADriverName, Device: gpu.Name + "-shared", ShareID: "s2"}}}}}}},
			},
			want: []Allocation{
				{Device: gpu.Name, UUID: gpu.UUID, API: ledger.DRA, Namespace: "ns", Pod: "p1", Container: "c", Claim: "a"},
				{Device: gpu.Name, UUID: gpu.UUID, API: ledger.DRA, Namespace: "ns", Pod: "p2", Container: "c", Claim: "b"},
			},
		},
		{
			name: "two containers of one pod share a claim",
			pods: []podresources.Pod{{Namespace: "ns", Name: "p", Containers: []podresources.Container{
				{Name: "a", Claims: []podresources.Claim{{Namespace: "ns", Name: "claim", Devices: []podresources.ClaimDevice{{Driver: DefaultDRADriverName, Device: gpu.Name}}}}},
				{Name: "b", Claims: []podresources.Claim{{Namespace: "ns", Name: "claim", Devices: []podresources.ClaimDevice{{Driver: DefaultDRADriverName, Device: gpu.Name}}}}},
			}}},
			want: []Allocation{
				{Device: gpu.Name, UUID: gpu.UUID, API: ledger.DRA, Namespace: "ns", Pod: "p", Container: "a", Claim: "claim"},
				{Device: gpu.Name, UUID: gpu.UUID, API: ledger.DRA, Namespace: "ns", Pod: "p", Container: "b", Claim: "claim"},
			},
		},
		{
			name: "other drivers and plugins are left out; a device of ours not yet known is reported",
			pods: []podresources.Pod{{Namespace: "ns", Name: "p", Containers: []podresources.Container{{Name: "c",
				Devices: []podresources.Devices{{ResourceName: "example.com/nic", IDs: []string{"nic-0"}}},
				Claims: []podresources.Claim{{Namespace: "ns", Name: "claim", Devices: []podresources.ClaimDevice{
					{Driver: "other.example.com", Device: "gpu-0"},
					{Driver: DefaultDRADriverName, Device: "gpu-x-mig-1g10gb-3"},
				}}}}}}},
			wantUnknown: []string{"gpu-x-mig-1g10gb-3"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, unknown := attribute(newDeviceIndex(inv), tt.records, tt.pods, DefaultDRADriverName)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("allocations:\n got %+v\nwant %+v", got, tt.want)
			}
			if !reflect.DeepEqual(unknown, tt.wantUnknown) {
				t.Errorf("unknown = %v, want %v", unknown, tt.wantUnknown)
			}
		})
	}
}

// kubeletState: GPU 0 in MIG mode without instances (one is created for a
// claim during the test), GPU 1 time-sliced between two pods, GPU 2 held
// through a DRA claim.
const kubeletState = `machine: dgx-a100
nodeSeed: kubelet
gpus: 3
devices:
- index: 0
  migEnabled: true
- index: 1
  utilization: {gpu: 40, memory: 20}
  processes:
  - {pid: 101, usedMemoryMiB: 3000, cgroup: /kubepods/burstable/pod` + uidNotebook1 + `/` + ctrNotebook1 + `}
  - {pid: 102, usedMemoryMiB: 1000, cgroup: /kubepods/burstable/pod` + uidNotebook1 + `/` + ctrNotebook1 + `}
  - {pid: 201, usedMemoryMiB: 5000, cgroup: /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c3d4e_0000_4000_8000_000000000002.slice/cri-containerd-` + ctrNotebook2 + `.scope}
  - {pid: 301, usedMemoryMiB: 700, cgroup: /system.slice/host-daemon.service}
- index: 2
  utilization: {gpu: 90, memory: 50}
  processes:
  - {pid: 401, usedMemoryMiB: 9000, cgroup: /kubepods.slice/kubepods-pod1b2c3d4e_0000_4000_8000_000000000003.slice/cri-containerd-` + ctrLLM + `.scope}
`

func apiPod(ns, name, uid, container, containerID string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)},
		Spec:       corev1.PodSpec{NodeName: "node-1"},
		Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
			{Name: container, ContainerID: "containerd://" + containerID},
		}},
	}
}

// TestAttributionFromKubelet serves the kubelet's PodResources API on a
// unix socket and names pods through the API (a client-go fake): device
// plugin replicas, a DRA claim, a MIG device created for a claim after
// discovery, and per-pod memory of a time-sliced GPU.
func TestAttributionFromKubelet(t *testing.T) {
	n := newTestNode(t, kubeletState)
	gpus := n.Inventory.GPUs
	ctx := context.Background()

	// A claim gets a MIG device created for it after the inventory was built.
	md, err := n.Adapter.CreateMigDevice(gpus[0].UUID, 0, 3)
	if err != nil {
		t.Fatal(err)
	}
	migName := inventory.MigPlacementName(gpus[0].Name, md.Profile, md.Placement.Start)

	l, err := ledger.Open("")
	if err != nil {
		t.Fatal(err)
	}
	mustReserve(t, l,
		ledger.Record{ID: "claim-llm", API: ledger.DRA, Namespace: "team-c", Name: "llm", Resources: []ledger.Resource{{GPU: gpus[2].UUID, Device: gpus[2].Name}}},
		ledger.Record{ID: "claim-mig", API: ledger.DRA, Namespace: "team-b", Name: "small", Resources: []ledger.Resource{{GPU: gpus[0].UUID, Slices: span(3, 1), Device: migName}}},
	)

	kubelet := podresourcestest.Start(t)
	kubelet.Set(
		podresourcestest.DevicePluginPod("team-a", "notebook-1", "jupyter", "nvidia.com/gpu", gpus[1].UUID+"::0"),
		podresourcestest.DevicePluginPod("team-b", "notebook-2", "jupyter", "nvidia.com/gpu", gpus[1].UUID+"::3"),
		podresourcestest.DRAPod("team-c", "llm-server", "server", "llm", DefaultDRADriverName, gpus[2].Name),
		podresourcestest.DRAPod("team-b", "mig-job", "worker", "small", DefaultDRADriverName, migName),
	)
	client, err := podresources.Dial(kubelet.Socket(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Close() }()

	kube := fake.NewClientset(
		apiPod("team-a", "notebook-1", uidNotebook1, "jupyter", ctrNotebook1),
		apiPod("team-b", "notebook-2", uidNotebook2, "jupyter", ctrNotebook2),
		apiPod("team-c", "llm-server", uidLLM, "server", ctrLLM),
	)

	s := NewSampler(SamplerOptions{
		Source: n.Adapter, Inventory: n.Inventory, Ledger: l, PodResources: client,
		Discover: func() (*inventory.Inventory, error) { return inventory.Discover(n.Adapter) },
		Pods:     NewKubePods(kube, "node-1"), ProcRoot: n.procRoot, Now: n.clock.Now, ReadTimeout: 10 * time.Second,
	})
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(NewCollector(s, nil)); err != nil {
		t.Fatal(err)
	}
	n.clock.Set(10 * time.Second)
	s.SampleOnce(ctx)

	mig := migName
	want := fmt.Sprintf(`# HELP gpulet_device_allocation_info Who holds a device: one series per holder, from the ledger and the kubelet's PodResources API. Always 1.
# TYPE gpulet_device_allocation_info gauge
gpulet_device_allocation_info{api="dra",claim="small",container="worker",device=%[1]q,namespace="team-b",pod="mig-job",uuid=%[2]q} 1
gpulet_device_allocation_info{api="device-plugin",claim="",container="jupyter",device=%[3]q,namespace="team-a",pod="notebook-1",uuid=%[4]q} 1
gpulet_device_allocation_info{api="device-plugin",claim="",container="jupyter",device=%[3]q,namespace="team-b",pod="notebook-2",uuid=%[4]q} 1
gpulet_device_allocation_info{api="dra",claim="llm",container="server",device=%[5]q,namespace="team-c",pod="llm-server",uuid=%[6]q} 1
# HELP gpulet_pod_memory_used_bytes Device memory the processes of one container use on a device (from NVML's running processes and their cgroups); namespace, pod and container are empty when the pod cannot be named.
# TYPE gpulet_pod_memory_used_bytes gauge
gpulet_pod_memory_used_bytes{container="jupyter",device=%[3]q,namespace="team-a",pod="notebook-1",pod_uid=%[7]q,uuid=%[4]q} %[8]d
gpulet_pod_memory_used_bytes{container="jupyter",device=%[3]q,namespace="team-b",pod="notebook-2",pod_uid=%[9]q,uuid=%[4]q} %[10]d
gpulet_pod_memory_used_bytes{container="server",device=%[5]q,namespace="team-c",pod="llm-server",pod_uid=%[11]q,uuid=%[6]q} %[12]d
`, mig, md.UUID, gpus[1].Name, gpus[1].UUID, gpus[2].Name, gpus[2].UUID,
		uidNotebook1, 4000<<20, uidNotebook2, 5000<<20, uidLLM, 9000<<20)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "gpulet_device_allocation_info", "gpulet_pod_memory_used_bytes"); err != nil {
		t.Error(err)
	}
	if got := kubelet.Calls("List"); got != 1 {
		t.Errorf("kubelet List calls = %d, want 1", got)
	}

	// Within the PodResources interval and with the same holders, the
	// kubelet is not asked again.
	n.clock.Set(11 * time.Second)
	s.SampleOnce(ctx)
	if got := kubelet.Calls("List"); got != 1 {
		t.Errorf("kubelet List calls after a second sample = %d, want still 1", got)
	}
}

func TestKubePodsRefreshesAtMostOncePerInterval(t *testing.T) {
	mirror := apiPod("kube-system", "etcd-node-1", "99999999-9999-4999-8999-999999999999", "etcd", "e7cd")
	mirror.Annotations = map[string]string{"kubernetes.io/config.mirror": "0123456789abcdef0123456789abcdef"}
	kube := fake.NewClientset(apiPod("ns", "p", uidNotebook1, "c", ctrNotebook1), mirror)
	k := NewKubePods(kube, "node-1")
	now := t0
	k.now = func() time.Time { return now }
	ctx := context.Background()
	lists := func() int {
		n := 0
		for _, a := range kube.Actions() {
			if a.GetVerb() == "list" {
				n++
			}
		}
		return n
	}
	tests := []struct {
		name      string
		advance   time.Duration
		uid, ctr  string
		wantOK    bool
		wantName  string
		wantLists int
	}{
		{name: "first lookup lists", uid: uidNotebook1, ctr: ctrNotebook1, wantOK: true, wantName: "c", wantLists: 1},
		{name: "known pod needs no list", uid: uidNotebook1, ctr: ctrNotebook1, wantOK: true, wantName: "c", wantLists: 1},
		{name: "unknown pod within the interval does not list", advance: time.Second, uid: uidNotebook2, wantLists: 1},
		{name: "unknown pod after the interval lists again", advance: time.Minute, uid: uidNotebook2, wantLists: 2},
		{name: "restarted container of a known pod", advance: time.Minute, uid: uidNotebook1, ctr: "new-id", wantOK: true, wantName: "", wantLists: 3},
		{name: "static pod by its own UID, through its mirror", uid: "0123456789abcdef0123456789abcdef", ctr: "e7cd", wantOK: true, wantName: "etcd", wantLists: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now = now.Add(tt.advance)
			info, ok := k.ResolvePod(ctx, tt.uid, tt.ctr)
			if ok != tt.wantOK || info.Container != tt.wantName {
				t.Errorf("ResolvePod = %+v, %v; want container %q, %v", info, ok, tt.wantName, tt.wantOK)
			}
			if got := lists(); got != tt.wantLists {
				t.Errorf("lists = %d, want %d", got, tt.wantLists)
			}
		})
	}
}
