package bed

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeletconfig "k8s.io/kubelet/config/v1beta1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// hostDevicePluginDir is where the kubelet always looks for device plugins,
// whatever its --root-dir. Each bed kubelet sees its own private directory
// there (a bind mount in the kubelet's own mount namespace).
const hostDevicePluginDir = "/var/lib/kubelet/device-plugins"

// hostLegacyLogDir is where the kubelet makes (and garbage-collects) symlinks
// to container logs, also whatever its configuration. Kept private the same way.
const hostLegacyLogDir = "/var/log/containers"

// NodeOptions shapes one node.
type NodeOptions struct {
	// Name of the Node; default "node-<n>". Must be a DNS label.
	Name string
	// Labels are registered with the Node (--node-labels).
	Labels map[string]string
	// Kubelet, if set, edits the KubeletConfiguration before the kubelet
	// starts (the bed's settings are in place already).
	Kubelet func(*kubeletconfig.KubeletConfiguration)
	// KubeletArgs are appended to the kubelet's command line.
	KubeletArgs []string
	// NoWait skips waiting for the Node to be Ready without taints.
	NoWait bool
}

// Node is one kubelet and its CRI stub.
//
// The kubelet's own root (RootDir) holds plugins_registry, plugins and
// pod-resources. Its device-plugin directory is RootDir()/device-plugins on
// the host: the kubelet runs in a private mount namespace where that
// directory is bind-mounted over /var/lib/kubelet/device-plugins, so a
// process outside (gpulet, a test) that uses RootDir as its kubelet root
// reaches every socket the kubelet has, and the other way round.
type Node struct {
	cp      *ControlPlane
	name    string
	dir     string
	rootDir string
	cri     *CRI
	spec    procSpec

	kubelet *process // owned by the test goroutine: Start/Stop/Restart are not concurrent
	gpulets []*Gpulet
}

var nodeNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// StartNode starts a kubelet registered as a new Node and, unless
// opts.NoWait, waits until the Node is Ready and has no taints (the
// controller-manager removes the not-ready taint). The node is stopped and
// its Node object deleted when the test ends; its directory is kept (and the
// kubelet log's tail printed) if the test failed.
func (cp *ControlPlane) StartNode(t testing.TB, opts NodeOptions) *Node {
	t.Helper()
	n, err := cp.newNode(opts)
	if err != nil {
		t.Fatalf("start node: %v", err)
	}
	t.Cleanup(func() {
		n.shutdown()
		if t.Failed() {
			t.Logf("----- tail of %s -----\n%s", n.KubeletLog(), tail(n.KubeletLog(), 60))
			t.Logf("node %s: kept %s", n.name, n.dir)
			return
		}
		if os.Getenv("GPULET_E2E_KEEP") != "1" {
			_ = os.RemoveAll(n.dir)
		}
	})
	if err := n.startKubelet(); err != nil {
		t.Fatalf("node %s: %v", n.name, err)
	}
	if !opts.NoWait {
		n.WaitReady(t, 2*time.Minute)
	}
	return n
}

