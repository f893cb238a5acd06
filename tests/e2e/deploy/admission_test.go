package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/gpulet/gpulet/tests/e2e/bed"
	"github.com/gpulet/gpulet/tests/e2e/helmchart"
)

const (
	nodeA = "gpu-node-a"
	nodeB = "gpu-node-b"
	// driverName is the chart's default DRA driver name.
	driverName = "gpu.gpulet.dev"
	// nodeNameKey is where the API server puts a token's node claim in the
	// user's extra info.
	nodeNameKey = "authentication.kubernetes.io/node-name"
)

// TestAdmissionPolicyKeepsGpuletToItsNode checks the chart's
// ValidatingAdmissionPolicy on the real API server with real
// service-account tokens. gpulet's ServiceAccount, holding a token bound to
// a pod on node A (what the kubelet mounts into a DaemonSet pod), may
// create, update and delete ResourceSlices of node A and of its own driver,
// and nothing else: not node B's, not a slice without a node, not another
// driver's, and not with a token that names no node. Another identity with
// the same RBAC rules, and the admin, are not affected.
func TestAdmissionPolicyKeepsGpuletToItsNode(t *testing.T) {
	c := bed.Cluster(t)
	installChart(t, c)
	ctx := t.Context()
	admin := c.Client()
	sa := releaseName // the chart's ServiceAccount: the full name of the release

	nodes := map[string]*corev1.Node{}
	for _, name := range []string{nodeA, nodeB} {
		nodes[name] = createNode(t, admin, name)
	}

	// What a DaemonSet pod on node A gets: the kubelet asks TokenRequest
	// for a token bound to the pod; with the pod scheduled on node A, the
	// API server adds node A to the token's claims.
	podA := createPodOn(t, admin, releaseNamespace, "gpulet-on-a", sa, nodeA)
	tokenA := requestToken(t, admin, releaseNamespace, sa, &authnv1.BoundObjectReference{
		Kind: "Pod", APIVersion: "v1", Name: podA.Name, UID: podA.UID,
	})
	gpuletA := clientFor(t, c, tokenA)

	t.Run("token carries the node claim", func(t *testing.T) {
		review, err := gpuletA.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		u := review.Status.UserInfo
		if want := "system:serviceaccount:" + releaseNamespace + ":" + sa; u.Username != want {
			t.Errorf("username %q, want %q", u.Username, want)
		}
		if got := u.Extra[nodeNameKey]; len(got) != 1 || got[0] != nodeA {
			t.Errorf("extra[%s] = %v, want [%s] (all extra: %v)", nodeNameKey, got, nodeA, u.Extra)
		}
	})

	// The binding is enforced once the API server's informer has the
	// policy: wait until a write for node B is refused.
	bed.Eventually(t, 60*time.Second, "the policy refuses gpulet on node A a slice of node B", func(ctx context.Context) error {
		s, err := gpuletA.ResourceV1().ResourceSlices().Create(ctx, slice(nodeB, driverName), metav1.CreateOptions{})
		if err == nil {
			_ = admin.ResourceV1().ResourceSlices().Delete(ctx, s.Name, metav1.DeleteOptions{})
			return errors.New("created; policy not in force yet")
		}
		return wantRefusal(err, "may write only ResourceSlices with spec.nodeName "+nodeA+", not "+nodeB)
	})

	t.Run("own node: create, update, delete", func(t *testing.T) {
		s, err := gpuletA.ResourceV1().ResourceSlices().Create(ctx, slice(nodeA, driverName), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create a slice of its own node: %v", err)
		}
		s.Spec.Devices = append(s.Spec.Devices, resourceapi.Device{Name: "gpu-1"})
		s.Spec.Pool.Generation++
		if s, err = gpuletA.ResourceV1().ResourceSlices().Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("update a slice of its own node: %v", err)
		}
		if err := gpuletA.ResourceV1().ResourceSlices().Delete(ctx, s.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete a slice of its own node: %v", err)
		}
	})

	// A slice of node B, made by the admin (the policy does not apply to
	// it), for gpulet on node A to try to change.
	sliceB, err := admin.ResourceV1().ResourceSlices().Create(ctx, slice(nodeB, driverName), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("admin creates a slice of node B: %v", err)
	}

	for _, tc := range []struct {
		name string
		do   func(context.Context) error
		want string
	}{
		{"create for node B", func(ctx context.Context) error {
			_, err := gpuletA.ResourceV1().ResourceSlices().Create(ctx, slice(nodeB, driverName), metav1.CreateOptions{})
			return err
		}, "not " + nodeB},
		{"create without a node (allNodes)", func(ctx context.Context) error {
			s := slice("", driverName)
			s.Spec.AllNodes = ptr.To(true)
			_, err := gpuletA.ResourceV1().ResourceSlices().Create(ctx, s, metav1.CreateOptions{})
			return err
		}, "not a slice without spec.nodeName"},
		{"create for another driver", func(ctx context.Context) error {
			_, err := gpuletA.ResourceV1().ResourceSlices().Create(ctx, slice(nodeA, "gpu.example.com"), metav1.CreateOptions{})
			return err
		}, "only for its driver " + driverName + ", not gpu.example.com"},
		{"update node B's slice", func(ctx context.Context) error {
			s := sliceB.DeepCopy()
			s.Spec.Devices = nil
			s.Spec.Pool.Generation++
			_, err := gpuletA.ResourceV1().ResourceSlices().Update(ctx, s, metav1.UpdateOptions{})
			return err
		}, nodeB},
		{"delete node B's slice", func(ctx context.Context) error {
			return gpuletA.ResourceV1().ResourceSlices().Delete(ctx, sliceB.Name, metav1.DeleteOptions{})
		}, "may not change or delete the ResourceSlice " + sliceB.Name + " of node " + nodeB},
	} {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			if err := wantRefusal(tc.do(ctx), tc.want); err != nil {
				t.Error(err)
			}
		})
	}

	t.Run("refused: token bound to no node", func(t *testing.T) {
		unbound := clientFor(t, c, requestToken(t, admin, releaseNamespace, sa, nil))
		_, err := unbound.ResourceV1().ResourceSlices().Create(ctx, slice(nodeA, driverName), metav1.CreateOptions{})
		if err := wantRefusal(err, "this request's credential names no node"); err != nil {
			t.Error(err)
		}
	})

	t.Run("token bound to the Node object", func(t *testing.T) {
		// The other way a credential names a node (ServiceAccountTokenNodeBinding, GA in 1.33).
		onB := clientFor(t, c, requestToken(t, admin, releaseNamespace, sa, &authnv1.BoundObjectReference{
			Kind: "Node", APIVersion: "v1", Name: nodeB, UID: nodes[nodeB].UID,
		}))
		s, err := onB.ResourceV1().ResourceSlices().Create(ctx, slice(nodeB, driverName), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("gpulet with a token bound to node B creates a slice of node B: %v", err)
		}
		_, err = onB.ResourceV1().ResourceSlices().Create(ctx, slice(nodeA, driverName), metav1.CreateOptions{})
		if err := wantRefusal(err, "not "+nodeA); err != nil {
			t.Error(err)
		}
		if err := onB.ResourceV1().ResourceSlices().Delete(ctx, s.Name, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
	})

	t.Run("other identities unaffected", func(t *testing.T) {
		// Another ServiceAccount with exactly gpulet's RBAC rules and a
		// token from a pod on node A writes node B's slices: the policy
		// matches gpulet's ServiceAccount only.
		other := "not-gpulet"
		if _, err := admin.CoreV1().ServiceAccounts(releaseNamespace).Create(ctx, &corev1.ServiceAccount{
			ObjectMeta: metav1.ObjectMeta{Name: other},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "e2e-not-gpulet"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: releaseName},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: other, Namespace: releaseNamespace}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pod := createPodOn(t, admin, releaseNamespace, "other-on-a", other, nodeA)
		otherClient := clientFor(t, c, requestToken(t, admin, releaseNamespace, other, &authnv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID,
		}))
		bed.Eventually(t, 30*time.Second, "another ServiceAccount creates a slice of node B", func(ctx context.Context) error {
			s, err := otherClient.ResourceV1().ResourceSlices().Create(ctx, slice(nodeB, "gpu.example.com"), metav1.CreateOptions{})
			if err != nil {
				return err // RBAC for the new binding may take a moment
			}
			return otherClient.ResourceV1().ResourceSlices().Delete(ctx, s.Name, metav1.DeleteOptions{})
		})
		// And the admin, as above, made node B's slice; it deletes it too.
		if err := admin.ResourceV1().ResourceSlices().Delete(ctx, sliceB.Name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("admin deletes node B's slice: %v", err)
		}
	})
}

