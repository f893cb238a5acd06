package cdi

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const testClaimUID = "3f0e2c9a-51b4-4d7e-9a43-0c5e2b1d7f60"

func TestClaimSpecLifecycle(t *testing.T) {
	inv := fakeInventory(2)
	ctx, g := newTestGenerator(t, Options{DevRoot: t.TempDir()})
	if err := g.Update(ctx, inv); err != nil {
		t.Fatal(err)
	}
	gpu0, gpu1 := inv.GPUs[0], inv.GPUs[1]
	devices := []ClaimDevice{
		{Name: gpu0.Name, UUID: gpu0.UUID, Request: "gpus", Env: []string{"GPULET_SHARING=time-slicing"}},
		{Name: gpu1.Name, UUID: gpu1.UUID, Request: "gpus"},
	}
	for range 2 { // writing again replaces
		names, err := g.WriteClaimSpec(ctx, testClaimUID, devices)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"gpulet.dev/gpu=" + testClaimUID + "-" + gpu0.Name, "gpulet.dev/gpu=" + testClaimUID + "-" + gpu1.Name}
		if !slices.Equal(names, want) {
			t.Errorf("names %v, want %v", names, want)
		}
	}
	path, _ := g.ClaimSpecPath(testClaimUID)
	if filepath.Base(path) != "gpulet.dev-claim_"+testClaimUID+".json" {
		t.Errorf("claim spec path %s", path)
	}
	spec := readSpec(t, path)
	if len(spec.Devices) != 2 {
		t.Fatalf("%d devices", len(spec.Devices))
	}
	d0 := spec.Devices[0].ContainerEdits
	if got := gpuNodes(nodePaths(d0.DeviceNodes)); !slices.Equal(got, []string{"/dev/nvidia0"}) {
		t.Errorf("device 0 nodes %v", got)
	}
	wantEnv := []string{"NVIDIA_VISIBLE_DEVICES=" + gpu0.UUID + "," + gpu1.UUID, "GPULET_SHARING=time-slicing"}
	if !slices.Equal(d0.Env, wantEnv) {
		t.Errorf("device 0 env %v, want %v", d0.Env, wantEnv)
	}

	other := "0c1d2e3f-0000-4000-8000-000000000001"
	if _, err := g.WriteClaimSpec(ctx, other, devices[1:]); err != nil {
		t.Fatal(err)
	}
	// Files that are not claim specs of ours are not listed.
	for _, name := range []string{"gpulet.dev-gpu.yaml", "gpulet.dev-claim_BAD.yaml", "other.dev-claim_" + testClaimUID + ".yaml", "gpulet.dev-claim_x.txt"} {
		if err := os.WriteFile(filepath.Join(g.opts.Root, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	uids, err := g.ClaimSpecUIDs()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{other, testClaimUID}; !slices.Equal(uids, want) {
		t.Errorf("claim spec UIDs %v, want %v", uids, want)
	}
	for range 2 { // idempotent
		if err := g.RemoveClaimSpec(ctx, testClaimUID); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("claim spec still there: %v", err)
	}
	if uids, _ := g.ClaimSpecUIDs(); !slices.Equal(uids, []string{other}) {
		t.Errorf("claim spec UIDs after removal %v", uids)
	}
}

// TestClaimVisibleDevices checks that NVIDIA_VISIBLE_DEVICES lists the
// devices of one request only.
func TestClaimVisibleDevices(t *testing.T) {
	inv := fakeInventory(3)
	ctx, g := newTestGenerator(t, Options{DevRoot: t.TempDir()})
	if err := g.Update(ctx, inv); err != nil {
		t.Fatal(err)
	}
	a, b, c := inv.GPUs[0], inv.GPUs[1], inv.GPUs[2]
	if _, err := g.WriteClaimSpec(ctx, testClaimUID, []ClaimDevice{
		{Name: a.Name, UUID: a.UUID, Request: "train"},
		{Name: b.Name, UUID: b.UUID, Request: "serve"},
		{Name: c.Name, UUID: c.UUID, Request: "train"},
		{Name: c.Name + "-share", UUID: c.UUID, Request: "train"}, // one GPU shared twice
	}); err != nil {
		t.Fatal(err)
	}
	path, _ := g.ClaimSpecPath(testClaimUID)
	want := map[string]string{
		testClaimUID + "-" + a.Name:            a.UUID + "," + c.UUID,
		testClaimUID + "-" + b.Name:            b.UUID,
		testClaimUID + "-" + c.Name:            a.UUID + "," + c.UUID,
		testClaimUID + "-" + c.Name + "-share": a.UUID + "," + c.UUID,
	}
	for _, d := range readSpec(t, path).Devices {
		if got := d.ContainerEdits.Env; !slices.Equal(got, []string{"NVIDIA_VISIBLE_DEVICES=" + want[d.Name]}) {
			t.Errorf("%s: env %v, want NVIDIA_VISIBLE_DEVICES=%s", d.Name, got, want[d.Name])
		}
	}
}

func TestClaimSpecInjection(t *testing.T) {
	requireRoot(t)
	node := newSimNode(t, "dgx-h100")
	ctx, g := simGenerator(t, node)
	if err := g.WriteNodeSpec(ctx, node.inv); err != nil {
		t.Fatal(err)
	}
	gpu := node.inv.GPUs[5]
	names, err := g.WriteClaimSpec(ctx, testClaimUID, []ClaimDevice{{Name: gpu.Name, UUID: gpu.UUID}})
	if err != nil {
		t.Fatal(err)
	}
	spec := injected(t, g.opts.Root, names...)
	if got := gpuNodes(ociDevicePaths(spec)); !slices.Equal(got, []string{"/dev/nvidia5"}) {
		t.Errorf("container GPU nodes %v, want [/dev/nvidia5]", got)
	}
	// The device's variable comes after the common edits' "void".
	if !slices.Contains(spec.Process.Env, "NVIDIA_VISIBLE_DEVICES="+gpu.UUID) {
		t.Errorf("env %v lacks NVIDIA_VISIBLE_DEVICES=%s", spec.Process.Env, gpu.UUID)
	}
}

func TestClaimSpecErrors(t *testing.T) {
	inv := fakeInventory(1)
	ctx, g := newTestGenerator(t, Options{DevRoot: t.TempDir()})
	if err := g.Update(ctx, inv); err != nil {
		t.Fatal(err)
	}
	gpu := inv.GPUs[0]
	ok := ClaimDevice{Name: gpu.Name, UUID: gpu.UUID}
	with := func(f func(*ClaimDevice)) []ClaimDevice {
		d := ok
		f(&d)
		return []ClaimDevice{d}
	}
	for _, tc := range []struct {
		name    string
		uid     string
		devices []ClaimDevice
		want    string
		is      error
	}{
		{name: "unknown device", uid: testClaimUID, devices: with(func(d *ClaimDevice) { d.UUID = "GPU-nope" }), want: `"GPU-nope"`, is: ErrUnknownDevice},
		{name: "no devices", uid: testClaimUID, want: "0 devices"},
		{name: "too many devices", uid: testClaimUID, devices: slices.Repeat([]ClaimDevice{ok}, maxClaimDevices+1), want: "want 1 to"},
		{name: "bad uid", uid: "../etc", devices: with(func(*ClaimDevice) {}), want: `claim UID "../etc"`},
		{name: "name with slash", uid: testClaimUID, devices: with(func(d *ClaimDevice) { d.Name = "gpu/0" }), want: `device name "gpu/0"`},
		{name: "name too long", uid: testClaimUID, devices: with(func(d *ClaimDevice) { d.Name = strings.Repeat("a", 64) }), want: "DNS label"},
		{name: "name uppercase", uid: testClaimUID, devices: with(func(d *ClaimDevice) { d.Name = "GPU-0" }), want: `"GPU-0"`},
		{name: "name empty", uid: testClaimUID, devices: with(func(d *ClaimDevice) { d.Name = "" }), want: "DNS label"},
		{name: "no uuid", uid: testClaimUID, devices: with(func(d *ClaimDevice) { d.UUID = "" }), want: "no UUID"},
		{name: "duplicate name", uid: testClaimUID, devices: []ClaimDevice{ok, ok}, want: "appears twice"},
		{name: "env without =", uid: testClaimUID, devices: with(func(d *ClaimDevice) { d.Env = []string{"FOO"} }), want: `"FOO"`},
		{name: "env bad key", uid: testClaimUID, devices: with(func(d *ClaimDevice) { d.Env = []string{"A B=1"} }), want: `"A B=1"`},
		{name: "env key too long", uid: testClaimUID, devices: with(func(d *ClaimDevice) { d.Env = []string{strings.Repeat("K", maxEnvKeyLen+1) + "=1"} }), want: "want KEY=value"},
		{name: "env newline", uid: testClaimUID, devices: with(func(d *ClaimDevice) { d.Env = []string{"A=1\nB=2"} }), want: "control characters"},
		{name: "env NUL", uid: testClaimUID, devices: with(func(d *ClaimDevice) { d.Env = []string{"A=1\x00"} }), want: "control characters"},
		{name: "env overrides gpulet's", uid: testClaimUID, devices: with(func(d *ClaimDevice) { d.Env = []string{"NVIDIA_VISIBLE_DEVICES=all"} }), want: "gpulet's to set"},
		{name: "env too long", uid: testClaimUID, devices: with(func(d *ClaimDevice) { d.Env = []string{"A=" + strings.Repeat("x", maxEnvLen)} }), want: "longer than"},
		{name: "too many env", uid: testClaimUID, devices: with(func(d *ClaimDevice) { d.Env = slices.Repeat([]string{"A=1"}, maxEnvCount+1) }), want: "more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			names, err := g.WriteClaimSpec(ctx, tc.uid, tc.devices)
			if err == nil {
				t.Fatalf("no error, names %v", names)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %v", err, tc.is)
			}
			if uids, _ := g.ClaimSpecUIDs(); len(uids) > 0 {
				t.Errorf("spec written for %v", uids)
			}
		})
	}
}

// claimUIDCases are claim UIDs an API server, or someone posing as one,
// might send.
var claimUIDCases = []struct {
	name, uid string
	ok        bool
}{
	{"kubernetes uid", "3f0e2c9a-51b4-4d7e-9a43-0c5e2b1d7f60", true},
	{"short token", "claim-1", true},
	{"single char", "a", true},
	{"64 chars", strings.Repeat("a", 64), true},
	{"65 chars", strings.Repeat("a", 65), false},
	{"very long", strings.Repeat("a", 1<<20), false},
	{"empty", "", false},
	{"dot", ".", false},
	{"dotdot", "..", false},
	{"parent", "../x", false},
	{"deep parent", "../../../../etc/cron.d/x", false},
	{"absolute", "/etc/passwd", false},
	{"slash inside", "a/b", false},
	{"backslash", `a\b`, false},
	{"inner dotdot", "a..b", false},
	{"NUL", "a\x00b", false},
	{"newline", "a\nb", false},
	{"space", "a b", false},
	{"uppercase", "ABC", false},
	{"leading dash", "-a", false},
	{"trailing dash", "a-", false},
	{"underscore", "a_b", false},
	{"glob", "a*", false},
	{"percent-encoded slash", "a%2fb", false},
	{"cyrillic a", "\u0430bc", false},
	{"fullwidth solidus", "a\uff0fb", false},
	{"division slash", "a\u2215b", false},
	{"zero-width space", "a\u200bb", false},
	{"right-to-left override", "a\u202eb", false},
	{"invalid utf-8", "a\xffb", false},
}

func TestValidateClaimUID(t *testing.T) {
	for _, tc := range claimUIDCases {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateClaimUID(tc.uid)
			if (err == nil) != tc.ok {
				t.Fatalf("ValidateClaimUID(%.40q) = %v, want ok=%v", tc.uid, err, tc.ok)
			}
			if err != nil && len(err.Error()) > 300 {
				t.Errorf("error is %d bytes long", len(err.Error()))
			}
		})
	}
}

