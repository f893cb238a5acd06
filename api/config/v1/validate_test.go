package v1

import (
	"strings"
	"testing"
)

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		data string
		// want are substrings that must each appear in the error, every
		// line of which must name the source.
		want []string
	}{
		{
			name: "negative replicas",
			data: "sharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: -1\n",
			want: []string{"sharing.timeSlicing.resources[0].replicas: must be >= 1, got -1"},
		},
		{
			name: "missing replicas",
			data: "sharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n",
			want: []string{"sharing.timeSlicing.resources[0].replicas: must be >= 1, got 0"},
		},
		{
			name: "all problems reported at once",
			data: "version: v1\nflags:\n  migStrategy: double\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 0\ngpulet:\n  deviceListStrategy: volume-mounts\n",
			want: []string{
				`flags.migStrategy: unsupported value "double": supported values: "none", "single", "mixed"`,
				"sharing.timeSlicing.resources[0].replicas: must be >= 1, got 0",
				`gpulet.deviceListStrategy: unsupported value "volume-mounts": supported values: "cdi-cri", "envvar"`,
			},
		},
		{
			name: "unsupported version",
			data: "version: v2\n",
			want: []string{`version: unsupported value "v2": supported values: "v1"`},
		},
		{
			name: "resource name with another domain",
			data: "sharing:\n  timeSlicing:\n    resources:\n    - name: example.com/gpu\n      replicas: 2\n",
			want: []string{`sharing.timeSlicing.resources[0].name: "example.com/gpu": must be "nvidia.com/<name>"`},
		},
		{
			name: "resource name with capitals",
			data: "sharing:\n  timeSlicing:\n    resources:\n    - name: GPU\n      replicas: 2\n",
			want: []string{`sharing.timeSlicing.resources[0].name: "GPU": a lowercase RFC 1123 subdomain`},
		},
		{
			name: "resource name too long",
			data: "sharing:\n  timeSlicing:\n    resources:\n    - name: " + strings.Repeat("g", 60) + "\n      replicas: 2\n",
			want: []string{"sharing.timeSlicing.resources[0].name:", "must be at most 63 characters"},
		},
		{
			name: "empty resource name",
			data: "sharing:\n  timeSlicing:\n    resources:\n    - replicas: 2\n",
			want: []string{"sharing.timeSlicing.resources[0].name: must not be empty"},
		},
		{
			name: "invalid rename",
			data: "sharing:\n  timeSlicing:\n    resources:\n    - name: gpu\n      rename: a/b\n      replicas: 2\n",
			want: []string{`sharing.timeSlicing.resources[0].rename: "a/b"`},
		},
		{
			name: "same resource twice",
			data: "sharing:\n  timeSlicing:\n    resources:\n    - name: gpu\n      replicas: 2\n    - name: nvidia.com/gpu\n      replicas: 4\n",
			want: []string{`sharing.timeSlicing.resources[1].name: "nvidia.com/gpu" is already replicated by sharing.timeSlicing.resources[0]`},
		},
		{
			name: "two resources advertised under one name",
			data: "sharing:\n  timeSlicing:\n    resources:\n    - name: mig-1g.10gb\n      rename: shared\n      replicas: 2\n    - name: mig-2g.20gb\n      rename: shared\n      replicas: 2\n",
			want: []string{`sharing.timeSlicing.resources[1]: advertises "nvidia.com/shared", as sharing.timeSlicing.resources[0] does`},
		},
		{
			name: "bad devices string",
			data: "sharing:\n  timeSlicing:\n    resources:\n    - name: gpu\n      devices: some\n      replicas: 2\n",
			want: []string{`sharing.timeSlicing.resources[0].devices: must be "all", a count or a list of devices, got "some"`},
		},
		{
			name: "zero device count",
			data: "sharing:\n  timeSlicing:\n    resources:\n    - name: gpu\n      devices: 0\n      replicas: 2\n",
			want: []string{"sharing.timeSlicing.resources[0].devices: a count of devices must be an integer > 0, got 0"},
		},
		{
			name: "bad device in list",
			data: "sharing:\n  timeSlicing:\n    resources:\n    - name: gpu\n      devices: [0, GPU-xyz]\n      replicas: 2\n",
			want: []string{`sharing.timeSlicing.resources[0].devices: [1]: must be a GPU index`, `got "GPU-xyz"`},
		},
		{
			name: "mps entries are checked too",
			data: "sharing:\n  mps:\n    resources:\n    - name: gpu\n      replicas: -3\n",
			want: []string{"sharing.mps.resources[0].replicas: must be >= 1, got -3"},
		},
		{
			name: "resources pattern missing",
			data: "resources:\n  gpus:\n  - name: a100\n",
			want: []string{"resources.gpus[0].pattern: must not be empty"},
		},
		{
			name: "relative driver root",
			data: "flags:\n  nvidiaDriverRoot: run/nvidia/driver\n",
			want: []string{`flags.nvidiaDriverRoot: must be an absolute path, got "run/nvidia/driver"`},
		},
		{
			name: "relative nvidia-ctk path",
			data: "flags:\n  plugin:\n    nvidiaCTKPath: nvidia-ctk\n",
			want: []string{`flags.plugin.nvidiaCTKPath: must be an absolute path, got "nvidia-ctk"`},
		},
		{
			name: "unknown device list strategy",
			data: "flags:\n  plugin:\n    deviceListStrategy: [cdi-cri, magic]\n",
			want: []string{`flags.plugin.deviceListStrategy[1]: unsupported value "magic"`},
		},
		{
			name: "empty device list strategy list",
			data: "flags:\n  plugin:\n    deviceListStrategy: []\n",
			want: []string{"flags.plugin.deviceListStrategy: must name at least one strategy"},
		},
		{
			name: "unknown device id strategy",
			data: "flags:\n  plugin:\n    deviceIDStrategy: serial\n",
			want: []string{`flags.plugin.deviceIDStrategy: unsupported value "serial": supported values: "uuid", "index"`},
		},
		{
			name: "unknown discovery strategy",
			data: "flags:\n  deviceDiscoveryStrategy: pci\n",
			want: []string{`flags.deviceDiscoveryStrategy: unsupported value "pci"`},
		},
		{
			name: "unknown allocation policy",
			data: "flags:\n  plugin:\n    sharedDevicesAllocationPolicy: random\n",
			want: []string{`flags.plugin.sharedDevicesAllocationPolicy: unsupported value "random"`},
		},
		{
			name: "ignored xid zero",
			data: "gpulet:\n  health:\n    ignoredXids: [13, 0]\n",
			want: []string{"gpulet.health.ignoredXids[1]: must be >= 1, got 0"},
		},
		{
			name: "negative xid",
			data: "gpulet:\n  health:\n    ignoredXids: [-13]\n",
			want: []string{"gpulet.health.ignoredXids[0]: must be an integer >= 0, got -13"},
		},
		{
			name: "negative quiet period",
			data: "gpulet:\n  health:\n    recoveryQuietPeriod: -1m\n",
			want: []string{"gpulet.health.recoveryQuietPeriod: must be >= 0, got -1m0s"},
		},
		{
			name: "duration as a bare number",
			data: "gpulet:\n  metrics:\n    sampleInterval: 5\n",
			want: []string{`gpulet.metrics.sampleInterval: must be a duration string such as "30s", got 5`},
		},
		{
			name: "duration that does not parse",
			data: "gpulet:\n  metrics:\n    sampleInterval: soon\n",
			want: []string{`gpulet.metrics.sampleInterval: must be a duration string such as "30s", got "soon"`},
		},
		{
			name: "sample interval too short",
			data: "gpulet:\n  metrics:\n    sampleInterval: 10ms\n",
			want: []string{"gpulet.metrics.sampleInterval: must be between 100ms and 1m0s, got 10ms"},
		},
		{
			name: "utilization threshold above one",
			data: "gpulet:\n  metrics:\n    idle:\n      utilizationThreshold: 5\n",
			want: []string{"gpulet.metrics.idle.utilizationThreshold: must be a ratio between 0 and 1, got 5"},
		},
		{
			name: "negative idle event delay",
			data: "gpulet:\n  metrics:\n    idle:\n      eventAfter: -5s\n",
			want: []string{"gpulet.metrics.idle.eventAfter: must be >= 0, got -5s"},
		},
		{
			name: "driver name that is a path",
			data: "gpulet:\n  dra:\n    driverName: ../../etc\n",
			want: []string{`gpulet.dra.driverName: "../../etc"`},
		},
		{
			name: "driver name too long",
			data: "gpulet:\n  dra:\n    driverName: " + strings.Repeat("a", 64) + ".dev\n",
			want: []string{"gpulet.dra.driverName:", "must be at most 63 characters"},
		},
		{
			name: "wrong type: string for integer",
			data: "sharing:\n  timeSlicing:\n    resources:\n    - name: gpu\n      replicas: many\n",
			want: []string{`sharing.timeSlicing.resources[0].replicas: must be an integer, got "many"`},
		},
		{
			name: "wrong type: float for integer",
			data: "sharing:\n  timeSlicing:\n    resources:\n    - name: gpu\n      replicas: 2.5\n",
			want: []string{"sharing.timeSlicing.resources[0].replicas: must be an integer, got 2.5"},
		},
		{
			name: "wrong type: string for bool",
			data: "gpulet:\n  dra:\n    enabled: \"yes\"\n",
			want: []string{`gpulet.dra.enabled: must be true or false, got "yes"`},
		},
		{
			name: "wrong type: list for mapping",
			data: "sharing:\n  - timeSlicing\n",
			want: []string{"sharing: must be a mapping, got a list"},
		},
		{
			name: "wrong type: mapping for list",
			data: "sharing:\n  timeSlicing:\n    resources: {name: gpu}\n",
			want: []string{"sharing.timeSlicing.resources: must be a list, got a mapping"},
		},
		{
			name: "wrong type: list for string",
			data: "flags:\n  migStrategy: [mixed]\n",
			want: []string{"flags.migStrategy: must be a string, got a list"},
		},
		{
			name: "document is a list",
			data: "- version: v1\n",
			want: []string{"must be a mapping of settings, got a list"},
		},
		{
			name: "document is a scalar",
			data: "hello\n",
			want: []string{`must be a mapping of settings, got "hello"`},
		},
		{
			name: "duplicate key",
			data: "version: v1\nversion: v1\n",
			want: []string{"invalid YAML", `key "version" already set`},
		},
		{
			name: "yaml syntax error",
			data: "flags: [\n",
			want: []string{"invalid YAML"},
		},
		{
			name: "tab indentation",
			data: "flags:\n\tmigStrategy: none\n",
			want: []string{"invalid YAML"},
		},
		{
			name: "unknown field in gpulet section",
			data: "gpulet:\n  metrics:\n    port: 9400\n",
			want: []string{"gpulet.metrics.port: unknown field"},
		},
		{
			name: "typo in gpulet section",
			data: "gpulet:\n  health:\n    ignoredXIDs: [13]\n",
			want: []string{`gpulet.health.ignoredXIDs: unknown field, did you mean "ignoredXids"?`},
		},
		{
			name: "case typo in NVIDIA section",
			data: "sharing:\n  timeslicing:\n    resources: []\n",
			want: []string{`sharing.timeslicing: unknown field, did you mean "timeSlicing"?`},
		},
		{
			name: "one-letter typo in NVIDIA section",
			data: "sharing:\n  timeSlicing:\n    resources:\n    - name: gpu\n      replica: 2\n",
			want: []string{`sharing.timeSlicing.resources[0].replica: unknown field, did you mean "replicas"?`},
		},
		{
			name: "swapped letters",
			data: "sharing:\n  timeSlicing:\n    renameByDefualt: true\n",
			want: []string{`sharing.timeSlicing.renameByDefualt: unknown field, did you mean "renameByDefault"?`},
		},
		{
			name: "plural of mig",
			data: "resources:\n  migs:\n  - pattern: '*'\n    name: mig\n",
			want: []string{`resources.migs: unknown field, did you mean "mig"?`},
		},
		{
			name: "typo of the gpulet section",
			data: "gpulett:\n  dra: {}\n",
			want: []string{`gpulett: unknown field, did you mean "gpulet"?`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Parse([]byte(tt.data), "node.yaml")
			if err == nil {
				t.Fatalf("Parse(%q) succeeded, want an error containing %q", tt.data, tt.want)
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			for _, line := range strings.Split(msg, "\n") {
				// The YAML parser's own messages continue on indented lines.
				if !strings.HasPrefix(line, "node.yaml: ") && !strings.HasPrefix(line, "  ") {
					t.Errorf("error line %q does not name the source", line)
				}
			}
		})
	}
}

