// Package chart_test checks gpulet's Helm chart without a cluster: `helm
// lint`, the renders of every variant, the plain manifests kept equal to
// the default render, and the mistakes the chart refuses at install time.
// Helm is Helm itself, built from the Go module proxy (helmchart.Ensure).
package chart_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/gpulet/gpulet/tests/e2e/helmchart"
)

var update = flag.Bool("update", false, "rewrite deployments/manifests/gpulet.yaml from the chart")

var (
	helm    string
	helmErr error
)

func TestMain(m *testing.M) {
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	helm, helmErr = helmchart.Ensure(ctx, helmchart.Options{})
	cancel()
	os.Exit(m.Run())
}

func helmBin(t testing.TB) string {
	t.Helper()
	if helmErr != nil {
		t.Fatalf("helm %s could not be built: %v", helmchart.Version, helmErr)
	}
	return helm
}

// TestChartLints runs `helm lint --strict` on every variant: no errors and
// no warnings (informational notes such as "icon is recommended" allowed).
func TestChartLints(t *testing.T) {
	for _, v := range helmchart.Variants(t) {
		t.Run(v.Name, func(t *testing.T) {
			out, err := helmchart.Output(t, helmBin(t), append([]string{"lint", "--strict", helmchart.ChartDir}, v.Args...)...)
			if err != nil {
				t.Fatalf("helm lint: %v\n%s", err, out)
			}
			for line := range strings.SplitSeq(out, "\n") {
				if strings.Contains(line, "[WARNING]") || strings.Contains(line, "[ERROR]") {
					t.Errorf("helm lint: %s", line)
				}
			}
			if !strings.Contains(out, "1 chart(s) linted, 0 chart(s) failed") {
				t.Errorf("helm lint did not report a clean chart:\n%s", out)
			}
		})
	}
}

// TestManifestsMatchChart checks that deployments/manifests/gpulet.yaml is
// the chart rendered with default values, so users without Helm apply what
// Helm users install.
func TestManifestsMatchChart(t *testing.T) {
	got := helmchart.Template(t, helmBin(t), helmchart.Variant{Name: "defaults"})
	path := filepath.Join(helmchart.RepoRoot(t), helmchart.ManifestsFile)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v\nregenerate with: %s", err, helmchart.Regenerate)
	}
	if string(want) != got {
		t.Fatalf("%s differs from the chart rendered with default values:\n%s\nregenerate with: %s",
			helmchart.ManifestsFile, firstDifference(string(want), got), helmchart.Regenerate)
	}
}

// firstDifference describes the first line where the file and the render
// differ.
func firstDifference(file, rendered string) string {
	a, b := strings.Split(file, "\n"), strings.Split(rendered, "\n")
	for i := 0; i < max(len(a), len(b)); i++ {
		var la, lb string
		if i < len(a) {
			la = a[i]
		}
		if i < len(b) {
			lb = b[i]
		}
		if la != lb || i >= len(a) || i >= len(b) {
			return fmt.Sprintf("line %d:\n  file:     %q\n  rendered: %q", i+1, la, lb)
		}
	}
	return "(no line differs; line endings?)"
}

