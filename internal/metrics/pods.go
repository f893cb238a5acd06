package metrics

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
)

// PodInfo names the pod and container a process's cgroup points to.
type PodInfo struct {
	Namespace string
	Name      string
	UID       string
	// Container is the container's name; empty when the container ID is
	// not (yet) in the pod's status.
	Container string
}

// PodResolver names pods by UID. A cgroup carries only the pod's UID and
// the container's ID; the kubelet's PodResources API carries neither, so
// names come from the pods themselves.
type PodResolver interface {
	// ResolvePod returns the pod with the UID and the name of the
	// container with the ID; false if no such pod is known.
	ResolvePod(ctx context.Context, uid, containerID string) (PodInfo, bool)
}

// KubePods resolves pods from the API server: it lists the pods bound to
// this node, and lists again when asked for a pod or container it does not
// know, at most once per MinRefresh, so a process outside any known pod
// does not make a list every sample. It is safe for concurrent use.
type KubePods struct {
	client kubernetes.Interface
	node   string
	// MinRefresh is the least time between two lists. Default 30s.
	MinRefresh time.Duration
	now        func() time.Time

	mu        sync.Mutex
	pods      map[string]kubePod
	refreshed time.Time
}

type kubePod struct {
	namespace, name string
	containers      map[string]string // container ID -> name
}

// NewKubePods returns a resolver of the pods on node.
func NewKubePods(client kubernetes.Interface, node string) *KubePods {
	return &KubePods{client: client, node: node, MinRefresh: 30 * time.Second, now: time.Now, pods: map[string]kubePod{}}
}

// ResolvePod implements PodResolver.
func (k *KubePods) ResolvePod(ctx context.Context, uid, containerID string) (PodInfo, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	p, ok := k.pods[uid]
	_, known := p.containers[containerID]
	if (!ok || (!known && containerID != "")) && k.now().Sub(k.refreshed) >= k.MinRefresh {
		if err := k.refreshLocked(ctx); err != nil {
			klog.FromContext(ctx).V(2).Info("Listing this node's pods to name GPU processes", "err", err)
		}
		p, ok = k.pods[uid]
	}
	if !ok {
		return PodInfo{}, false
	}
	return PodInfo{Namespace: p.namespace, Name: p.name, UID: uid, Container: p.containers[containerID]}, true
}

func (k *KubePods) refreshLocked(ctx context.Context) error {
	k.refreshed = k.now()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	list, err := k.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{
		FieldSelector:   fields.OneTermEqualSelector("spec.nodeName", k.node).String(),
		ResourceVersion: "0", // served from the API server's cache
	})
	if err != nil {
		return fmt.Errorf("list pods on node %s: %w", k.node, err)
	}
	pods := make(map[string]kubePod, len(list.Items))
	for i := range list.Items {
		pod := &list.Items[i]
		if pod.Spec.NodeName != "" && pod.Spec.NodeName != k.node {
			continue
		}
		kp := kubePod{namespace: pod.Namespace, name: pod.Name, containers: map[string]string{}}
		for _, statuses := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses, pod.Status.EphemeralContainerStatuses} {
			for _, s := range statuses {
				if id := trimRuntime(s.ContainerID); id != "" {
					kp.containers[id] = s.Name
				}
			}
		}
		pods[string(pod.UID)] = kp
		// A static pod's processes carry the UID the kubelet gave it from
		// its manifest; the API shows a mirror pod that names it here.
		if uid := pod.Annotations[corev1.MirrorPodAnnotationKey]; uid != "" {
			pods[uid] = kp
		}
	}
	k.pods = pods
	return nil
}

// trimRuntime drops the "<runtime>://" prefix of a status's container ID.
func trimRuntime(id string) string {
	if _, rest, ok := strings.Cut(id, "://"); ok {
		return rest
	}
	return id
}