func TestParseWarnings(t *testing.T) {
	tests := []struct {
		name string
		data string
		want []string
	}{
		{name: "disabled unimplemented features are silent",
			data: "flags:\n  gdsEnabled: false\n  mofedEnabled: false\n  gdrcopyEnabled: false\n  useNodeFeatureAPI: false\n  plugin:\n    passDeviceSpecs: false\n    deviceIDStrategy: uuid\n    deviceListStrategy: cdi-cri\n    cdiAnnotationPrefix: cdi.k8s.io/\n"},
		{name: "gds", data: "flags:\n  gdsEnabled: true\n",
			want: []string{"flags.gdsEnabled: GPUDirect Storage is not implemented by gpulet, ignored"}},
		{name: "mofed", data: "flags:\n  mofedEnabled: true\n",
			want: []string{"flags.mofedEnabled: MOFED is not implemented by gpulet, ignored"}},
		{name: "mps", data: "sharing:\n  mps:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 2\n",
			want: []string{"sharing.mps: not implemented by gpulet, ignored"}},
		{name: "gfd", data: "flags:\n  gfd:\n    oneshot: true\n    sleepInterval: infinite\n",
			want: []string{"flags.gfd: GPU feature discovery is not implemented by gpulet, ignored"}},
		{name: "gfd sleep interval in nanoseconds is kept", data: "flags:\n  gfd:\n    sleepInterval: 60000000000\n",
			want: []string{"flags.gfd: GPU feature discovery is not implemented"}},
		{name: "index device ids", data: "flags:\n  plugin:\n    deviceIDStrategy: index\n",
			want: []string{`flags.plugin.deviceIDStrategy: "index" is not implemented by gpulet, ignored: devices are named by UUID`}},
		{name: "volume mounts", data: "flags:\n  plugin:\n    deviceListStrategy: volume-mounts\n",
			want: []string{`flags.plugin.deviceListStrategy: "volume-mounts" is ignored: gpulet passes devices by gpulet.deviceListStrategy, "cdi-cri"`}},
		{name: "envvar in NVIDIA flags matches the gpulet choice", data: "flags:\n  plugin:\n    deviceListStrategy: envvar\ngpulet:\n  deviceListStrategy: envvar\n"},
		{name: "tegra discovery", data: "flags:\n  deviceDiscoveryStrategy: tegra\n",
			want: []string{`flags.deviceDiscoveryStrategy: "tegra" is not implemented by gpulet`}},
		{name: "imex", data: "imex:\n  channelIDs: [0]\n",
			want: []string{"imex: IMEX channel injection is not implemented by gpulet, ignored"}},
		{name: "empty imex is silent", data: "imex:\n  channelIDs: []\n"},
		{name: "resources renaming", data: "resources:\n  gpus:\n  - pattern: '*'\n    name: gpu\n",
			want: []string{"resources: renaming resources by pattern is not implemented by gpulet, ignored"}},
		{name: "device selection", data: "sharing:\n  timeSlicing:\n    resources:\n    - name: gpu\n      devices: [0]\n      replicas: 2\n",
			want: []string{`sharing.timeSlicing.resources[0].devices: selecting devices is not implemented by gpulet, ignored: all devices of "nvidia.com/gpu" are replicated`}},
		{name: "devices all is silent", data: "sharing:\n  timeSlicing:\n    resources:\n    - name: gpu\n      devices: all\n      replicas: 2\n"},
		{name: "unknown NVIDIA flag from a newer release", data: "flags:\n  plugin:\n    futureOption: true\n",
			want: []string{"flags.plugin.futureOption: unknown field, ignored"}},
		{name: "unknown NVIDIA top-level section", data: "version: v1\nnewSection:\n  a: 1\n",
			want: []string{"newSection: unknown field, ignored"}},
		{name: "unknown fields in a list entry", data: "sharing:\n  timeSlicing:\n    resources:\n    - name: gpu\n      replicas: 2\n      priority: high\n",
			want: []string{"sharing.timeSlicing.resources[0].priority: unknown field, ignored"}},
		{name: "everything off", data: "gpulet:\n  devicePlugin:\n    enabled: false\n",
			want: []string{"gpulet: devicePlugin.enabled and dra.enabled are both false: gpulet serves metrics only"}},
		{name: "consumable capacity without DRA", data: "gpulet:\n  dra:\n    sharing:\n      consumableCapacity:\n        enabled: true\n",
			want: []string{"gpulet.dra.sharing.consumableCapacity.enabled: has no effect while gpulet.dra.enabled is false"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, warnings, err := Parse([]byte(tt.data), "node.yaml")
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			checkWarnings(t, warnings, "node.yaml", tt.want)
		})
	}
}

