// Package cdi writes the Container Device Interface specs through which
// container runtimes hand gpulet's devices to containers: one node spec
// with a CDI device per GPU and MIG device (for the device plugin) and one
// spec per prepared ResourceClaim (for the DRA driver).
//
// What a device's container edits hold (device nodes, driver libraries,
// hooks) comes from NVIDIA's nvcdi pointed at the node's driver root, or
// at the simulator's mock driver root under the mock. Edits are computed
// when the inventory changes (Update), never per allocation, and a
// container's edits name only the devices allocated to it: the common
// edits carry control nodes and libraries, never a GPU's own node.
//
// Where nvcdi cannot produce edits (no driver root, device nodes that are
// plain files because mknod was not permitted, a MIG device whose
// capability minors nvcdi cannot read), gpulet builds minimal edits itself
// (device nodes and NVIDIA_VISIBLE_DEVICES), logs why once, and Mode says
// so. Every spec is validated by the CDI library before it replaces the
// old one atomically.
package cdi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi"
	"github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi/transform"
	"github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi/transform/root"
	"k8s.io/klog/v2"
	"tags.cncf.io/container-device-interface/pkg/parser"
	"tags.cncf.io/container-device-interface/specs-go"
)

// Defaults for Options.
const (
	DefaultVendor     = "gpulet.dev"
	DefaultClass      = "gpu"
	DefaultDriverRoot = "/"
	DefaultHookPath   = "/usr/bin/nvidia-cdi-hook"
)

// LibFactory builds NVIDIA's nvcdi library over gpulet's NVML;
// *nvml.Adapter is one. It exists so that only internal/nvml imports
// go-nvml.
type LibFactory interface {
	NewCDILib(opts ...nvcdi.Option) (nvcdi.Interface, error)
}

// Options configure a Generator. Only Root is required.
type Options struct {
	// Root is the CDI spec directory the container runtime reads, e.g.
	// /var/run/cdi. It is created if missing.
	Root string
	// DriverRoot is where the driver's libraries and tools are, as this
	// process sees it: "/" (default), /run/nvidia/driver for a driver
	// container, or the simulator's mock driver root.
	DriverRoot string
	// DevRoot is where the driver's /dev is; default DriverRoot.
	DevRoot string
	// HostDriverRoot and HostDevRoot are where DriverRoot and DevRoot are
	// on the host, the paths the container runtime reads specs in; they
	// default to DriverRoot and DevRoot. They differ when gpulet runs in a
	// container with the host's driver root mounted somewhere else (at
	// /driver-root, say): specs must name the host's paths.
	HostDriverRoot, HostDevRoot string
	// HookPath is nvidia-cdi-hook on the host; default DefaultHookPath.
	HookPath string
	// Vendor and Class make the CDI kind "<vendor>/<class>"; defaults
	// DefaultVendor and DefaultClass.
	Vendor, Class string
	// NVML builds nvcdi. Nil means no nvcdi: edits are always gpulet's
	// minimal ones.
	NVML LibFactory
	// Now is the clock Status reports times by; default time.Now.
	Now func() time.Time
}

// Mode says where container edits come from.
type Mode string

// Modes of a Generator. Mode is "" until the first Update.
const (
	// ModeNVCDI: all edits come from nvcdi.
	ModeNVCDI Mode = "nvcdi"
	// ModeMixed: the common edits come from nvcdi, but some devices'
	// edits were built by gpulet (typically MIG devices whose capability
	// minors nvcdi could not read).
	ModeMixed Mode = "nvcdi+fallback"
	// ModeFallback: nvcdi is unusable; all edits are gpulet's minimal
	// ones (device nodes and NVIDIA_VISIBLE_DEVICES, no libraries).
	ModeFallback Mode = "fallback"
)

// Status is what a Generator reports for logs and metrics.
type Status struct {
	Mode Mode
	// Reason says why nvcdi is not used for everything ("" in ModeNVCDI).
	Reason string
	// Devices is the number of devices with edits.
	Devices int
	// UpdatedAt is when edits were last computed.
	UpdatedAt time.Time
}

// Generator computes container edits for a node's devices and writes the
// node's and the claims' CDI specs. It is safe for concurrent use.
type Generator struct {
	opts Options

	// mu guards everything below, and serialises node spec writes.
	mu sync.Mutex
	// lib is nil when nvcdi could not be built (libErr says why).
	lib nvcdi.Interface
	// toHost rewrites paths as gpulet sees them into the host's; nil when
	// they are the same.
	toHost transform.Transformer
	libErr error
	// common holds the edits every spec carries; commonNVCDI is true when
	// nvcdi produced them.
	common      *specs.ContainerEdits
	commonNVCDI bool
	// driverVersion is the inventory's driver version the common edits
	// were computed for.
	driverVersion string
	devices       map[string]*deviceEdits
	mode          Mode
	reason        string
	updatedAt     time.Time
	// warned holds the reasons already logged, so each is logged once.
	warned map[string]bool
}