// TestRBACIsLeastPrivilege asks the API server, as gpulet's ServiceAccount,
// what it may do: exactly what gpulet uses (templates/rbac.yaml says who
// uses each rule), and none of the neighbouring verbs and resources.
func TestRBACIsLeastPrivilege(t *testing.T) {
	c := bed.Cluster(t)
	installChart(t, c)
	ctx := t.Context()
	client := clientFor(t, c, requestToken(t, c.Client(), releaseNamespace, releaseName, nil))

	type rule struct{ group, resource, verb string }
	allowed := []rule{
		{"", "nodes", "get"},
		{"", "pods", "list"},
		{"events.k8s.io", "events", "create"}, {"events.k8s.io", "events", "patch"},
		{"resource.k8s.io", "resourceslices", "list"}, {"resource.k8s.io", "resourceslices", "watch"},
		{"resource.k8s.io", "resourceslices", "create"}, {"resource.k8s.io", "resourceslices", "update"},
		{"resource.k8s.io", "resourceslices", "delete"},
		{"resource.k8s.io", "resourceclaims", "get"},
	}
	denied := []rule{
		{"", "nodes", "list"}, {"", "nodes", "update"}, {"", "nodes", "patch"},
		{"", "pods", "get"}, {"", "pods", "watch"}, {"", "pods", "delete"}, {"", "pods", "create"},
		{"", "events", "create"}, {"events.k8s.io", "events", "delete"},
		{"", "secrets", "get"}, {"", "secrets", "list"}, {"", "configmaps", "get"},
		{"", "serviceaccounts", "create"},
		{"resource.k8s.io", "resourceslices", "patch"}, {"resource.k8s.io", "resourceslices", "deletecollection"},
		{"resource.k8s.io", "resourceclaims", "list"}, {"resource.k8s.io", "resourceclaims", "update"},
		{"resource.k8s.io", "resourceclaims", "delete"}, {"resource.k8s.io", "deviceclasses", "create"},
		{"admissionregistration.k8s.io", "validatingadmissionpolicies", "delete"},
	}
	check := func(r rule, want bool) {
		review, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{
			Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authzv1.ResourceAttributes{
				Group: r.group, Resource: r.resource, Verb: r.verb, Namespace: namespaceFor(r.resource),
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("access review %+v: %v", r, err)
		}
		if review.Status.Allowed != want {
			t.Errorf("gpulet may %s %s.%s: %v, want %v", r.verb, r.resource, r.group, review.Status.Allowed, want)
		}
	}
	for _, r := range allowed {
		check(r, true)
	}
	for _, r := range denied {
		check(r, false)
	}
}

// namespaceFor is the namespace an access review asks about: a workload
// namespace for namespaced resources, none for cluster-scoped ones.
func namespaceFor(resource string) string {
	switch resource {
	case "nodes", "resourceslices", "deviceclasses", "validatingadmissionpolicies":
		return ""
	}
	return "default"
}

// slice is a minimal ResourceSlice of a node's pool ("" nodeName: none).
func slice(nodeName, driver string) *resourceapi.ResourceSlice {
	pool := nodeName
	if pool == "" {
		pool = "cluster"
	}
	s := &resourceapi.ResourceSlice{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "e2e-" + pool + "-"},
		Spec: resourceapi.ResourceSliceSpec{
			Driver:  driver,
			Pool:    resourceapi.ResourcePool{Name: pool, Generation: 1, ResourceSliceCount: 1},
			Devices: []resourceapi.Device{{Name: "gpu-0"}},
		},
	}
	if nodeName != "" {
		s.Spec.NodeName = ptr.To(nodeName)
	}
	return s
}

