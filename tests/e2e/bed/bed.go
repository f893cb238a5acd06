// Package bed is gpulet's end-to-end test bed: a real control plane (etcd,
// kube-apiserver, kube-scheduler, kube-controller-manager from
// k8s.io/kubernetes) started once per test package, and real kubelets,
// each talking to a CRI stub in the test process that records what every
// container would get. A test package uses it as
//
//	func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }
//
//	func TestX(t *testing.T) {
//		c := bed.Cluster(t)
//		node := c.StartNode(t, bed.NodeOptions{})
//		g := node.StartGpulet(t, "--nvml=mock:dgx-h100")
//		...
//	}
//
// Everything listens on 127.0.0.1 on free ports and lives in one directory
// (see Main for where, and when it is kept).
package bed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ControlPlane is the running control plane a test package shares.
type ControlPlane struct {
	dir  string
	bins *Binaries
	pki  *pki

	etcd      *etcd
	apiServer *apiServer
	scheduler *process
	kcm       *process

	adminKubeconfig string
	adminConfig     *rest.Config
	client          kubernetes.Interface

	mu    sync.Mutex
	nodes map[string]*Node // by name, to refuse duplicates
}

var (
	shared   *ControlPlane
	startErr error
)

// Main starts the control plane, runs the package's tests and stops it. It
// returns the exit code for os.Exit.
//
// The bed's directory is $GPULET_E2E_DIR (default: the system temp dir)
// /gpulet-e2e-*. It holds every component's log, kubeconfigs and
// certificates, etcd's data, and each node's kubelet root. When a test fails
// Main prints the tail of every log and keeps the directory (and prints its
// path); when all pass it removes it, unless GPULET_E2E_KEEP=1.
//
// Binaries are built (or taken from the cache) before the tests run, so a
// cold build does not count against go test's -timeout. The bed needs root
// (the kubelet mounts and runs a private mount namespace); without it,
// every test that asks for Cluster is skipped.
func Main(m *testing.M) int {
	if os.Geteuid() != 0 {
		startErr = errSkipNotRoot
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()

	start := time.Now()
	cp, err := startControlPlane(ctx)
	if err != nil {
		startErr = err
		fmt.Fprintf(os.Stderr, "e2e: control plane did not start: %v\n", err)
		if cp != nil {
			cp.stop()
			cp.dumpLogs()
			fmt.Fprintf(os.Stderr, "e2e: kept %s\n", cp.dir)
		}
		m.Run() // every test fails in Cluster with the reason
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: control plane up in %s, dir %s\n", time.Since(start).Round(time.Millisecond), cp.dir)
	shared = cp

	code := m.Run()

	cp.stop()
	switch {
	case code != 0:
		cp.dumpLogs()
		fmt.Fprintf(os.Stderr, "e2e: tests failed; kept %s\n", cp.dir)
	case os.Getenv("GPULET_E2E_KEEP") == "1":
		fmt.Fprintf(os.Stderr, "e2e: GPULET_E2E_KEEP=1; kept %s\n", cp.dir)
	default:
		if err := os.RemoveAll(cp.dir); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: remove %s: %v\n", cp.dir, err)
		}
	}
	return code
}

var errSkipNotRoot = errors.New("the e2e bed needs root (kubelet, mount namespaces)")

// Cluster returns the package's control plane. It skips the test when the
// bed cannot run here (not root) and fails it when the bed did not start.
func Cluster(t testing.TB) *ControlPlane {
	t.Helper()
	switch {
	case errors.Is(startErr, errSkipNotRoot):
		t.Skip(startErr)
	case startErr != nil:
		t.Fatalf("e2e control plane: %v", startErr)
	case shared == nil:
		t.Fatal("e2e control plane not started: the package's TestMain must call bed.Main")
	}
	return shared
}

func startControlPlane(ctx context.Context) (*ControlPlane, error) {
	bins, err := EnsureBinaries(ctx, BuildOptions{})
	if err != nil {
		return nil, err
	}
	base := os.Getenv("GPULET_E2E_DIR")
	if base != "" {
		if err := os.MkdirAll(base, 0o755); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp(base, "gpulet-e2e-")
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{dir: dir, bins: bins, nodes: map[string]*Node{}}
	if err := cp.start(ctx); err != nil {
		return cp, err
	}
	return cp, nil
}

func (cp *ControlPlane) start(ctx context.Context) error {
	var err error
	if cp.pki, err = newPKI(filepath.Join(cp.dir, "pki")); err != nil {
		return err
	}
	certFile, keyFile, err := cp.pki.serving("kube-apiserver")
	if err != nil {
		return err
	}
	saKey, err := cp.pki.serviceAccountKey()
	if err != nil {
		return err
	}
	if cp.etcd, err = startEtcd(ctx, cp.bins.Etcd, cp.dir); err != nil {
		return err
	}
	cp.apiServer, err = newAPIServer(apiServerConfig{
		bin: cp.bins.APIServer, dir: cp.dir, etcdURL: cp.etcd.clientURL,
		certFile: certFile, keyFile: keyFile, caFile: cp.pki.caFile, saKeyFile: saKey,
	})
	if err != nil {
		return err
	}
	if cp.adminKubeconfig, err = cp.pki.kubeconfig("admin", cp.apiServer.url, "e2e-admin", "system:masters"); err != nil {
		return err
	}
	if cp.adminConfig, err = clientcmd.BuildConfigFromFlags("", cp.adminKubeconfig); err != nil {
		return err
	}
	cp.adminConfig.QPS, cp.adminConfig.Burst = 100, 200
	if cp.client, err = kubernetes.NewForConfig(cp.adminConfig); err != nil {
		return err
	}
	if err := cp.apiServer.start(ctx, cp.client); err != nil {
		return err
	}

	schedKC, err := cp.pki.kubeconfig("kube-scheduler", cp.apiServer.url, "system:kube-scheduler")
	if err != nil {
		return err
	}
	if cp.scheduler, err = startScheduler(cp.bins.Scheduler, cp.dir, schedKC); err != nil {
		return err
	}
	kcmKC, err := cp.pki.kubeconfig("kube-controller-manager", cp.apiServer.url, "system:kube-controller-manager")
	if err != nil {
		return err
	}
	cp.kcm, err = startControllerManager(cp.bins.ControllerManager, cp.dir, kcmKC,
		cp.pki.caFile, filepath.Join(cp.pki.dir, "ca.key"), saKey)
	if err != nil {
		return err
	}
	// The controller-manager is working once it has made the default
	// namespace's ServiceAccount; the scheduler has no such sign, so only
	// check that it is still running.
	return poll(ctx, 60*time.Second, "controller-manager creates default/default ServiceAccount", func(ctx context.Context) (bool, error) {
		for _, p := range []*process{cp.kcm, cp.scheduler} {
			if err := p.checkAlive(); err != nil {
				return false, err
			}
		}
		_, err := cp.client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
}

func (cp *ControlPlane) stop() {
	cp.mu.Lock()
	nodes := make([]*Node, 0, len(cp.nodes))
	for _, n := range cp.nodes {
		nodes = append(nodes, n)
	}
	cp.mu.Unlock()
	for _, n := range nodes {
		n.shutdown()
	}
	for _, p := range []*process{cp.kcm, cp.scheduler} {
		if p != nil {
			p.stop(controllerStopGrace)
		}
	}
	if cp.apiServer != nil {
		cp.apiServer.stop()
	}
	if cp.etcd != nil {
		cp.etcd.proc.stop(10 * time.Second)
	}
}

// dumpLogs prints the tail of every log in the bed's top directory.
func (cp *ControlPlane) dumpLogs() {
	logs, _ := filepath.Glob(filepath.Join(cp.dir, "*.log"))
	for _, l := range logs {
		fmt.Fprintf(os.Stderr, "----- tail of %s -----\n%s\n", l, tail(l, 40))
	}
}

// Dir is the bed's directory (logs, kubeconfigs, certificates, node dirs).
func (cp *ControlPlane) Dir() string { return cp.dir }

// Client is a clientset with cluster-admin rights (group system:masters).
func (cp *ControlPlane) Client() kubernetes.Interface { return cp.client }

// RESTConfig is a copy of the admin client configuration.
func (cp *ControlPlane) RESTConfig() *rest.Config { return rest.CopyConfig(cp.adminConfig) }

// AdminKubeconfig is the path of a kubeconfig file for the admin identity.
func (cp *ControlPlane) AdminKubeconfig() string { return cp.adminKubeconfig }

// APIServerURL is the API server's https URL on loopback.
func (cp *ControlPlane) APIServerURL() string { return cp.apiServer.url }

// CAFile is the path of the CA certificate that signed the API server's
// serving certificate and every client certificate of the bed.
func (cp *ControlPlane) CAFile() string { return cp.pki.caFile }

// StopAPIServer stops kube-apiserver (SIGTERM), leaving etcd and everything
// else running, for fault tests. StartAPIServer brings it back.
func (cp *ControlPlane) StopAPIServer(t testing.TB) {
	t.Helper()
	cp.apiServer.stop()
}

// StartAPIServer starts kube-apiserver again on the same address and waits
// until it is ready.
func (cp *ControlPlane) StartAPIServer(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := cp.apiServer.start(ctx, cp.client); err != nil {
		t.Fatalf("restart kube-apiserver: %v", err)
	}
}

// Namespace creates a fresh namespace for the test, waits until pods can
// be created in it (its default ServiceAccount and kube-root-ca.crt
// ConfigMap exist, made by the controller-manager) and deletes it when the
// test ends.
func (cp *ControlPlane) Namespace(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	prefix := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(prefix) > 40 {
		prefix = prefix[:40]
	}
	ns, err := cp.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: strings.Trim(prefix, "-") + "-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		err := cp.client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Logf("delete namespace %s: %v", ns.Name, err)
		}
	})
	Eventually(t, 60*time.Second, "namespace "+ns.Name+" ready for pods", func(ctx context.Context) error {
		if _, err := cp.client.CoreV1().ServiceAccounts(ns.Name).Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return fmt.Errorf("default ServiceAccount: %w", err)
		}
		if _, err := cp.client.CoreV1().ConfigMaps(ns.Name).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{}); err != nil {
			return fmt.Errorf("kube-root-ca.crt ConfigMap: %w", err)
		}
		return nil
	})
	return ns.Name
}