// TestChartRejectsMistakes checks that what the chart promises to refuse
// at install time is refused, with a message that names the problem: a
// misspelt key (values.schema.json), a config file that disagrees with the
// values, and an ambiguous NVIDIA config map.
func TestChartRejectsMistakes(t *testing.T) {
	dir := t.TempDir()
	file := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name string
		args []string
		want string // regexp the error must match
	}{
		{"misspelt key", []string{"--set", "dra.enabeld=true"}, `additional properties 'enabeld' not allowed`},
		{"misspelt nested key", []string{"--set", "metrics.serviceMonitor.intervall=10s"}, `additional properties 'intervall' not allowed`},
		{"wrong type", []string{"--set", "metrics.port=http"}, `/metrics/port`},
		{"bad nvml", []string{"--set", "nvml=fake"}, `/nvml`},
		{"config turns DRA on, values off",
			[]string{"--set", "dra.enabled=false", "--set", "devicePlugin.enabled=true", "--set-file", "config.file=" + file("dra-on.yaml", "version: v1\ngpulet:\n  dra:\n    enabled: true\n")},
			`gpulet.dra.enabled true .* the value dra.enabled is false`},
		{"NVIDIA config without a gpulet section under the DRA defaults",
			[]string{"--set-file", "config.file=" + file("nvidia.yaml", "version: v1\nflags:\n  migStrategy: none\n")},
			`gpulet.devicePlugin.enabled true \(unset means true\) but the value devicePlugin.enabled is false`},
		{"config names another driver root than the one mounted",
			[]string{"--set", "driver.root=/run/nvidia/driver", "--set-file", "config.file=" + file("root.yaml", "version: v1\ngpulet:\n  devicePlugin:\n    enabled: false\n  dra:\n    enabled: true\n")},
			`flags.nvidiaDriverRoot "/" \(unset means "/"\) but the value driver.root is "/run/nvidia/driver"`},
		{"config map without a default", []string{"--set", "devicePlugin.enabled=true", "--set", "dra.enabled=false", "--set", "config.map.a=version: v1", "--set", "config.map.b=version: v1"},
			`none is named "default": set config.default`},
		{"config default not in the map", []string{"--set", "devicePlugin.enabled=true", "--set", "dra.enabled=false", "--set", "config.map.a=version: v1", "--set", "config.default=b"},
			`config.default is "b", which config.map does not have \(it has a\)`},
		{"file and map", []string{"--set", "config.file=version: v1", "--set", "config.map.a=version: v1"}, `config.file and config.map are both set`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"template", helmchart.ReleaseName, helmchart.ChartDir, "--namespace", helmchart.ReleaseNamespace}, tc.args...)
			out, err := helmchart.Output(t, helmBin(t), args...)
			if err == nil {
				t.Fatalf("helm template succeeded; want an error matching %q. Output:\n%s", tc.want, out)
			}
			if !regexp.MustCompile(tc.want).MatchString(err.Error()) {
				t.Errorf("error %v\ndoes not match %q", err, tc.want)
			}
			var exit *exec.ExitError
			if !errors.As(err, &exit) {
				t.Errorf("helm did not run: %v", err)
			}
		})
	}
}

// TestValuesDocumented checks that every key of values.yaml, or a key
// above it, is a row of the values table in the chart's README.md.
func TestValuesDocumented(t *testing.T) {
	root := helmchart.RepoRoot(t)
	data, err := os.ReadFile(filepath.Join(root, helmchart.ChartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, helmchart.ChartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(data, &values); err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(readme), "\n## Values\n")
	if !ok {
		t.Fatalf("%s/README.md has no \"## Values\" section", helmchart.ChartDir)
	}
	table, _, _ = strings.Cut(table, "\n## ")
	rows := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([^`]+)` \\|").FindAllStringSubmatch(table, -1) {
		rows[m[1]] = true
	}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		m, ok := v.(map[string]any)
		if !ok || len(m) == 0 || rows[prefix] {
			if !rows[prefix] {
				t.Errorf("values key %s is not in the values table of %s/README.md", prefix, helmchart.ChartDir)
			}
			return
		}
		for k, child := range m {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			walk(p, child)
		}
	}
	walk("", values)
	for row := range rows {
		if !hasPath(values, row) {
			t.Errorf("the values table lists %s, which values.yaml does not have", row)
		}
	}
}

// hasPath reports whether the dotted path names a key in values.
func hasPath(values map[string]any, path string) bool {
	var cur any = values
	for part := range strings.SplitSeq(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return false
		}
		if cur, ok = m[part]; !ok {
			return false
		}
	}
	return true
}

