package v1

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

func TestParseNVIDIAFixtures(t *testing.T) {
	tests := []struct {
		name  string
		file  string
		check func(t *testing.T, c *Config)
		// wantWarnings are substrings, one per expected warning, in order.
		wantWarnings []string
	}{
		{
			name: "README time-slicing example",
			file: "nvidia-time-slicing.yaml",
			check: func(t *testing.T, c *Config) {
				got, ok := c.Sharing.TimeSlicing.ReplicasFor("nvidia.com/gpu")
				want := SharedResource{Name: "nvidia.com/gpu", Replicas: 10}
				if !ok || got != want {
					t.Errorf("ReplicasFor(nvidia.com/gpu) = %+v, %v; want %+v, true", got, ok, want)
				}
			},
		},
		{
			name: "time-slicing ConfigMap payload with renameByDefault",
			file: "nvidia-time-slicing-configmap.yaml",
			check: func(t *testing.T, c *Config) {
				got, ok := c.Sharing.TimeSlicing.ReplicasFor("nvidia.com/gpu")
				want := SharedResource{Name: "nvidia.com/gpu.shared", Replicas: 4, FailRequestsGreaterThanOne: true}
				if !ok || got != want {
					t.Errorf("ReplicasFor(nvidia.com/gpu) = %+v, %v; want %+v, true", got, ok, want)
				}
				if got := *c.Flags.NvidiaDriverRoot; got != "/run/nvidia/driver" {
					t.Errorf("nvidiaDriverRoot = %q", got)
				}
				if got := *c.Flags.NvidiaDevRoot; got != "/run/nvidia/driver" {
					t.Errorf("nvidiaDevRoot = %q, want the driver root", got)
				}
			},
			wantWarnings: []string{`flags.plugin.deviceListStrategy: "envvar" is ignored`},
		},
		{
			name: "README MIG mixed example with per-profile time-slicing",
			file: "nvidia-mig-mixed.yaml",
			check: func(t *testing.T, c *Config) {
				if got := *c.Flags.MigStrategy; got != MigStrategyMixed {
					t.Errorf("migStrategy = %q, want mixed", got)
				}
				if got := len(c.Sharing.TimeSlicing.Resources); got != 5 {
					t.Errorf("%d time-sliced resources, want 5", got)
				}
				got, ok := c.Sharing.TimeSlicing.ReplicasFor("nvidia.com/mig-3g.20gb")
				if !ok || got.Replicas != 3 || got.Name != "nvidia.com/mig-3g.20gb" {
					t.Errorf("ReplicasFor(mig-3g.20gb) = %+v, %v", got, ok)
				}
				if _, ok := c.Sharing.TimeSlicing.ReplicasFor("nvidia.com/mig-1g.10gb"); ok {
					t.Errorf("mig-1g.10gb is not listed but ReplicasFor says it is replicated")
				}
			},
			wantWarnings: []string{`flags.plugin.deviceListStrategy: "envvar" is ignored`},
		},
		{
			name: "every NVIDIA field",
			file: "nvidia-all-fields.yaml",
			check: func(t *testing.T, c *Config) {
				f := c.Flags
				if *f.MigStrategy != MigStrategySingle || *f.FailOnInitError || *f.MpsRoot != "/run/nvidia/mps" ||
					*f.NvidiaDevRoot != "/" || !*f.GDRCopyEnabled || *f.DeviceDiscoveryStrategy != "auto" {
					t.Errorf("flags not read as written: %+v", f)
				}
				p := f.Plugin
				wantStrategies := DeviceListStrategies{"envvar", "volume-mounts", "cdi-annotations", "cdi-cri"}
				if !reflect.DeepEqual(p.DeviceListStrategy, wantStrategies) || *p.SharedDevicesAllocationPolicy != "packed" ||
					*p.NvidiaCTKPath != "/usr/local/nvidia/toolkit/nvidia-ctk" {
					t.Errorf("plugin flags not read as written: %+v", p)
				}
				if string(f.GFD.SleepInterval) != `"60s"` || *f.GFD.MachineTypeFile != "/sys/class/dmi/id/product_name" {
					t.Errorf("gfd flags not read as written: %+v", f.GFD)
				}
				if len(c.Resources.GPUs) != 1 || c.Resources.MIGs[0].Name != "mig-small" {
					t.Errorf("resources not read as written: %+v", c.Resources)
				}
				devs := c.Sharing.TimeSlicing.Resources[1].Devices.List
				if len(devs) != 6 || devs[0] != "0" || devs[2] != "0:1" {
					t.Errorf("devices list = %q", devs)
				}
				if got := c.Sharing.TimeSlicing.Resources[2].Devices.Count; got != 2 {
					t.Errorf("devices count = %d, want 2", got)
				}
				if c.Sharing.MPS == nil || c.Sharing.MPS.Resources[0].Replicas != 4 {
					t.Errorf("mps not read as written: %+v", c.Sharing.MPS)
				}
				if c.Imex == nil || !c.Imex.Required || len(c.Imex.ChannelIDs) != 1 {
					t.Errorf("imex not read as written: %+v", c.Imex)
				}
				got, _ := c.Sharing.TimeSlicing.ReplicasFor("gpu")
				if got.Name != "nvidia.com/gpu-sliced" {
					t.Errorf("renamed gpu advertised as %q", got.Name)
				}
			},
			wantWarnings: []string{
				"flags.mpsRoot: MPS is not implemented by gpulet, ignored",
				"flags.gdrcopyEnabled: GDRCopy is not implemented",
				"flags.gdsEnabled: GPUDirect Storage is not implemented",
				"flags.mofedEnabled: MOFED is not implemented",
				"flags.useNodeFeatureAPI: GPU feature discovery is not implemented",
				"flags.gfd: GPU feature discovery is not implemented",
				"flags.plugin.passDeviceSpecs: passing device specs is not implemented",
				`flags.plugin.deviceListStrategy: "envvar" is ignored`,
				`flags.plugin.deviceListStrategy: "volume-mounts" is ignored`,
				`flags.plugin.deviceListStrategy: "cdi-annotations" is ignored`,
				`flags.plugin.deviceIDStrategy: "index" is not implemented`,
				"flags.plugin.cdiAnnotationPrefix: the cdi-annotations strategy is not implemented",
				"flags.plugin.sharedDevicesAllocationPolicy: not implemented",
				"resources: renaming resources by pattern is not implemented",
				"sharing.timeSlicing.resources[1].devices: selecting devices is not implemented",
				"sharing.timeSlicing.resources[2].devices: selecting devices is not implemented",
				"sharing.mps: not implemented by gpulet, ignored",
				"imex: IMEX channel injection is not implemented",
			},
		},
		{
			name: "gpulet example",
			file: "gpulet.yaml",
			check: func(t *testing.T, c *Config) {
				g := c.Gpulet
				if !g.DRA.Enabled || !g.DRA.Sharing.ConsumableCapacity.Enabled || g.Metrics.Idle.EventAfter.Duration != 30*time.Minute {
					t.Errorf("gpulet section not read as written: %+v", g)
				}
				got, _ := c.Sharing.TimeSlicing.ReplicasFor("nvidia.com/gpu")
				want := SharedResource{Name: "nvidia.com/gpu.shared", Replicas: 4, FailRequestsGreaterThanOne: true}
				if got != want {
					t.Errorf("ReplicasFor(nvidia.com/gpu) = %+v, want %+v", got, want)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join("testdata", tt.file)
			c, warnings, err := Load(path)
			if err != nil {
				t.Fatalf("Load(%s): %v", path, err)
			}
			tt.check(t, c)
			checkWarnings(t, warnings, path, tt.wantWarnings)
		})
	}
}

// checkWarnings checks that got has one warning per want, in order, each
// starting with source and containing the wanted text.
func checkWarnings(t *testing.T, got []string, source string, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("got %d warnings, want %d:\n  got:  %q\n  want: %q", len(got), len(want), got, want)
		return
	}
	for i := range want {
		if !strings.HasPrefix(got[i], source+": ") || !strings.Contains(got[i], want[i]) {
			t.Errorf("warning %d = %q, want %q from %s", i, got[i], want[i], source)
		}
	}
}