// wantRefusal checks that err is the admission policy's refusal (403) and
// that its message contains want.
func wantRefusal(err error, want string) error {
	switch {
	case err == nil:
		return fmt.Errorf("allowed; want refused with %q", want)
	case !apierrors.IsForbidden(err):
		return fmt.Errorf("error %w; want 403 Forbidden with %q", err, want)
	case !strings.Contains(err.Error(), helmchart.PolicyName):
		return fmt.Errorf("refused by something other than the policy: %w", err)
	case !strings.Contains(err.Error(), want):
		return fmt.Errorf("refusal %q does not say %q", err.Error(), want)
	}
	return nil
}

// createNode registers a Node object with no kubelet behind it: enough for
// pods to be bound to it and for tokens to name it.
func createNode(t testing.TB, client kubernetes.Interface, name string) *corev1.Node {
	t.Helper()
	n, err := client.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	t.Cleanup(func() { _ = client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	return n
}

// createPodOn creates a pod already bound to node (spec.nodeName), running
// as serviceAccount, as the DaemonSet controller would. No kubelet runs
// it; only its binding matters for the token.
func createPodOn(t testing.TB, client kubernetes.Interface, ns, name, serviceAccount, node string) *corev1.Pod {
	t.Helper()
	pod, err := client.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			NodeName:           node,
			ServiceAccountName: serviceAccount,
			Tolerations:        []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers:         []corev1.Container{{Name: "gpulet", Image: "registry.example/gpulet:e2e"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s on %s: %v", ns, name, node, err)
	}
	t.Cleanup(func() {
		_ = client.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	})
	return pod
}

// requestToken asks the TokenRequest API for a token of the ServiceAccount,
// bound to ref (nil: bound to nothing).
func requestToken(t testing.TB, client kubernetes.Interface, ns, serviceAccount string, ref *authnv1.BoundObjectReference) string {
	t.Helper()
	tr, err := client.CoreV1().ServiceAccounts(ns).CreateToken(t.Context(), serviceAccount, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600), BoundObjectRef: ref},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s bound to %+v: %v", ns, serviceAccount, ref, err)
	}
	return tr.Status.Token
}

// clientFor is a client that authenticates with a bearer token only.
func clientFor(t testing.TB, c *bed.ControlPlane, token string) kubernetes.Interface {
	t.Helper()
	client, err := kubernetes.NewForConfig(&rest.Config{
		Host:            c.APIServerURL(),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: c.CAFile()},
		QPS:             50,
		Burst:           100,
	})
	if err != nil {
		t.Fatal(err)
	}
	return client
}
