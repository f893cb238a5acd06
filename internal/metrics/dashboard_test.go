package metrics

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// monitoringDir holds the ServiceMonitor, rules and dashboard that the
// chart installs.
const monitoringDir = "../../deployments/monitoring"

// goldenMetricNames are the series names the golden expositions contain
// (a histogram's _bucket, _sum and _count included).
func goldenMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.prom"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	names := map[string]bool{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) != 4 || fields[0] != "#" || fields[1] != "TYPE" {
				continue
			}
			names[fields[2]] = true
			if fields[3] == "histogram" {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					names[fields[2]+suffix] = true
				}
			}
		}
	}
	return names
}

var (
	quoted      = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	braces      = regexp.MustCompile(`\{[^{}]*\}`)
	brackets    = regexp.MustCompile(`\[[^\[\]]*\]`)
	labelLists  = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	variables   = regexp.MustCompile(`\$\{?\w+\}?`)
	identifiers = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?`)
	keywords    = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true}
)

// metricNames returns the metric names a PromQL expression selects:
// identifiers that are not functions, keywords, label names or Grafana
// variables.
func metricNames(expr string) []string {
	// Grafana's ${var} goes first: its braces are not label matchers.
	s := variables.ReplaceAllString(expr, " ")
	s = quoted.ReplaceAllString(s, `""`)
	s = braces.ReplaceAllString(s, " ")
	s = brackets.ReplaceAllString(s, " ")
	s = labelLists.ReplaceAllString(s, " ")
	var out []string
	for _, m := range identifiers.FindAllString(s, -1) {
		if strings.HasSuffix(m, "(") || keywords[m] {
			continue // a function or aggregation, or an operator
		}
		out = append(out, m)
	}
	return out
}

func TestMetricNames(t *testing.T) {
	tests := []struct {
		expr string
		want []string
	}{
		{expr: `avg by (node) (gpulet_device_utilization_ratio{node=~"$node"})`, want: []string{"gpulet_device_utilization_ratio"}},
		{expr: `count(x{a="b"} > $idle_after) or vector(0)`, want: []string{"x"}},
		{expr: `histogram_quantile(0.99, sum by (le) (rate(h_bucket{node=~"${node}"}[$__rate_interval])))`, want: []string{"h_bucket"}},
		{expr: `time() - ts > 60`, want: []string{"ts"}},
		{expr: `a / on(device) group_left(pod) b`, want: []string{"a", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			if got := metricNames(tt.expr); !slices.Equal(got, tt.want) {
				t.Errorf("metricNames = %v, want %v", got, tt.want)
			}
		})
	}
}

// collectExprs walks decoded JSON and returns every "expr" string and
// every query variable's query.
func collectExprs(v any, out *[]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if s, ok := x.(string); ok && (k == "expr" || k == "definition") {
				*out = append(*out, s)
				continue
			}
			collectExprs(x, out)
		}
	case []any:
		for _, x := range v {
			collectExprs(x, out)
		}
	}
}

// labelValues turns Grafana's label_values(metric, label) into the metric.
var labelValues = regexp.MustCompile(`label_values\(\s*([^,()]+)\s*,\s*\w+\s*\)`)

func checkExprs(t *testing.T, where string, exprs []string, golden map[string]bool) {
	t.Helper()
	if len(exprs) == 0 {
		t.Fatalf("%s: no queries found", where)
	}
	for _, e := range exprs {
		e = labelValues.ReplaceAllString(e, "$1")
		names := metricNames(e)
		if len(names) == 0 {
			t.Errorf("%s: %q selects no metric", where, e)
		}
		for _, n := range names {
			if !golden[n] {
				t.Errorf("%s: %q uses %s, which the golden expositions do not contain", where, e, n)
			}
		}
	}
}

func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(monitoringDir, "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("grafana-dashboard.json is not valid JSON: %v", err)
	}
	for _, key := range []string{"uid", "title", "panels", "templating", "schemaVersion"} {
		if _, ok := dash[key]; !ok {
			t.Errorf("dashboard lacks %q", key)
		}
	}
	var exprs []string
	collectExprs(dash, &exprs)
	checkExprs(t, "grafana-dashboard.json", exprs, goldenMetricNames(t))

	ids := map[float64]bool{}
	for _, p := range dash["panels"].([]any) {
		id := p.(map[string]any)["id"].(float64)
		if ids[id] {
			t.Errorf("panel id %v repeats", id)
		}
		ids[id] = true
	}
}

// TestPrometheusRules checks that the rules parse and use only metrics the
// golden expositions contain (besides up and time()).
func TestPrometheusRules(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(monitoringDir, "prometheusrules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		Kind string `json:"kind"`
		Spec struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Alert  string `json:"alert"`
					Record string `json:"record"`
					Expr   string `json:"expr"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &rule); err != nil {
		t.Fatalf("prometheusrules.yaml: %v", err)
	}
	if rule.Kind != "PrometheusRule" {
		t.Fatalf("kind = %q", rule.Kind)
	}
	var exprs []string
	alerts := map[string]bool{}
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			if (r.Alert == "") == (r.Record == "") || r.Expr == "" {
				t.Errorf("group %s: a rule needs an expr and one of alert or record: %+v", g.Name, r)
			}
			alerts[r.Alert] = true
			exprs = append(exprs, r.Expr)
		}
	}
	for _, want := range []string{"GpuletCriticalXID", "GpuletXIDErrors", "GpuletDeviceUnhealthy", "GpuletGPULost", "GpuletAllocatedGPUIdle"} {
		if !alerts[want] {
			t.Errorf("no alert %s", want)
		}
	}
	checkExprs(t, "prometheusrules.yaml", exprs, goldenMetricNames(t))
}

// TestDashboardConfigMap keeps the ConfigMap Grafana's dashboard sidecar
// loads in step with the dashboard JSON (-update rewrites it).
func TestDashboardConfigMap(t *testing.T) {
	dash, err := os.ReadFile(filepath.Join(monitoringDir, "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	cm := map[string]any{
		"apiVersion": "v1",
		"kind":       "ConfigMap",
		"metadata": map[string]any{
			"name":      "gpulet-grafana-dashboard",
			"namespace": "gpulet",
			"labels": map[string]any{
				// The label Grafana's dashboard sidecar looks for.
				"grafana_dashboard":           "1",
				"app.kubernetes.io/name":      "gpulet",
				"app.kubernetes.io/component": "metrics",
			},
		},
		"data": map[string]any{"gpulet-fleet.json": string(dash)},
	}
	body, err := yaml.Marshal(cm)
	if err != nil {
		t.Fatal(err)
	}
	header := "# Generated from grafana-dashboard.json by internal/metrics's\n# TestDashboardConfigMap (go test ./internal/metrics -run TestDashboardConfigMap -update).\n"
	want := append([]byte(header), body...)
	path := filepath.Join(monitoringDir, "grafana-dashboard-configmap.yaml")
	if *update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is out of date with grafana-dashboard.json: run go test ./internal/metrics -run TestDashboardConfigMap -update", path)
	}
}

func TestServiceMonitor(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(monitoringDir, "servicemonitor.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var sm struct {
		Kind string `json:"kind"`
		Spec struct {
			Endpoints []struct {
				Port string `json:"port"`
				Path string `json:"path"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &sm); err != nil {
		t.Fatal(err)
	}
	if sm.Kind != "ServiceMonitor" || len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor = %+v; want one endpoint on port metrics, path /metrics", sm)
	}
}