// TestChartCarriesSharedFiles checks that what the chart installs from
// files other issues own (deployments/deviceclasses/ and
// deployments/monitoring/, through the chart's files/ links) is those
// files' content: each DeviceClass's spec, the PrometheusRule's rules, the
// ServiceMonitor's scrape endpoints (with the variant's overrides), and the
// dashboard's JSON byte for byte.
func TestChartCarriesSharedFiles(t *testing.T) {
	root := helmchart.RepoRoot(t)
	var everything helmchart.Variant
	for _, v := range helmchart.Variants(t) {
		if v.Name == "everything" {
			everything = v
		}
	}
	defaults := objectsByKind(t, helmchart.Template(t, helmBin(t), helmchart.Variant{Name: "defaults"}))
	all := objectsByKind(t, helmchart.Template(t, helmBin(t), everything))

	files, err := filepath.Glob(filepath.Join(root, "deployments", "deviceclasses", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no DeviceClass files: %v", err)
	}
	for _, f := range files {
		want := readYAML(t, f)
		name := want["metadata"].(map[string]any)["name"].(string)
		file := strings.TrimSuffix(filepath.Base(f), ".yaml")
		got, ok := defaults["DeviceClass/"+name]
		if file == "mig" {
			// Only with dra.migManagement, which "everything" sets.
			if ok {
				t.Errorf("DeviceClass %s rendered without dra.migManagement", name)
			}
			got, ok = all["DeviceClass/"+name]
		}
		if !ok {
			t.Errorf("%s: DeviceClass %s not rendered", filepath.Base(f), name)
			continue
		}
		if !reflect.DeepEqual(got["spec"], want["spec"]) {
			t.Errorf("DeviceClass %s: rendered spec %v, file has %v", name, got["spec"], want["spec"])
		}
		if _, rendered := all["DeviceClass/"+name]; rendered != (file != "nvidia-gpu") {
			t.Errorf("DeviceClass %s rendered %v with dra.deviceClasses.exclude={nvidia-gpu}", name, rendered)
		}
	}

	monitoring := filepath.Join(root, "deployments", "monitoring")
	rules := readYAML(t, filepath.Join(monitoring, "prometheusrules.yaml"))
	if got := all["PrometheusRule/"+helmchart.ReleaseName]; !reflect.DeepEqual(got["spec"], rules["spec"]) {
		t.Errorf("PrometheusRule spec differs from prometheusrules.yaml")
	}
	sm := readYAML(t, filepath.Join(monitoring, "servicemonitor.yaml"))
	wantEndpoints := sm["spec"].(map[string]any)["endpoints"].([]any)
	gotEndpoints, _ := all["ServiceMonitor/"+helmchart.ReleaseName]["spec"].(map[string]any)["endpoints"].([]any)
	if len(gotEndpoints) != len(wantEndpoints) {
		t.Fatalf("ServiceMonitor endpoints %v, file has %v", gotEndpoints, wantEndpoints)
	}
	for i := range wantEndpoints {
		want := maps.Clone(wantEndpoints[i].(map[string]any))
		want["interval"], want["scheme"] = "30s", "https" // the variant's overrides
		if !reflect.DeepEqual(gotEndpoints[i], any(want)) {
			t.Errorf("ServiceMonitor endpoint %d: %v, want %v", i, gotEndpoints[i], want)
		}
	}
	dashboard, err := os.ReadFile(filepath.Join(monitoring, "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	cm := all["ConfigMap/"+helmchart.ReleaseName+"-dashboard"]
	if cm == nil {
		t.Fatal("no dashboard ConfigMap")
	}
	data, _ := cm["data"].(map[string]any)
	if len(data) != 1 || data["gpulet-fleet.json"] != string(dashboard) {
		t.Errorf("dashboard ConfigMap data is not grafana-dashboard.json verbatim under gpulet-fleet.json (keys %v)", slices.Collect(maps.Keys(data)))
	}
	if l := cm["metadata"].(map[string]any)["labels"].(map[string]any); l["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap labels %v lack grafana_dashboard: \"1\"", l)
	}
}

// objectsByKind decodes a rendered stream into "Kind/name" -> object.
func objectsByKind(t *testing.T, text string) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for doc := range strings.SplitSeq(text, "\n---") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("rendered YAML: %v", err)
		}
		if obj == nil {
			continue
		}
		meta, _ := obj["metadata"].(map[string]any)
		out[fmt.Sprintf("%v/%v", obj["kind"], meta["name"])] = obj
	}
	return out
}

func readYAML(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := yaml.Unmarshal(data, &obj); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return obj
}
