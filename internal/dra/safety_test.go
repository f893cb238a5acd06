package dra

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	gpuv1alpha1 "github.com/gpulet/gpulet/api/gpu/v1alpha1"
	"github.com/gpulet/gpulet/internal/inventory"
)

// TestPathSafety feeds claims with hostile UIDs, names, namespaces, device
// names and opaque parameters through prepare and unprepare and checks
// that gpulet wrote nothing outside its CDI and state directories, and
// nothing but claim specs and the checkpoint inside them.
func TestPathSafety(t *testing.T) {
	b := newTestBed(t, stateH100, nil)
	gpu := b.gpu(0).Name
	hostileUIDs := []string{
		"../../../../tmp/gpulet-escape",
		"../state/ledger.json",
		"a/b",
		"..",
		".",
		"",
		"/etc/passwd",
		"x\x00y",
		"UPPER-case",
		"white space",
		strings.Repeat("a", 300),
		"0b7c9a52-7a4e-4f0e-9d1a-6c1e9f9c0a01/../../x",
		"-leading-dash",
		"%2e%2e%2fescape",
	}
	for _, uid := range hostileUIDs {
		c := allocatedClaim(uid, "evil", []result{{request: "gpu", device: gpu}})
		if r := b.prepare(c)[c.UID]; r.Err == nil {
			t.Errorf("claim UID %q was prepared", uid)
		}
		if err := b.unprepare(c)[c.UID]; err != nil {
			t.Errorf("unprepare of claim UID %q: %v", uid, err)
		}
	}

	// Hostile names and namespaces end up only in the ledger's JSON.
	for i, name := range []string{"../../../../tmp/gpulet-escape", "a/b", "..", "x\x00y", strings.Repeat("n", 1000)} {
		uid := types.UID("5afe0000-0000-0000-0000-00000000000" + string(rune('0'+i)))
		c := allocatedClaim(string(uid), name, []result{{request: "gpu", device: gpu}})
		c.Namespace = name
		r := b.prepare(c)[uid]
		if r.Err != nil {
			t.Fatalf("claim named %q: %v", name, r.Err)
		}
		if err := b.unprepare(c)[uid]; err != nil {
			t.Fatalf("unprepare claim named %q: %v", name, err)
		}
	}

	// Hostile device names, requests and parameters are refused.
	for _, tc := range []struct{ device, request, params string }{
		{device: "../../../../tmp/gpulet-escape"},
		{device: gpu + "/../../x"},
		{device: gpu, request: "../../../../tmp/gpulet-escape"},
		{device: gpu, params: `{"apiVersion":"gpu.gpulet.dev/v1alpha1","kind":"../../../../tmp/gpulet-escape"}`},
		{device: gpu, params: `{"apiVersion":"../../x","kind":"GpuConfig"}`},
		{device: gpu, params: `{"apiVersion":"gpu.gpulet.dev/v1alpha1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"../../../../tmp/gpulet-escape"}}}`},
		{device: gpu, params: "\x00\x00\x00"},
		{device: gpu, params: strings.Repeat("[", 100000)},
	} {
		req := tc.request
		if req == "" {
			req = "gpu"
		}
		var cfgs []config
		if tc.params != "" {
			cfgs = append(cfgs, config{params: tc.params})
		}
		c := allocatedClaim(uidC, "evil", []result{{request: req, device: tc.device}}, cfgs...)
		r := b.prepare(c)[c.UID]
		if r.Err == nil && tc.request == "" {
			t.Errorf("device %q with parameters %.60q was prepared", tc.device, tc.params)
		}
		if err := b.unprepare(c)[c.UID]; err != nil {
			t.Errorf("unprepare: %v", err)
		}
	}

	if _, err := os.Stat("/tmp/gpulet-escape"); err == nil {
		t.Error("/tmp/gpulet-escape exists")
	}
	// Everything under the bed's directory is the driver root written by
	// the test, or gpulet's: claim specs and the checkpoint.
	err := filepath.WalkDir(b.dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(b.dir, p)
		switch {
		case strings.HasPrefix(rel, "driver-root/"):
		case filepath.Dir(rel) == "state" && strings.HasPrefix(filepath.Base(rel), "ledger.json"):
		case filepath.Dir(rel) == "cdi" && strings.HasPrefix(filepath.Base(rel), "gpulet.dev-claim_"):
			t.Errorf("claim spec left behind: %s", rel)
		default:
			t.Errorf("unexpected file %s", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// FuzzOpaqueConfig drives the opaque configuration path prepare uses
// (decode, choose per device, normalize, validate, container environment)
// with arbitrary parameters and request names. It must never panic; what
// it accepts must be valid and normalized, and the environment it gives a
// container must be plain KEY=value lines.
func FuzzOpaqueConfig(f *testing.F) {
	for _, seed := range []string{
		`{"apiVersion":"gpu.gpulet.dev/v1alpha1","kind":"GpuConfig"}`,
		`{"apiVersion":"gpu.gpulet.dev/v1alpha1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Long"}}}`,
		`{"apiVersion":"gpu.gpulet.dev/v1alpha1","kind":"MigDeviceConfig","sharing":{"strategy":"Exclusive"}}`,
		`{"apiVersion":"gpu.gpulet.dev/v1alpha1","kind":"MigDeviceConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Short"}}}`,
		`{"apiVersion":"gpu.gpulet.dev/v1alpha1","kind":"GpuConfig","sharing":{"strategy":"../../x"}}`,
		`{"kind":"GpuConfig"}`,
		`null`,
		"",
	} {
		f.Add([]byte(seed), "gpu", false)
	}
	f.Add([]byte(`{"apiVersion":"gpu.gpulet.dev/v1alpha1","kind":"GpuConfig"}`), "gpu/sub", true)
	g := &inventory.GPU{Name: "gpu-000000000000"}
	g.UUID = "GPU-00000000-0000-0000-0000-000000000000"
	g.MemoryBytes = 80 << 30
	devices := []*device{
		{name: g.Name, kind: KindGPU, gpu: g},
		{name: g.Name + sharedSuffix, kind: KindShared, gpu: g},
		{name: g.Name + "-mig-1g10gb-0", kind: KindMIG, gpu: g, placement: &inventory.MigPlacement{Name: g.Name + "-mig-1g10gb-0"}},
	}
	f.Fuzz(func(t *testing.T, params []byte, request string, named bool) {
		c := allocatedClaim(uidA, "fuzz", nil, config{params: string(params)})
		if named {
			c.Status.Allocation.Devices.Config[0].Requests = []string{request}
		}
		configs, err := claimConfigs(c, DefaultDriverName)
		if err != nil {
			if !strings.Contains(err.Error(), "spec.devices.config[0].opaque.parameters") {
				t.Fatalf("error does not name the field: %v", err)
			}
			return
		}
		for _, d := range devices {
			s, err := sharingFor(d, request, configs)
			if err != nil {
				continue
			}
			if s == nil || s.Strategy == "" {
				t.Fatalf("%s: accepted sharing not normalized: %+v", d.name, s)
			}
			if s.Strategy == gpuv1alpha1.TimeSlicingStrategy {
				if _, ok := s.TimeSlicingConfig.Interval.Level(); !ok {
					t.Fatalf("%s: accepted an unknown interval %q", d.name, s.TimeSlicingConfig.Interval)
				}
			}
			for _, e := range deviceEnv(preparedDevice{Device: d.name, Kind: d.kind, Sharing: s}) {
				k, v, ok := strings.Cut(e, "=")
				if !ok || k == "" || strings.ContainsAny(v, "\x00\n\r/") {
					t.Fatalf("%s: environment %q", d.name, e)
				}
			}
		}
	})
}