func TestNullValuesLeaveFieldsUnset(t *testing.T) {
	// Files written by marshalling NVIDIA's own struct carry nulls for
	// unset flags.
	data := "version: v1\nflags:\n  migStrategy: null\n  failOnInitError: null\n  plugin:\n    deviceListStrategy: null\n  gfd: null\nsharing:\n  timeSlicing: null\ngpulet:\n  health:\n    ignoredXids: null\n"
	c, warnings, err := Parse([]byte(data), "nulls.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings = %q, want none", warnings)
	}
	if *c.Flags.MigStrategy != MigStrategyNone || len(c.Gpulet.Health.IgnoredXIDs) != 6 {
		t.Errorf("nulls did not take defaults: migStrategy %q, ignoredXids %v", *c.Flags.MigStrategy, c.Gpulet.Health.IgnoredXIDs)
	}
}

func TestEmptyIgnoredXIDsIgnoresNone(t *testing.T) {
	c, _, err := Parse([]byte("gpulet:\n  health:\n    ignoredXids: []\n"), "x.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Gpulet.Health.IgnoredXIDs == nil || len(c.Gpulet.Health.IgnoredXIDs) != 0 {
		t.Errorf("ignoredXids = %#v, want an empty list", c.Gpulet.Health.IgnoredXIDs)
	}
}