func TestDefaults(t *testing.T) {
	c := Default()
	checks := []struct {
		name      string
		got, want any
	}{
		{"version", c.Version, "v1"},
		{"flags.migStrategy", *c.Flags.MigStrategy, MigStrategyNone},
		{"flags.failOnInitError", *c.Flags.FailOnInitError, true},
		{"flags.nvidiaDriverRoot", *c.Flags.NvidiaDriverRoot, "/"},
		{"flags.nvidiaDevRoot", *c.Flags.NvidiaDevRoot, "/"},
		{"flags.plugin.deviceIDStrategy", *c.Flags.Plugin.DeviceIDStrategy, DeviceIDStrategyUUID},
		{"flags.plugin.nvidiaCTKPath", *c.Flags.Plugin.NvidiaCTKPath, "/usr/bin/nvidia-ctk"},
		{"flags.plugin.containerDriverRoot", *c.Flags.Plugin.ContainerDriverRoot, "/driver-root"},
		{"flags.plugin.deviceListStrategy", c.Flags.Plugin.DeviceListStrategy, DeviceListStrategies(nil)},
		{"sharing.timeSlicing", c.Sharing.TimeSlicing, (*ReplicatedResources)(nil)},
		{"gpulet.deviceListStrategy", c.Gpulet.DeviceListStrategy, DeviceListStrategyCDICRI},
		{"gpulet.health.disabled", c.Gpulet.Health.Disabled, false},
		{"gpulet.health.ignoredXids", c.Gpulet.Health.IgnoredXIDs, []uint64{13, 31, 43, 45, 68, 109}},
		{"gpulet.health.recoveryQuietPeriod", c.Gpulet.Health.RecoveryQuietPeriod.Duration, 5 * time.Minute},
		{"gpulet.devicePlugin.enabled", *c.Gpulet.DevicePlugin.Enabled, true},
		{"gpulet.dra.enabled", c.Gpulet.DRA.Enabled, false},
		{"gpulet.dra.driverName", c.Gpulet.DRA.DriverName, "gpu.gpulet.dev"},
		{"gpulet.dra.sharing.consumableCapacity.enabled", c.Gpulet.DRA.Sharing.ConsumableCapacity.Enabled, false},
		{"gpulet.metrics.sampleInterval", c.Gpulet.Metrics.SampleInterval.Duration, time.Second},
		{"gpulet.metrics.idle.utilizationThreshold", *c.Gpulet.Metrics.Idle.UtilizationThreshold, 0.05},
		{"gpulet.metrics.idle.eventAfter", c.Gpulet.Metrics.Idle.EventAfter.Duration, time.Duration(0)},
	}
	for _, tt := range checks {
		t.Run(tt.name, func(t *testing.T) {
			if !reflect.DeepEqual(tt.got, tt.want) {
				t.Errorf("default %s = %#v, want %#v", tt.name, tt.got, tt.want)
			}
		})
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Default().Validate() = %v", err)
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("Default().Warnings() = %q, want none", w)
	}
}