func (cp *ControlPlane) newNode(opts NodeOptions) (*Node, error) {
	cp.mu.Lock()
	name := opts.Name
	if name == "" {
		for i := len(cp.nodes) + 1; ; i++ {
			name = "node-" + strconv.Itoa(i)
			if _, taken := cp.nodes[name]; !taken {
				break
			}
		}
	}
	if !nodeNameRE.MatchString(name) {
		cp.mu.Unlock()
		return nil, fmt.Errorf("node name %q is not a DNS label", name)
	}
	if _, taken := cp.nodes[name]; taken {
		cp.mu.Unlock()
		return nil, fmt.Errorf("node %q already runs in this bed", name)
	}
	n := &Node{cp: cp, name: name, dir: filepath.Join(cp.dir, "nodes", name)}
	cp.nodes[name] = n
	cp.mu.Unlock()

	n.rootDir = filepath.Join(n.dir, "root")
	workDir := filepath.Join(n.dir, "cwd")
	for _, d := range []string{n.rootDir, n.DevicePluginDir(), workDir, filepath.Join(n.dir, "pod-logs"),
		filepath.Join(n.dir, "container-logs"), filepath.Join(n.dir, "volume-plugins"),
		hostDevicePluginDir, hostLegacyLogDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	var err error
	if n.cri, err = newCRI(filepath.Join(n.dir, "cri.sock"), filepath.Join(n.dir, "cri")); err != nil {
		return nil, err
	}
	kubeconfig, err := cp.pki.kubeconfig("kubelet-"+name, cp.apiServer.url, "system:node:"+name, "system:nodes")
	if err != nil {
		return nil, err
	}
	cfgPath, err := n.writeKubeletConfig(opts.Kubelet)
	if err != nil {
		return nil, err
	}

	args := []string{
		"--config=" + cfgPath,
		"--kubeconfig=" + kubeconfig,
		"--root-dir=" + n.rootDir,
		// Its self-signed serving certificate goes to /var/lib/kubelet/pki
		// by default, whatever --root-dir says.
		"--cert-dir=" + filepath.Join(n.dir, "kubelet-pki"),
		"--hostname-override=" + name,
		// No --node-ip: the kubelet refuses a loopback one. It reports the
		// host's address in the Node's status and listens on 127.0.0.1 only.
		"--v=2",
	}
	if len(opts.Labels) > 0 {
		var kv []string
		for k, v := range opts.Labels {
			kv = append(kv, k+"="+v)
		}
		sort.Strings(kv)
		args = append(args, "--node-labels="+strings.Join(kv, ","))
	}
	args = append(args, opts.KubeletArgs...)

	// The kubelet runs in a mount namespace of its own (Go makes its mounts
	// private before exec) where the shell binds the node's directories
	// over the two host paths the kubelet hard-codes, then execs it. Its
	// working directory is an empty one of its own: see the CRI stub's
	// log paths for why.
	script := `set -e
mount --bind "$E2E_DEVICE_PLUGINS" ` + hostDevicePluginDir + `
mount --bind "$E2E_CONTAINER_LOGS" ` + hostLegacyLogDir + `
exec "$@"`
	n.spec = procSpec{
		name:    "kubelet " + name,
		path:    "/bin/sh",
		args:    append([]string{"-c", script, "kubelet", cp.bins.Kubelet}, args...),
		dir:     workDir,
		logPath: filepath.Join(n.dir, "kubelet.log"),
		env: []string{
			"E2E_DEVICE_PLUGINS=" + n.DevicePluginDir(),
			"E2E_CONTAINER_LOGS=" + filepath.Join(n.dir, "container-logs"),
		},
	}
	return n, nil
}

func (n *Node) writeKubeletConfig(edit func(*kubeletconfig.KubeletConfiguration)) (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	healthz, err := freePort()
	if err != nil {
		return "", err
	}
	gates := map[string]bool{}
	for _, g := range strings.Split(FeatureGates, ",") {
		k, v, _ := strings.Cut(g, "=")
		gates[k] = v == "true"
	}
	cfg := &kubeletconfig.KubeletConfiguration{
		TypeMeta: metav1.TypeMeta{APIVersion: "kubelet.config.k8s.io/v1beta1", Kind: "KubeletConfiguration"},
		// Loopback only; anyone who reaches it may use it.
		Address:            "127.0.0.1",
		Port:               int32(port),
		ReadOnlyPort:       0,
		HealthzBindAddress: "127.0.0.1",
		HealthzPort:        ptr.To(int32(healthz)),
		Authentication: kubeletconfig.KubeletAuthentication{
			Anonymous: kubeletconfig.KubeletAnonymousAuthentication{Enabled: ptr.To(true)},
			Webhook:   kubeletconfig.KubeletWebhookAuthentication{Enabled: ptr.To(false)},
		},
		Authorization: kubeletconfig.KubeletAuthorization{Mode: kubeletconfig.KubeletAuthorizationModeAlwaysAllow},
		// No real containers, so no cgroups to manage; a test machine's swap
		// and cgroup v1 are not errors.
		CgroupsPerQOS:          ptr.To(false),
		EnforceNodeAllocatable: []string{"none"},
		CgroupDriver:           "cgroupfs",
		FailSwapOn:             ptr.To(false),
		FailCgroupV1:           ptr.To(false),
		// Thresholds low enough that a busy test disk does not evict pods.
		EvictionHard: map[string]string{
			"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%",
		},
		ContainerRuntimeEndpoint: n.cri.Endpoint(),
		ImageServiceEndpoint:     n.cri.Endpoint(),
		PodLogsDir:               filepath.Join(n.dir, "pod-logs"),
		VolumePluginDir:          filepath.Join(n.dir, "volume-plugins"),
		ClusterDomain:            "cluster.local",
		ClusterDNS:               []string{"10.96.0.10"},
		RotateCertificates:       false,
		// Node status (allocatable, conditions) every 2s instead of 10s, so
		// a test sees a device plugin's resources soon after it registers.
		NodeStatusUpdateFrequency: metav1.Duration{Duration: 2 * time.Second},
		FeatureGates:              gates,
	}
	if edit != nil {
		edit(cfg)
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return "", err
	}
	path := filepath.Join(n.dir, "kubelet.yaml")
	return path, os.WriteFile(path, data, 0o644)
}

func (n *Node) startKubelet() error {
	if n.kubelet != nil {
		if done, _ := n.kubelet.exited(); !done {
			return fmt.Errorf("kubelet already running")
		}
	}
	spec := n.spec
	spec.attr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	p, err := startProcess(spec)
	if err != nil {
		return err
	}
	n.kubelet = p
	// The kubelet is up once it answers on its registration socket (through
	// the bind mount) and the PodResources socket. Dial rather than stat:
	// a previous kubelet's socket files stay behind and refuse connections.
	err = poll(context.Background(), 60*time.Second, "kubelet sockets", func(context.Context) (bool, error) {
		if err := p.checkAlive(); err != nil {
			return false, err
		}
		return socketAnswers(filepath.Join(n.DevicePluginDir(), "kubelet.sock")) &&
			socketAnswers(n.PodResourcesSocket()), nil
	})
	if err != nil {
		p.kill()
		return err
	}
	return nil
}

func socketAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Name is the Node's name.
func (n *Node) Name() string { return n.name }

// Dir is the node's directory in the bed (kubelet log, config, CRI socket).
func (n *Node) Dir() string { return n.dir }

// RootDir is the kubelet's --root-dir, the --kubelet-root to give gpulet.
func (n *Node) RootDir() string { return n.rootDir }

// DevicePluginDir is the host path the kubelet sees as
// /var/lib/kubelet/device-plugins (kubelet.sock, plugins' sockets).
func (n *Node) DevicePluginDir() string { return filepath.Join(n.rootDir, "device-plugins") }

// PluginsRegistryDir is where DRA drivers put their registration sockets.
func (n *Node) PluginsRegistryDir() string { return filepath.Join(n.rootDir, "plugins_registry") }

// PluginsDir is where DRA drivers put their service sockets (plugins/<driver>/).
func (n *Node) PluginsDir() string { return filepath.Join(n.rootDir, "plugins") }

// PodResourcesSocket is the kubelet's PodResources API socket.
func (n *Node) PodResourcesSocket() string {
	return filepath.Join(n.rootDir, "pod-resources", "kubelet.sock")
}

// KubeletLog is the kubelet's log file (appended across restarts).
func (n *Node) KubeletLog() string { return n.spec.logPath }

// CRI is the node's container runtime stub and its records.
func (n *Node) CRI() *CRI { return n.cri }

// StopKubelet stops the kubelet (SIGTERM, then SIGKILL after 15s). The CRI
// stub, its containers and the Node object stay.
func (n *Node) StopKubelet(t testing.TB) {
	t.Helper()
	if n.kubelet != nil {
		n.kubelet.stop(15 * time.Second)
	}
}

// KillKubelet ends the kubelet with SIGKILL.
func (n *Node) KillKubelet(t testing.TB) {
	t.Helper()
	if n.kubelet != nil {
		n.kubelet.kill()
	}
}

// StartKubelet starts a stopped kubelet with the same configuration and
// waits until it serves its sockets, has renewed the node's Lease (so the
// Node's status is its own, not the previous kubelet's) and the Node is
// Ready without taints.
func (n *Node) StartKubelet(t testing.TB) {
	t.Helper()
	since := time.Now().Truncate(time.Second)
	if err := n.startKubelet(); err != nil {
		t.Fatalf("node %s: start kubelet: %v", n.name, err)
	}
	Eventually(t, 60*time.Second, "node "+n.name+" Lease renewed by the new kubelet", func(ctx context.Context) error {
		l, err := n.cp.client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if l.Spec.RenewTime == nil || l.Spec.RenewTime.Before(&metav1.MicroTime{Time: since}) {
			return fmt.Errorf("lease renewed at %v, before the restart at %v", l.Spec.RenewTime, since)
		}
		return nil
	})
	n.WaitReady(t, 2*time.Minute)
}

// RestartKubelet stops and starts the kubelet (see StartKubelet for what it
// waits for). Its device-plugin socket is recreated, as on a real node, so
// device plugins must re-register.
func (n *Node) RestartKubelet(t testing.TB) {
	t.Helper()
	n.StopKubelet(t)
	n.StartKubelet(t)
}

// Object reads the Node from the API server.
func (n *Node) Object(ctx context.Context) (*corev1.Node, error) {
	return n.cp.client.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
}

// WaitReady waits until the Node's Ready condition is True and it has no
// taints.
func (n *Node) WaitReady(t testing.TB, timeout time.Duration) {
	t.Helper()
	Eventually(t, timeout, "node "+n.name+" Ready without taints", func(ctx context.Context) error {
		if n.kubelet != nil {
			if err := n.kubelet.checkAlive(); err != nil {
				return err
			}
		}
		node, err := n.Object(ctx)
		if err != nil {
			return err
		}
		return nodeReady(node)
	})
}

func nodeReady(node *corev1.Node) error {
	ready := false
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			if c.Status != corev1.ConditionTrue {
				return fmt.Errorf("condition Ready=%s: %s", c.Status, c.Message)
			}
			ready = true
		}
	}
	if !ready {
		return fmt.Errorf("no Ready condition yet")
	}
	if len(node.Spec.Taints) > 0 {
		return fmt.Errorf("taints %v", node.Spec.Taints)
	}
	return nil
}

// shutdown stops gpulets, the kubelet and the CRI stub and deletes the
// Node object. It is safe to call twice.
func (n *Node) shutdown() {
	for _, g := range n.gpulets {
		g.proc.stop(10 * time.Second)
	}
	if n.kubelet != nil {
		n.kubelet.stop(15 * time.Second)
	}
	if n.cri != nil {
		n.cri.stop()
	}
	n.cp.mu.Lock()
	_, present := n.cp.nodes[n.name]
	delete(n.cp.nodes, n.name)
	n.cp.mu.Unlock()
	if present {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := n.cp.client.CoreV1().Nodes().Delete(ctx, n.name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			fmt.Fprintf(os.Stderr, "e2e: delete node %s: %v\n", n.name, err)
		}
	}
}
