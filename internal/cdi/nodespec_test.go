package cdi

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/specs-go"
)

func TestNodeSpecDGXH100(t *testing.T) {
	requireRoot(t)
	node := newSimNode(t, "dgx-h100")
	ctx, g := simGenerator(t, node)
	if err := g.WriteNodeSpec(ctx, node.inv); err != nil {
		t.Fatal(err)
	}
	if g.Mode() != ModeNVCDI {
		t.Fatalf("mode %q (%s), want %q", g.Mode(), g.Status().Reason, ModeNVCDI)
	}
	spec := readSpec(t, g.NodeSpecPath())
	if spec.Kind != "gpulet.dev/gpu" {
		t.Errorf("kind %q", spec.Kind)
	}
	if len(spec.Devices) != 8 {
		t.Fatalf("%d devices, want 8", len(spec.Devices))
	}
	for i, d := range spec.Devices {
		gpu := node.inv.GPUs[i]
		if d.Name != gpu.UUID {
			t.Errorf("device %d named %q, want its UUID %q", i, d.Name, gpu.UUID)
		}
		want := []string{fmt.Sprintf("/dev/nvidia%d", gpu.Minor)}
		if got := gpuNodes(nodePaths(d.ContainerEdits.DeviceNodes)); !slices.Equal(got, want) {
			t.Errorf("device %s: GPU nodes %v, want %v", d.Name, got, want)
		}
		for _, n := range d.ContainerEdits.DeviceNodes {
			if n.HostPath != filepath.Join(node.driverRoot, n.Path) {
				t.Errorf("device %s: node %s from %s, not the mock driver root", d.Name, n.Path, n.HostPath)
			}
		}
	}
	common := nodePaths(spec.ContainerEdits.DeviceNodes)
	if got := gpuNodes(common); len(got) > 0 {
		t.Errorf("common edits hold GPU nodes %v", got)
	}
	for _, want := range []string{"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"} {
		if !slices.Contains(common, want) {
			t.Errorf("common nodes %v lack %s", common, want)
		}
	}
	lib := "libcuda.so." + node.inv.System.DriverVersion
	if !slices.ContainsFunc(spec.ContainerEdits.Mounts, func(m *specs.Mount) bool {
		return filepath.Base(m.HostPath) == lib && strings.HasPrefix(m.HostPath, node.driverRoot+"/")
	}) {
		t.Errorf("no mount of %s from the mock driver root in %d mounts", lib, len(spec.ContainerEdits.Mounts))
	}
}

// TestNodeSpecGolden keeps the node spec of a default dgx-h100 in
// testdata, with the mock driver root's path replaced by $DRIVER_ROOT.
// Run with -update to rewrite it.
func TestNodeSpecGolden(t *testing.T) {
	requireRoot(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("skipping: the golden spec has amd64 library paths")
	}
	node := newSimNode(t, "dgx-h100")
	ctx, g := simGenerator(t, node)
	if err := g.WriteNodeSpec(ctx, node.inv); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(g.NodeSpecPath())
	if err != nil {
		t.Fatal(err)
	}
	got = bytes.ReplaceAll(got, []byte(node.driverRoot), []byte("$DRIVER_ROOT"))
	golden := filepath.Join("testdata", "dgx-h100.node-spec.yaml")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("node spec differs from %s (run with -update if the change is intended):\n%s", golden, lineDiff(string(want), string(got)))
	}
}

// lineDiff shows the first lines where two texts differ.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return fmt.Sprintf("line %d:\n- %s\n+ %s", i+1, wl, gl)
		}
	}
	return ""
}

