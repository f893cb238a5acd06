package bed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// GpuletBinary is the gpulet binary the bed runs: $GPULET_BIN, or else
// bin/gpulet at the repository root (what `make build` writes).
func GpuletBinary() (string, error) {
	if p := os.Getenv("GPULET_BIN"); p != "" {
		return p, nil
	}
	modDir, err := e2eModuleDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(modDir, "..", "..", "bin", "gpulet"), nil
}

// Gpulet is one gpulet process serving a node. It runs outside the kubelet's
// mount namespace, on the host paths under the node's kubelet root.
type Gpulet struct {
	node  *Node
	spec  procSpec
	proc  *process
	count int // starts so far, to name logs
}

// GpuletArgs are the flags the bed gives `gpulet serve` before a test's own:
// the node's name, an admin kubeconfig, the node's kubelet root (device
// plugins, plugins_registry, pod-resources under it), a CDI root and state
// dir of the node's own, and metrics on a free loopback port (the default
// listens on every interface, on a port two gpulets would share). A test's
// args come later and so win: pass --metrics-address=127.0.0.1:<FreePort()>
// to scrape.
func (n *Node) GpuletArgs() []string {
	return []string{
		"serve",
		"--node-name=" + n.name,
		"--kubeconfig=" + n.cp.adminKubeconfig,
		"--kubelet-root=" + n.rootDir,
		"--cdi-root=" + n.CDIRoot(),
		"--state-dir=" + filepath.Join(n.dir, "gpulet-state"),
		"--metrics-address=127.0.0.1:0",
	}
}

// CDIRoot is the directory the bed's gpulet writes CDI specs to.
func (n *Node) CDIRoot() string { return filepath.Join(n.dir, "cdi") }

// StartGpulet runs `gpulet serve` for the node with GpuletArgs and then args,
// logs to <node dir>/gpulet-<n>.log, and stops it when the test ends. It
// skips the test when the gpulet binary is missing (build it with
// `make build` or point GPULET_BIN at one). It does not wait for gpulet to
// register: tests wait for what they need (allocatable, ResourceSlices).
func (n *Node) StartGpulet(t testing.TB, args ...string) *Gpulet {
	t.Helper()
	bin, err := GpuletBinary()
	if err != nil {
		t.Fatalf("gpulet binary: %v", err)
	}
	if _, err := exec.LookPath(bin); err != nil {
		t.Skipf("gpulet binary %s not usable (%v): run `make build` or set GPULET_BIN", bin, err)
	}
	idx := len(n.gpulets) + 1
	work := filepath.Join(n.dir, "gpulet-cwd-"+strconv.Itoa(idx))
	for _, d := range []string{work, n.CDIRoot(), filepath.Join(n.dir, "gpulet-state")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	g := &Gpulet{node: n, spec: procSpec{
		name:    fmt.Sprintf("gpulet %d on %s", idx, n.name),
		path:    bin,
		args:    append(n.GpuletArgs(), args...),
		dir:     work,
		logPath: filepath.Join(n.dir, "gpulet-"+strconv.Itoa(idx)+".log"),
	}}
	n.gpulets = append(n.gpulets, g)
	if err := g.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.proc.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("----- tail of %s -----\n%s", g.spec.logPath, tail(g.spec.logPath, 60))
		}
	})
	return g
}

func (g *Gpulet) start() error {
	p, err := startProcess(g.spec)
	if err != nil {
		return err
	}
	g.proc = p
	g.count++
	return nil
}

// LogPath is the gpulet's log (stdout and stderr, appended across restarts).
func (g *Gpulet) LogPath() string { return g.spec.logPath }

// Args is gpulet's full command line after the binary.
func (g *Gpulet) Args() []string { return append([]string(nil), g.spec.args...) }

// Pid is the running process's id.
func (g *Gpulet) Pid() int { return g.proc.cmd.Process.Pid }

// Exited reports whether gpulet has ended, and its exit error.
func (g *Gpulet) Exited() (bool, error) { return g.proc.exited() }

// Stop sends SIGTERM and waits (SIGKILL after 10s).
func (g *Gpulet) Stop(t testing.TB) {
	t.Helper()
	g.proc.stop(10 * time.Second)
}

// Kill ends gpulet with SIGKILL, as a crash would.
func (g *Gpulet) Kill(t testing.TB) {
	t.Helper()
	g.proc.kill()
}

// Signal sends sig to the running gpulet (SIGHUP, SIGSTOP, ...).
func (g *Gpulet) Signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := g.proc.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal gpulet: %v", err)
	}
}

// Start starts a stopped or killed gpulet again with the same arguments.
func (g *Gpulet) Start(t testing.TB) {
	t.Helper()
	if done, _ := g.proc.exited(); !done {
		t.Fatal("gpulet still running")
	}
	if err := g.start(); err != nil {
		t.Fatal(err)
	}
}
