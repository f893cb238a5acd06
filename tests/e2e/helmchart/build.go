// Package helmchart runs gpulet's Helm chart for the tests: it builds Helm
// itself from the Go module proxy into the e2e bed's git-ignored binary
// cache (Ensure), and renders the chart the ways the tests cover
// (Variants, Template).
//
// Helm's module has no replace directives, so `go install
// helm.sh/helm/v4/cmd/helm@<version>` builds it outside any module: the e2e
// module's go.mod does not need Helm's dependencies. Only a change of the
// pinned version (or of the Go toolchain) rebuilds it.
package helmchart

import (
	"bytes"
	"context"
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

// Version is the Helm release the tests run.
const Version = "v4.3.1"

const pkg = "helm.sh/helm/v4/cmd/helm"

// ldflags stamp the version as Helm's release build does; without them
// `helm version` reports the bare "v4.3" of its source.
var ldflags = "-s -w -X helm.sh/helm/v4/internal/version.version=" + Version +
	" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"

// Options say where the cache is and where build output goes.
type Options struct {
	// CacheRoot is the bed's cache root. Empty means $GPULET_E2E_CACHE, or
	// else <repo>/.cache/e2e found from the e2e module's directory.
	CacheRoot string
	// Log receives the build's output. Nil: stderr.
	Log io.Writer
}

// Ensure returns the path of the cached Helm binary, building it first when
// it is missing or was built from something else (its stamp file differs).
func Ensure(ctx context.Context, opts Options) (string, error) {
	logw := opts.Log
	if logw == nil {
		logw = os.Stderr
	}
	root := opts.CacheRoot
	if root == "" {
		root = os.Getenv("GPULET_E2E_CACHE")
	}
	if root == "" {
		mod, err := e2eModuleDir()
		if err != nil {
			return "", err
		}
		root = filepath.Join(mod, "..", "..", ".cache", "e2e")
	}
	dir := filepath.Join(root, "helm-"+Version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create helm cache: %w", err)
	}
	bin := filepath.Join(dir, "helm")
	key := fmt.Sprintf("%s@%s %s/%s CGO_ENABLED=0 -trimpath -ldflags=%q", pkg, Version, runtime.Version(), runtime.GOARCH, ldflags)

	unlock, err := lock(ctx, filepath.Join(dir, ".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()

	if got, err := os.ReadFile(bin + ".stamp"); err == nil && string(got) == key {
		if _, err := os.Stat(bin); err == nil {
			return bin, nil
		}
	}

	fmt.Fprintf(logw, "e2e: building helm %s from the module proxy\n", Version)
	start := time.Now()
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.CommandContext(ctx, "go", "install", "-trimpath", "-ldflags="+ldflags, pkg+"@"+Version)
	cmd.Dir = tmp // outside every module: pkg@version ignores the current one anyway
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
	cmd.Stdout, cmd.Stderr = logw, logw
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go install %s@%s: %w", pkg, Version, err)
	}
	if err := os.Rename(filepath.Join(tmp, "helm"), bin); err != nil {
		return "", fmt.Errorf("install helm: %w", err)
	}
	if err := os.WriteFile(bin+".stamp", []byte(key), 0o644); err != nil {
		return "", fmt.Errorf("write helm stamp: %w", err)
	}
	fmt.Fprintf(logw, "e2e: built helm %s in %s\n", Version, time.Since(start).Round(time.Second))
	return bin, nil
}

// e2eModuleDir is the directory of the e2e module's go.mod, found through
// the go command from the working directory (go test sets it to the
// package's directory).
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

// lock takes an exclusive flock on path, so two test processes never build
// at once on a two-core machine; it waits for ctx.
func lock(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open helm build lock: %w", err)
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
			return nil, fmt.Errorf("wait for helm build lock %s: %w", path, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}