func TestEmptyInputGivesDefaults(t *testing.T) {
	tests := []struct {
		name string
		data string
	}{
		{"empty", ""},
		{"whitespace", "  \n\n"},
		{"comments only", "# nothing set yet\n"},
		{"yaml null", "null\n"},
		{"empty document marker", "---\n"},
		{"version only", "version: v1\n"},
		{"empty mapping", "{}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, warnings, err := Parse([]byte(tt.data), "config.yaml")
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if len(warnings) != 0 {
				t.Errorf("warnings = %q, want none", warnings)
			}
			if !reflect.DeepEqual(c, Default()) {
				t.Errorf("Parse(%q) differs from Default()", tt.data)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name         string
		path         string
		wantErr      string
		wantWarnings []string
		wantDefault  bool
	}{
		{name: "no path", path: "", wantDefault: true},
		{name: "missing file", path: filepath.Join(dir, "absent.yaml"), wantDefault: true,
			wantWarnings: []string{"config file not found, using defaults"}},
		{name: "empty file", path: write("empty.yaml", ""), wantDefault: true},
		{name: "directory", path: dir, wantErr: "read config"},
		{name: "too large", path: write("big.yaml", "#"+strings.Repeat("x", MaxFileSize)), wantErr: "byte limit"},
		{name: "bad field", path: write("bad.yaml", "gpulet:\n  dra:\n    driverName: Bad/Name\n"),
			wantErr: "bad.yaml: gpulet.dra.driverName: \"Bad/Name\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, warnings, err := Load(tt.path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Load error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if tt.wantDefault && !reflect.DeepEqual(c, Default()) {
				t.Errorf("Load(%q) differs from Default()", tt.path)
			}
			checkWarnings(t, warnings, tt.path, tt.wantWarnings)
		})
	}
}

func TestRoundTrip(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			first, _, err := Load(path)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			out, err := yaml.Marshal(first)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			second, _, err := Parse(out, "marshalled")
			if err != nil {
				t.Fatalf("Parse of marshalled config: %v\n%s", err, out)
			}
			if !reflect.DeepEqual(first, second) {
				again, _ := yaml.Marshal(second)
				t.Errorf("round trip changed the config:\nfirst:\n%s\nsecond:\n%s", out, again)
			}
		})
	}
}

func TestSetDefaultsIdempotent(t *testing.T) {
	c, _, err := Load("testdata/nvidia-all-fields.yaml")
	if err != nil {
		t.Fatal(err)
	}
	before, _ := yaml.Marshal(c)
	c.SetDefaults()
	after, _ := yaml.Marshal(c)
	if string(before) != string(after) {
		t.Errorf("SetDefaults changed a defaulted config:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestZeroConfigIsValid(t *testing.T) {
	var c Config
	if err := c.Validate(); err != nil {
		t.Errorf("Config{}.Validate() = %v, want nil: unset fields take defaults", err)
	}
}
