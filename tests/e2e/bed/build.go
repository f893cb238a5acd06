package bed

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Binaries are the paths of the control-plane and node binaries the bed runs.
type Binaries struct {
	Etcd              string
	APIServer         string
	Scheduler         string
	ControllerManager string
	Kubelet           string
}

// BuildOptions says where the binaries are cached and where build output goes.
type BuildOptions struct {
	// CacheRoot holds one folder per Kubernetes version. Empty means the
	// environment's GPULET_E2E_CACHE, or else <repo>/.cache/e2e.
	CacheRoot string
	// Log receives the go build output and one line per binary. Nil: stderr.
	Log io.Writer
}

// component is one binary: what to build and what decides when to rebuild it.
type component struct {
	name    string
	pkg     string // package path as `go build` takes it inside the e2e module
	ldflags string
	key     string // everything that changes the binary: versions, flags, sources
}

// k8sLDFlags stamps the version into Kubernetes' binaries, as its release
// build does: without it they report v0.0.0-master (in /version and in the
// Node's kubeletVersion), which version-skew logic and tests would see.
func k8sLDFlags(version string) string {
	major, minor, _ := strings.Cut(strings.TrimPrefix(version, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	var b strings.Builder
	b.WriteString("-s -w")
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		fmt.Fprintf(&b, " -X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s -X %s.gitTreeState=clean",
			pkg, version, pkg, major, pkg, minor, pkg)
	}
	return b.String()
}

// EnsureBinaries builds any binary whose cached copy is missing or stale and
// returns the paths of all of them. Kubernetes' commands come from
// k8s.io/kubernetes at the version the e2e module pins; etcd is the small
// main in cmd/etcd over the etcd server module the same go.mod resolves.
// A stamp file beside each binary records what it was built from, so only a
// version (or source) change rebuilds. A lock file keeps concurrent test
// processes from building at once: the machine has two cores.
func EnsureBinaries(ctx context.Context, opts BuildOptions) (*Binaries, error) {
	logw := opts.Log
	if logw == nil {
		logw = os.Stderr
	}
	modDir, err := e2eModuleDir()
	if err != nil {
		return nil, err
	}
	versions, err := moduleVersions(ctx, modDir, "k8s.io/kubernetes", "go.etcd.io/etcd/server/v3")
	if err != nil {
		return nil, err
	}
	k8sVersion, etcdVersion := versions[0], versions[1]
	etcdSrc, err := os.ReadFile(filepath.Join(modDir, "cmd", "etcd", "main.go"))
	if err != nil {
		return nil, fmt.Errorf("read etcd main: %w", err)
	}

	root := opts.CacheRoot
	if root == "" {
		root = os.Getenv("GPULET_E2E_CACHE")
	}
	if root == "" {
		root = filepath.Join(modDir, "..", "..", ".cache", "e2e")
	}
	dir := filepath.Join(root, "k8s-"+k8sVersion)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create binary cache: %w", err)
	}

	sum := sha256.Sum256(etcdSrc)
	k8sFlags := k8sLDFlags(k8sVersion)
	comps := []component{
		{"etcd", "./cmd/etcd", "-s -w", "etcd-server " + etcdVersion + " main " + hex.EncodeToString(sum[:8])},
		{"kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver", k8sFlags, "k8s.io/kubernetes " + k8sVersion},
		{"kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler", k8sFlags, "k8s.io/kubernetes " + k8sVersion},
		{"kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager", k8sFlags, "k8s.io/kubernetes " + k8sVersion},
		{"kubelet", "k8s.io/kubernetes/cmd/kubelet", k8sFlags, "k8s.io/kubernetes " + k8sVersion},
	}
	for i := range comps {
		comps[i].key += fmt.Sprintf(" %s/%s CGO_ENABLED=0 -trimpath -ldflags=%q", runtime.Version(), runtime.GOARCH, comps[i].ldflags)
	}

	unlock, err := lockFile(ctx, filepath.Join(dir, ".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()

	for _, c := range comps {
		if err := buildOne(ctx, modDir, dir, c, logw); err != nil {
			return nil, err
		}
	}
	return &Binaries{
		Etcd:              filepath.Join(dir, "etcd"),
		APIServer:         filepath.Join(dir, "kube-apiserver"),
		Scheduler:         filepath.Join(dir, "kube-scheduler"),
		ControllerManager: filepath.Join(dir, "kube-controller-manager"),
		Kubelet:           filepath.Join(dir, "kubelet"),
	}, nil
}

func buildOne(ctx context.Context, modDir, dir string, c component, logw io.Writer) error {
	bin := filepath.Join(dir, c.name)
	stamp := bin + ".stamp"
	if got, err := os.ReadFile(stamp); err == nil && string(got) == c.key {
		if _, err := os.Stat(bin); err == nil {
			return nil
		}
	}
	fmt.Fprintf(logw, "e2e: building %s (%s)\n", c.name, c.pkg)
	start := time.Now()
	tmp := bin + ".tmp"
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags="+c.ldflags, "-o", tmp, c.pkg)
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Stdout = logw
	cmd.Stderr = logw
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w", c.pkg, err)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return fmt.Errorf("install %s: %w", c.name, err)
	}
	if err := os.WriteFile(stamp, []byte(c.key), 0o644); err != nil {
		return fmt.Errorf("write stamp for %s: %w", c.name, err)
	}
	fmt.Fprintf(logw, "e2e: built %s in %s\n", c.name, time.Since(start).Round(time.Second))
	return nil
}

// e2eModuleDir finds the directory of the e2e module's go.mod from the
// working directory, which `go test` sets to the package's directory.
func e2eModuleDir() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the e2e module: run from tests/e2e")
	}
	data, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	if !bytes.Contains(data, []byte("module github.com/gpulet/gpulet/tests/e2e\n")) {
		return "", fmt.Errorf("%s is not the e2e module: run from tests/e2e", gomod)
	}
	return filepath.Dir(gomod), nil
}

func moduleVersions(ctx context.Context, modDir string, mods ...string) ([]string, error) {
	cmd := exec.CommandContext(ctx, "go", append([]string{"list", "-m", "-f", "{{.Version}}"}, mods...)...)
	cmd.Dir = modDir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list -m %v: %w: %s", mods, err, stderr.String())
	}
	vs := strings.Fields(string(out))
	if len(vs) != len(mods) {
		return nil, fmt.Errorf("go list -m %v: got versions %q", mods, vs)
	}
	return vs, nil
}

// lockFile takes an exclusive flock on path, waiting for ctx.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open build lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for build lock %s: %w", path, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}