// TestClaimSpecPathSafety writes and removes claim specs for every case
// and checks that nothing outside the CDI root is touched.
func TestClaimSpecPathSafety(t *testing.T) {
	inv := fakeInventory(1)
	parent := t.TempDir()
	root := filepath.Join(parent, "cdi")
	ctx, g := newTestGenerator(t, Options{Root: root, DevRoot: t.TempDir()})
	if err := g.Update(ctx, inv); err != nil {
		t.Fatal(err)
	}
	// A file next to the root that "../x" style UIDs could reach.
	bait := filepath.Join(parent, "x.yaml")
	if err := os.WriteFile(bait, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	gpu := inv.GPUs[0]
	for _, tc := range claimUIDCases {
		t.Run(tc.name, func(t *testing.T) {
			_, werr := g.WriteClaimSpec(ctx, tc.uid, []ClaimDevice{{Name: gpu.Name, UUID: gpu.UUID}})
			rerr := g.RemoveClaimSpec(ctx, tc.uid)
			if tc.ok != (werr == nil) || tc.ok != (rerr == nil) {
				t.Fatalf("write: %v, remove: %v; want ok=%v", werr, rerr, tc.ok)
			}
			if !tc.ok && !strings.Contains(werr.Error(), "claim UID") {
				t.Errorf("error %q does not name the claim UID", werr)
			}
		})
	}
	entries, _ := os.ReadDir(parent)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"cdi", "x.yaml"}) {
		t.Errorf("files next to the CDI root: %v", names)
	}
	if uids, _ := g.ClaimSpecUIDs(); len(uids) > 0 {
		t.Errorf("claim specs left: %v", uids)
	}
}

// FuzzClaimSpecPath checks that no claim UID yields a path outside the
// CDI root, and that every accepted one reads back from its file name.
func FuzzClaimSpecPath(f *testing.F) {
	for _, tc := range claimUIDCases {
		if len(tc.uid) < 1000 {
			f.Add(tc.uid)
		}
	}
	const root, prefix = "/var/run/cdi", "gpulet.dev-claim_"
	f.Fuzz(func(t *testing.T, uid string) {
		p, err := claimSpecPath(root, prefix, uid)
		if err != nil {
			if p != "" {
				t.Fatalf("error %v with path %q", err, p)
			}
			return
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || !filepath.IsLocal(rel) || filepath.Dir(p) != root || strings.ContainsAny(rel, "/\\\x00") {
			t.Fatalf("uid %q gives %q, not a file directly in %s", uid, p, root)
		}
		back, ok := strings.CutPrefix(filepath.Base(p), prefix)
		if back, _ = strings.CutSuffix(back, claimSpecExt); !ok || back != uid {
			t.Fatalf("uid %q gives file %q, which reads back as %q", uid, filepath.Base(p), back)
		}
	})
}