// injected loads the CDI root with the CDI library, as a runtime does,
// and injects the devices into an empty OCI spec.
func injected(t *testing.T, root string, devices ...string) *oci.Spec {
	t.Helper()
	cache, err := cdi.NewCache(cdi.WithSpecDirs(root), cdi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	for path, errs := range cache.GetErrors() {
		t.Errorf("CDI cache: %s: %v", path, errs)
	}
	spec := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
	if unresolved, err := cache.InjectDevices(spec, devices...); err != nil {
		t.Fatalf("inject %v: %v (unresolved %v)", devices, err, unresolved)
	}
	return spec
}

func ociDevicePaths(s *oci.Spec) []string {
	var out []string
	for _, d := range s.Linux.Devices {
		out = append(out, d.Path)
	}
	return out
}

func TestInjectWholeGPU(t *testing.T) {
	requireRoot(t)
	node := newSimNode(t, "dgx-h100")
	ctx, g := simGenerator(t, node)
	if err := g.WriteNodeSpec(ctx, node.inv); err != nil {
		t.Fatal(err)
	}
	gpu := node.inv.GPUs[3]
	spec := injected(t, g.opts.Root, g.DeviceName(gpu.UUID))
	paths := ociDevicePaths(spec)
	if got, want := gpuNodes(paths), []string{fmt.Sprintf("/dev/nvidia%d", gpu.Minor)}; !slices.Equal(got, want) {
		t.Errorf("container GPU nodes %v, want %v", got, want)
	}
	for _, want := range []string{"/dev/nvidiactl", "/dev/nvidia-uvm"} {
		if !slices.Contains(paths, want) {
			t.Errorf("container nodes %v lack %s", paths, want)
		}
	}
	for _, d := range spec.Linux.Devices {
		if d.Path == fmt.Sprintf("/dev/nvidia%d", gpu.Minor) && (d.Type != "c" || d.Major != 195 || d.Minor != int64(gpu.Minor)) {
			t.Errorf("GPU node %+v: want c 195:%d", d, gpu.Minor)
		}
	}
	if !slices.ContainsFunc(spec.Mounts, func(m oci.Mount) bool { return strings.HasPrefix(filepath.Base(m.Destination), "libcuda.so.") }) {
		t.Errorf("no libcuda mount in the container: %v", spec.Mounts)
	}
	if !slices.Contains(spec.Process.Env, "NVIDIA_VISIBLE_DEVICES=void") {
		t.Errorf("env %v: want nvcdi's NVIDIA_VISIBLE_DEVICES=void", spec.Process.Env)
	}
	var allowed []string
	for _, r := range spec.Linux.Resources.Devices {
		// Minors 254 and 255 are nvidia-modeset and nvidiactl.
		if r.Allow && r.Major != nil && *r.Major == 195 && r.Minor != nil && *r.Minor < 254 {
			allowed = append(allowed, fmt.Sprint(*r.Minor))
		}
	}
	if want := []string{fmt.Sprint(gpu.Minor)}; !slices.Equal(allowed, want) {
		t.Errorf("cgroup allows GPU minors %v, want %v", allowed, want)
	}
}

// migState is a dgx-a100 whose GPU 1 is in MIG mode with two MIG devices.
const migState = `
machine: dgx-a100
gpus: 4
devices:
- index: 1
  migEnabled: true
  mig: [{profile: 3g.40gb, start: 4}, {profile: 1g.10gb, start: 0}]
`

func TestInjectMIGDevice(t *testing.T) {
	requireRoot(t)
	node := newSimNode(t, migState)
	ctx, g := simGenerator(t, node)
	if err := g.WriteNodeSpec(ctx, node.inv); err != nil {
		t.Fatal(err)
	}
	parent := node.inv.GPUs[1]
	if len(parent.MigDevices) != 2 {
		t.Fatalf("GPU 1 has %d MIG devices, want 2", len(parent.MigDevices))
	}
	spec := readSpec(t, g.NodeSpecPath())
	if len(spec.Devices) != 4+2 {
		t.Errorf("%d devices, want 4 GPUs and 2 MIG devices", len(spec.Devices))
	}
	minors := g.readMigMinors()
	if minors.err != nil {
		t.Fatal(minors.err)
	}
	for _, mig := range parent.MigDevices {
		t.Run(mig.Profile, func(t *testing.T) {
			paths := ociDevicePaths(injected(t, g.opts.Root, g.DeviceName(mig.UUID)))
			if got, want := gpuNodes(paths), []string{fmt.Sprintf("/dev/nvidia%d", parent.Minor)}; !slices.Equal(got, want) {
				t.Errorf("container GPU nodes %v, want the parent's %v", got, want)
			}
			for _, c := range []string{
				fmt.Sprintf("gpu%d/gi%d/access", parent.Minor, mig.GIID),
				fmt.Sprintf("gpu%d/gi%d/ci%d/access", parent.Minor, mig.GIID, mig.CIID),
			} {
				want := fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", minors.caps[c])
				if !slices.Contains(paths, want) {
					t.Errorf("container nodes %v lack %s (%s)", paths, want, c)
				}
			}
			if n := len(slices.DeleteFunc(slices.Clone(paths), func(p string) bool { return !strings.HasPrefix(p, "/dev/nvidia-caps/") })); n != 2 {
				t.Errorf("container has %d MIG capability nodes, want 2: %v", n, paths)
			}
		})
	}
	// The other GPUs are still whole GPUs with their own node only.
	paths := ociDevicePaths(injected(t, g.opts.Root, g.DeviceName(node.inv.GPUs[2].UUID)))
	if got := gpuNodes(paths); !slices.Equal(got, []string{"/dev/nvidia2"}) {
		t.Errorf("GPU 2: container GPU nodes %v", got)
	}
	if slices.ContainsFunc(paths, func(p string) bool { return strings.HasPrefix(p, "/dev/nvidia-caps/") }) {
		t.Errorf("GPU 2: container has MIG capability nodes: %v", paths)
	}
}

// TestHostRootsInSpecs runs the generator as gpulet runs in its container,
// with the host's driver root mounted elsewhere: the specs must name the
// host's paths, and the cached edits must stay as gpulet sees them.
func TestHostRootsInSpecs(t *testing.T) {
	requireRoot(t)
	node := newSimNode(t, "machine: dgx-h100\ngpus: 2")
	ctx, g := newTestGenerator(t, Options{DriverRoot: node.driverRoot, NVML: node.adapter, HostDriverRoot: "/"})
	for i := 0; i < 2; i++ { // twice: the cached edits are not rewritten in place
		if err := g.WriteNodeSpec(ctx, node.inv); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(g.NodeSpecPath())
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(data), node.driverRoot) {
			t.Fatalf("pass %d: the spec names the container's driver root %s:\n%s", i, node.driverRoot, data)
		}
		if !strings.Contains(string(data), "hostPath: /usr/lib") && !strings.Contains(string(data), "hostPath: /lib") {
			t.Fatalf("pass %d: no library mount under the host's root:\n%s", i, data)
		}
	}
}
