package cdi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	"tags.cncf.io/container-device-interface/specs-go"
)

// logText is what the test's Generator logged so far.
func logText(ctx context.Context) string {
	return klog.FromContext(ctx).GetSink().(ktesting.Underlier).GetBuffer().String()
}

const fallbackWarning = "Warning: CDI edits built by gpulet instead of nvcdi"

// plainDeviceFiles turns the character devices of a driver root into
// plain files, as the simulator writes them where mknod is not permitted.
func plainDeviceFiles(t *testing.T, root string) {
	t.Helper()
	err := filepath.WalkDir(filepath.Join(root, "dev"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeCharDevice == 0 {
			return err
		}
		if err := os.Remove(p); err != nil {
			return err
		}
		return os.WriteFile(p, nil, 0o666)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestFallback(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup returns the generator's options for a simulated node.
		setup      func(t *testing.T, n *simNode) Options
		wantReason string
		// wantUVM is whether nvidia-uvm is in the common edits.
		wantUVM bool
	}{
		{
			name:       "no NVML",
			setup:      func(t *testing.T, n *simNode) Options { return Options{DriverRoot: n.driverRoot} },
			wantReason: "no NVML library",
			wantUVM:    os.Geteuid() == 0, // the mock root's nodes are char devices only as root
		},
		{
			name: "plain files for device nodes",
			setup: func(t *testing.T, n *simNode) Options {
				plainDeviceFiles(t, n.driverRoot)
				return Options{DriverRoot: n.driverRoot, NVML: n.adapter}
			},
			wantReason: "no /dev/nvidiactl character device",
		},
		{
			name: "missing driver root",
			setup: func(t *testing.T, n *simNode) Options {
				return Options{DriverRoot: filepath.Join(t.TempDir(), "nothing-here"), NVML: n.adapter}
			},
			wantReason: "nvcdi",
			wantUVM:    true, // named, for the runtime to resolve
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := newSimNode(t, "machine: dgx-h100\ngpus: 2")
			ctx, g := newTestGenerator(t, tc.setup(t, node))
			for range 2 {
				if err := g.WriteNodeSpec(ctx, node.inv); err != nil {
					t.Fatal(err)
				}
			}
			st := g.Status()
			if st.Mode != ModeFallback || !strings.Contains(st.Reason, tc.wantReason) || st.Devices != 2 {
				t.Errorf("status %+v, want mode %q with a reason containing %q, 2 devices", st, ModeFallback, tc.wantReason)
			}
			if n := strings.Count(logText(ctx), fallbackWarning); n != 1 {
				t.Errorf("fallback warning logged %d times, want once", n)
			}
			spec := readSpec(t, g.NodeSpecPath())
			common := nodePaths(spec.ContainerEdits.DeviceNodes)
			if !slices.Contains(common, "/dev/nvidiactl") || slices.Contains(common, "/dev/nvidia-uvm") != tc.wantUVM {
				t.Errorf("common nodes %v (want nvidia-uvm: %v)", common, tc.wantUVM)
			}
			if len(spec.ContainerEdits.Mounts) > 0 || len(spec.ContainerEdits.Hooks) > 0 {
				t.Errorf("fallback common edits have mounts or hooks: %+v", spec.ContainerEdits)
			}
			for i, d := range spec.Devices {
				gpu := node.inv.GPUs[i]
				want := specs.ContainerEdits{
					Env: []string{"NVIDIA_VISIBLE_DEVICES=" + gpu.UUID},
					DeviceNodes: []*specs.DeviceNode{{
						Path: fmt.Sprintf("/dev/nvidia%d", gpu.Minor), HostPath: filepath.Join(g.opts.DevRoot, fmt.Sprintf("dev/nvidia%d", gpu.Minor)),
						Type: "c", Major: 195, Minor: int64(gpu.Minor),
					}},
				}
				if got := d.ContainerEdits; !slices.Equal(got.Env, want.Env) || len(got.DeviceNodes) != 1 || *got.DeviceNodes[0] != *want.DeviceNodes[0] {
					t.Errorf("device %s: edits %+v %+v, want %+v %+v", d.Name, got, got.DeviceNodes, want, want.DeviceNodes[0])
				}
			}
		})
	}
}

// TestFallbackRecovers checks that nvcdi is tried again once the driver
// root appears (a driver container that starts after gpulet).
func TestFallbackRecovers(t *testing.T) {
	requireRoot(t)
	node := newSimNode(t, "machine: dgx-h100\ngpus: 2")
	late := filepath.Join(t.TempDir(), "late-driver-root")
	ctx, g := newTestGenerator(t, Options{DriverRoot: late, NVML: node.adapter})
	if err := g.Update(ctx, node.inv); err != nil {
		t.Fatal(err)
	}
	if g.Mode() != ModeFallback {
		t.Fatalf("mode %q without a driver root", g.Mode())
	}
	if err := os.Rename(node.driverRoot, late); err != nil {
		t.Fatal(err)
	}
	if err := g.WriteNodeSpec(ctx, node.inv); err != nil {
		t.Fatal(err)
	}
	if g.Mode() != ModeNVCDI {
		t.Fatalf("mode %q once the driver root is there (%s)", g.Mode(), g.Status().Reason)
	}
	for _, d := range readSpec(t, g.NodeSpecPath()).Devices {
		if slices.ContainsFunc(d.ContainerEdits.Env, func(e string) bool { return strings.HasPrefix(e, "NVIDIA_VISIBLE_DEVICES=") }) {
			t.Errorf("device %s keeps its fallback env %v", d.Name, d.ContainerEdits.Env)
		}
	}
}

func TestFallbackNode(t *testing.T) {
	dev := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dev, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"dev/nvidia-uvm-tools", "dev/nvidia3"} {
		if err := os.WriteFile(filepath.Join(dev, f), nil, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	canMknod := unix.Mknod(filepath.Join(dev, "dev/nvidia-uvm"), unix.S_IFCHR|0o666, int(unix.Mkdev(510, 0))) == nil
	g := &Generator{opts: Options{DevRoot: dev}}
	for _, tc := range []struct {
		name, path string
		want       *specs.DeviceNode // nil: left out
		needMknod  bool
	}{
		{name: "char device", path: "/dev/nvidia-uvm", want: &specs.DeviceNode{Type: "c", Major: 510}, needMknod: true},
		{name: "plain file, unknown numbers", path: "/dev/nvidia-uvm-tools"},
		{name: "plain file, GPU node", path: "/dev/nvidia3", want: &specs.DeviceNode{Type: "c", Major: 195, Minor: 3}},
		{name: "missing, control node", path: "/dev/nvidiactl", want: &specs.DeviceNode{Type: "c", Major: 195, Minor: 255}},
		{name: "missing, unknown numbers", path: "/dev/nvidia-caps/nvidia-cap21", want: &specs.DeviceNode{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.needMknod && !canMknod {
				t.Skip("skipping: mknod not permitted")
			}
			got, ok := g.fallbackNode(tc.path)
			if ok != (tc.want != nil) {
				t.Fatalf("fallbackNode(%s) = %+v, %v", tc.path, got, ok)
			}
			if !ok {
				return
			}
			want := *tc.want
			want.Path, want.HostPath = tc.path, filepath.Join(dev, tc.path)
			if *got != want {
				t.Errorf("got %+v, want %+v", *got, want)
			}
		})
	}
}

func TestParseMigMinors(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     map[string]int
		err      string
	}{
		{name: "driver format", in: "config 1\nmonitor 2\ngpu0/gi0/access 3\ngpu0/gi0/ci0/access 4\n", want: map[string]int{"config": 1, "monitor": 2, "gpu0/gi0/access": 3, "gpu0/gi0/ci0/access": 4}},
		{name: "blank lines", in: "\n\ngpu1/gi2/access 30\n\n", want: map[string]int{"gpu1/gi2/access": 30}},
		{name: "three fields", in: "gpu0/gi0/access 3 4\n", err: "line 1"},
		{name: "not a number", in: "config 1\ngpu0/gi0/access x\n", err: "line 2"},
		{name: "negative", in: "gpu0/gi0/access -3\n", err: "line 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMigMinors([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestMIGWithoutMinors(t *testing.T) {
	node := newSimNode(t, migState)
	if err := os.Remove(filepath.Join(node.driverRoot, migMinorsFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/" + migMinorsFile); err == nil {
		t.Skip("skipping: this host has NVIDIA MIG minors of its own")
	}
	ctx, g := newTestGenerator(t, Options{DriverRoot: node.driverRoot})
	err := g.WriteNodeSpec(ctx, node.inv)
	if err == nil || !strings.Contains(err.Error(), "no MIG capability minors") {
		t.Fatalf("error %v, want one about MIG minors", err)
	}
	for _, mig := range node.inv.GPUs[1].MigDevices {
		if !strings.Contains(err.Error(), mig.UUID) {
			t.Errorf("error %q does not name MIG device %s", err, mig.UUID)
		}
	}
	// The whole GPUs are still written.
	if n := len(readSpec(t, g.NodeSpecPath()).Devices); n != 4 {
		t.Errorf("%d devices written, want the 4 GPUs", n)
	}
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{name: "no root", opts: Options{}, want: "no CDI root"},
		{name: "relative root", opts: Options{Root: "cdi"}, want: `CDI root "cdi"`},
		{name: "relative driver root", opts: Options{Root: "/tmp", DriverRoot: "run/nvidia"}, want: `driver root "run/nvidia"`},
		{name: "bad vendor", opts: Options{Root: "/tmp", Vendor: "gpulet/dev"}, want: `vendor "gpulet/dev"`},
		{name: "bad class", opts: Options{Root: "/tmp", Class: "g p u"}, want: `class "g p u"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(context.Background(), tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestRemovesTempFiles checks that New clears temporary files a crash
// left, and only those.
func TestRemovesTempFiles(t *testing.T) {
	root := t.TempDir()
	keep := []string{"gpulet.dev-gpu.yaml", "other.yaml", ".other.dev-gpu.yaml.tmp-1"}
	for _, f := range append([]string{".gpulet.dev-gpu.yaml.tmp-123", ".gpulet.dev-claim_abc.yaml.tmp-9"}, keep...) {
		if err := os.WriteFile(filepath.Join(root, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	newTestGenerator(t, Options{Root: root})
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(sorted(got), sorted(keep)) {
		t.Errorf("files %v, want %v", got, keep)
	}
}

// TestInvalidSpecNotWritten checks that the CDI library's validation
// keeps an invalid spec from replacing a valid one.
func TestInvalidSpecNotWritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gpulet.dev-gpu.yaml")
	good := &specs.Spec{Kind: "gpulet.dev/gpu", Devices: []specs.Device{{Name: "a", ContainerEdits: specs.ContainerEdits{Env: []string{"A=1"}}}}}
	if err := writeSpec(path, good); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	bad := &specs.Spec{Kind: "gpulet.dev/gpu", Devices: []specs.Device{{Name: "a"}}} // no edits
	err := writeSpec(path, bad)
	if err == nil || !strings.Contains(err.Error(), "invalid") {
		t.Fatalf("error %v, want an invalid spec", err)
	}
	after, _ := os.ReadFile(path)
	if string(after) != string(before) {
		t.Error("an invalid spec replaced the valid one")
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("temporary file left: %v", entries)
	}
	if errors.Is(err, os.ErrNotExist) {
		t.Errorf("unexpected error %v", err)
	}
}