// New returns a Generator for opts. It creates the CDI root and removes
// temporary files a crash left there. Edits are computed by Update or
// WriteNodeSpec.
func New(ctx context.Context, opts Options) (*Generator, error) {
	if opts.Root == "" {
		return nil, errors.New("cdi: no CDI root directory given")
	}
	if opts.DriverRoot == "" {
		opts.DriverRoot = DefaultDriverRoot
	}
	if opts.DevRoot == "" {
		opts.DevRoot = opts.DriverRoot
	}
	if opts.HostDriverRoot == "" {
		opts.HostDriverRoot = opts.DriverRoot
	}
	if opts.HostDevRoot == "" {
		opts.HostDevRoot = opts.HostDriverRoot
	}
	if opts.HookPath == "" {
		opts.HookPath = DefaultHookPath
	}
	if opts.Vendor == "" {
		opts.Vendor = DefaultVendor
	}
	if opts.Class == "" {
		opts.Class = DefaultClass
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	for _, p := range []struct{ name, path string }{
		{"CDI root", opts.Root}, {"driver root", opts.DriverRoot}, {"dev root", opts.DevRoot},
		{"host driver root", opts.HostDriverRoot}, {"host dev root", opts.HostDevRoot}, {"hook path", opts.HookPath},
	} {
		if !filepath.IsAbs(p.path) {
			return nil, fmt.Errorf("cdi: %s %q is not an absolute path", p.name, p.path)
		}
	}
	if err := parser.ValidateVendorName(opts.Vendor); err != nil {
		return nil, fmt.Errorf("cdi: vendor %q: %w", opts.Vendor, err)
	}
	if err := parser.ValidateClassName(opts.Class); err != nil {
		return nil, fmt.Errorf("cdi: class %q: %w", opts.Class, err)
	}
	opts.Root = filepath.Clean(opts.Root)
	if err := os.MkdirAll(opts.Root, 0o755); err != nil {
		return nil, fmt.Errorf("cdi: create CDI root: %w", err)
	}
	g := &Generator{opts: opts, devices: map[string]*deviceEdits{}, warned: map[string]bool{}}
	if filepath.Clean(opts.HostDriverRoot) != filepath.Clean(opts.DriverRoot) || filepath.Clean(opts.HostDevRoot) != filepath.Clean(opts.DevRoot) {
		g.toHost = root.NewDriverTransformer(
			root.WithDriverRoot(opts.DriverRoot), root.WithTargetDriverRoot(opts.HostDriverRoot),
			root.WithDevRoot(opts.DevRoot), root.WithTargetDevRoot(opts.HostDevRoot))
	}
	g.removeTempFiles(ctx)
	if opts.NVML == nil {
		g.libErr = errors.New("no NVML library to build nvcdi from")
	} else {
		g.lib, g.libErr = opts.NVML.NewCDILib(
			nvcdi.WithDriverRoot(opts.DriverRoot),
			nvcdi.WithDevRoot(opts.DevRoot),
			nvcdi.WithNVIDIACDIHookPath(opts.HookPath),
			nvcdi.WithVendor(opts.Vendor),
			nvcdi.WithClass(opts.Class),
			nvcdi.WithLogger(nvcdiLogger{klog.FromContext(ctx).WithName("nvcdi")}),
		)
	}
	return g, nil
}

// Kind is the CDI kind of gpulet's devices, "<vendor>/<class>".
func (g *Generator) Kind() string { return g.opts.Vendor + "/" + g.opts.Class }

// DeviceName is the fully qualified CDI name of the GPU or MIG device
// with the given UUID in the node spec: "gpulet.dev/gpu=<uuid>".
func (g *Generator) DeviceName(uuid string) string {
	return parser.QualifiedName(g.opts.Vendor, g.opts.Class, uuid)
}

// Mode says where edits come from now ("" before the first Update).
func (g *Generator) Mode() Mode {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.mode
}

// Status reports the mode, why, and how many devices have edits.
func (g *Generator) Status() Status {
	g.mu.Lock()
	defer g.mu.Unlock()
	return Status{Mode: g.mode, Reason: g.reason, Devices: len(g.devices), UpdatedAt: g.updatedAt}
}

// warnOnce logs a reason for falling back the first time it occurs.
// Callers hold g.mu.
func (g *Generator) warnOnce(ctx context.Context, reason string, kv ...any) {
	if g.warned[reason] {
		return
	}
	g.warned[reason] = true
	// klog has no warning level in structured logging; this is logged at
	// the default verbosity so an operator sees it.
	klog.FromContext(ctx).Info("Warning: CDI edits built by gpulet instead of nvcdi: "+reason, kv...)
}

// removeTempFiles removes temporary spec files a crash left in the root.
func (g *Generator) removeTempFiles(ctx context.Context) {
	matches, _ := filepath.Glob(filepath.Join(g.opts.Root, "."+g.opts.Vendor+"-*"+tempSuffix+"*"))
	for _, m := range matches {
		if strings.Contains(filepath.Base(m), tempSuffix) {
			if err := os.Remove(m); err == nil {
				klog.FromContext(ctx).V(2).Info("Removed a temporary CDI spec file left by a crash", "file", m)
			}
		}
	}
}

// nvcdiLogger sends nvcdi's log to klog. nvcdi warns about every optional
// file it does not find (Vulkan, X11, EGL), so its warnings are verbose.
type nvcdiLogger struct{ log klog.Logger }

func (l nvcdiLogger) Errorf(f string, a ...any)   { l.logf(2, f, a, "level", "error") }
func (l nvcdiLogger) Warningf(f string, a ...any) { l.logf(4, f, a, "level", "warning") }
func (l nvcdiLogger) Infof(f string, a ...any)    { l.logf(5, f, a) }
func (l nvcdiLogger) Debugf(f string, a ...any)   { l.logf(6, f, a) }
func (l nvcdiLogger) Tracef(f string, a ...any)   { l.logf(7, f, a) }

func (l nvcdiLogger) logf(v int, f string, a []any, kv ...any) {
	if lv := l.log.V(v); lv.Enabled() {
		lv.Info(fmt.Sprintf(f, a...), kv...)
	}
}
