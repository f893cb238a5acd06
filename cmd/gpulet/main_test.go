package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// gpulet runs the program in-process with the given environment.
func gpulet(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	saved := osLookupEnv
	osLookupEnv = func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	defer func() { osLookupEnv = saved }()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), code
}

func TestInventoryTable(t *testing.T) {
	out, errOut, code := gpulet(t, nil, "inventory", "--nvml", "mock:dgx-h100")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var rows []string
	for _, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "GPU-") || (len(l) > 0 && l[0] >= '0' && l[0] <= '9') {
			rows = append(rows, l)
		}
	}
	if len(rows) != 8 {
		t.Fatalf("%d GPU rows, want 8:\n%s", len(rows), out)
	}
	for _, want := range []string{"INDEX", "UUID", "NVIDIA H100 80GB HBM3", "80 GiB", "disabled"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// Every GPU of an NVSwitch board reaches the 7 others over NVLink.
	for _, row := range rows {
		if n := len(regexp.MustCompile(`\b\d\(\d+\)`).FindAllString(row, -1)); n != 7 {
			t.Errorf("row lists %d NVLink peers, want 7: %s", n, row)
		}
	}
}

func TestInventoryJSONAndYAMLCarryTheSameFacts(t *testing.T) {
	state := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(state, []byte("machine: dgx-a100\ngpus: 2\ndevices: [{index: 1, migEnabled: true, mig: [{profile: 3g.40gb}, {profile: 1g.10gb}]}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	type inv struct {
		GPUs []struct {
			Index      int                     `json:"index"`
			UUID       string                  `json:"uuid"`
			Name       string                  `json:"name"`
			Memory     uint64                  `json:"memoryBytes"`
			MIG        *struct{ Enabled bool } `json:"mig"`
			MigDevices []struct {
				Profile string `json:"profile"`
				UUID    string `json:"uuid"`
			} `json:"migDevices"`
			Links []struct {
				NVLinks int `json:"nvlinks"`
			} `json:"links"`
		} `json:"gpus"`
	}
	var fromJSON, fromYAML inv
	out, errOut, code := gpulet(t, nil, "inventory", "--nvml", "mock:"+state, "-o", "json")
	if code != 0 {
		t.Fatalf("json: exit %d: %s", code, errOut)
	}
	if err := json.Unmarshal([]byte(out), &fromJSON); err != nil {
		t.Fatalf("-o json is not JSON: %v", err)
	}
	out, errOut, code = gpulet(t, map[string]string{"GPULET_NVML": "mock:" + state}, "inventory", "-o", "yaml")
	if code != 0 {
		t.Fatalf("yaml: exit %d: %s", code, errOut)
	}
	if err := yaml.Unmarshal([]byte(out), &fromYAML); err != nil {
		t.Fatalf("-o yaml is not YAML: %v", err)
	}
	a, _ := json.Marshal(fromJSON)
	b, _ := json.Marshal(fromYAML)
	if !bytes.Equal(a, b) {
		t.Errorf("json and yaml differ:\n%s\n%s", a, b)
	}
	if len(fromJSON.GPUs) != 2 || fromJSON.GPUs[1].MIG == nil || !fromJSON.GPUs[1].MIG.Enabled {
		t.Fatalf("GPUs = %+v", fromJSON.GPUs)
	}
	var profiles []string
	for _, m := range fromJSON.GPUs[1].MigDevices {
		profiles = append(profiles, m.Profile)
	}
	if strings.Join(profiles, ",") != "3g.40gb,1g.10gb" && strings.Join(profiles, ",") != "1g.10gb,3g.40gb" {
		t.Errorf("MIG devices = %v, want a 3g.40gb and a 1g.10gb", profiles)
	}
	if fromJSON.GPUs[0].Links[0].NVLinks == 0 {
		t.Error("no NVLink peers in the JSON")
	}
}

func TestCommandLineErrors(t *testing.T) {
	badConfig := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(badConfig, []byte("version: v1\nsharing:\n  timeSlicing:\n    resources: [{name: nvidia.com/gpu, replicas: -1}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		env      map[string]string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no command", nil, nil, 2, "Usage"},
		{"unknown command", nil, []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"unknown flag", nil, []string{"inventory", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{"bad --nvml", nil, []string{"inventory", "--nvml", "mock:dgx-h1000"}, 2, `unknown machine "dgx-h1000"`},
		{"bad env twin", map[string]string{"GPULET_NVML": "gpu"}, []string{"inventory"}, 1, "GPULET_NVML"},
		{"bad -o", nil, []string{"inventory", "--nvml", "mock:dgx-h100", "-o", "wide"}, 2, `want table, json or yaml, got "wide"`},
		{"stray argument", nil, []string{"inventory", "extra"}, 1, `unexpected argument "extra"`},
		{"missing state file", nil, []string{"inventory", "--nvml", "mock:/nonexistent/node.yaml"}, 1, "/nonexistent/node.yaml"},
		{"no driver", nil, []string{"inventory", "--nvml", "real"}, 1, "libnvidia-ml.so.1"},
		{"bad verbosity", nil, []string{"serve", "--v", "loud"}, 2, "want a number"},
		{"bad config file", nil, []string{"serve", "--nvml", "mock:dgx-h100", "--config", badConfig}, 1, badConfig + ": sharing.timeSlicing.resources[0].replicas"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "no driver" {
				if _, err := os.Stat("/dev/nvidiactl"); err == nil {
					t.Skip("this machine has an NVIDIA driver")
				}
			}
			_, errOut, code := gpulet(t, tt.env, tt.args...)
			if code != tt.wantCode || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("exit %d, stderr %q: want exit %d with %q", code, errOut, tt.wantCode, tt.wantErr)
			}
			if strings.Contains(errOut, "goroutine ") || strings.Contains(errOut, "panic") {
				t.Errorf("stack trace in the output: %s", errOut)
			}
		})
	}
}

func TestEveryServeFlagHasAnEnvTwinInHelp(t *testing.T) {
	out, _, code := gpulet(t, nil, "help", "serve")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	fs, _ := serveFlags(&bytes.Buffer{})
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(out, "--"+f.Name+"  ["+envName(f.Name)+"]") {
			t.Errorf("help lacks --%s with %s", f.Name, envName(f.Name))
		}
	})
}

func TestVersion(t *testing.T) {
	out, _, code := gpulet(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "gpulet ") {
		t.Errorf("version = %q, exit %d", out, code)
	}
}