func TestJSONConfig(t *testing.T) {
	data := `{"version":"v1","sharing":{"timeSlicing":{"resources":[{"name":"nvidia.com/gpu","replicas":3}]}}}`
	c, _, err := Parse([]byte(data), "config.json")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got, _ := c.Sharing.TimeSlicing.ReplicasFor("nvidia.com/gpu"); got.Replicas != 3 {
		t.Errorf("replicas = %d, want 3", got.Replicas)
	}
}

func TestDocumentMarkers(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		wantErr string
	}{
		{name: "leading marker", data: "---\nversion: v1\n"},
		{name: "trailing empty document", data: "version: v1\n---\n"},
		{name: "end marker", data: "version: v1\n...\n"},
		{name: "second document", data: "version: v1\n---\nversion: v2\n", wantErr: "node.yaml: invalid YAML: document 2: gpulet reads one YAML document per file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Parse([]byte(tt.data), "node.yaml")
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Parse: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Parse error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestReportsAreCapped(t *testing.T) {
	var bad, unknown strings.Builder
	bad.WriteString("sharing:\n  timeSlicing:\n    resources:\n")
	for i := 0; i < 200; i++ {
		bad.WriteString("    - name: gpu" + strings.Repeat("x", i%5) + "\n      replicas: 0\n")
		unknown.WriteString("future" + strings.Repeat("z", i) + ": 1\n")
	}
	_, _, err := Parse([]byte(bad.String()), "bad.yaml")
	if err == nil {
		t.Fatal("Parse succeeded, want errors")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != maxReported+1 || !strings.HasSuffix(lines[maxReported], "more errors") {
		t.Errorf("got %d error lines ending %q, want %d and a count of the rest", len(lines), lines[len(lines)-1], maxReported+1)
	}
	_, warnings, err := Parse([]byte(unknown.String()), "future.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != maxReported+1 || warnings[maxReported] != "future.yaml: and 150 more warnings" {
		t.Errorf("got %d warnings ending %q", len(warnings), warnings[len(warnings)-1])
	}
}
