package helmchart

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The chart, and how the plain manifests are made from it: the chart
// rendered with its default values, as release "gpulet" in namespace
// "gpulet", by exactly Regenerate run from the repository root.
const (
	ChartDir         = "deployments/helm/gpulet"
	DropinValues     = "deployments/helm/gpulet/values-nvidia-dropin.yaml"
	ManifestsFile    = "deployments/manifests/gpulet.yaml"
	ReleaseName      = "gpulet"
	ReleaseNamespace = "gpulet"
	Regenerate       = "helm template gpulet deployments/helm/gpulet --namespace gpulet > deployments/manifests/gpulet.yaml" +
		"  (or: cd tests/e2e && go test ./chart -run TestManifestsMatchChart -update)"
	// PolicyName is the chart's ValidatingAdmissionPolicy (and binding)
	// for release ReleaseName.
	PolicyName = ReleaseName + "-node-resourceslices"
)

// Variant is one way of installing the chart that the tests render, lint
// and send to the API server.
type Variant struct {
	Name string
	// Args are helm's arguments after the chart: -f, --set, --set-file.
	Args []string
}

// nvidiaConfigMap is a config block as NVIDIA's chart takes it: named
// config files, one of them the default.
const nvidiaConfigMap = `config:
  map:
    default: |-
      version: v1
      flags:
        migStrategy: mixed
    time-sliced: |-
      version: v1
      sharing:
        timeSlicing:
          resources:
          - name: nvidia.com/gpu
            replicas: 4
  default: default
`

// Variants are the installs the tests cover: the defaults (what the plain
// manifests are), the NVIDIA drop-in preset with and without NVIDIA's
// named configs, every optional part switched on, and a simulated node.
func Variants(t testing.TB) []Variant {
	t.Helper()
	nvidia := filepath.Join(t.TempDir(), "nvidia-values.yaml")
	if err := os.WriteFile(nvidia, []byte(nvidiaConfigMap), 0o644); err != nil {
		t.Fatal(err)
	}
	return []Variant{
		{Name: "defaults"},
		{Name: "nvidia-dropin", Args: []string{"-f", DropinValues}},
		{Name: "nvidia-dropin-configmap", Args: []string{"-f", DropinValues, "-f", nvidia}},
		{Name: "everything", Args: []string{
			"--set", "dra.migManagement=true",
			"--set", "metrics.serviceMonitor.enabled=true",
			"--set", "metrics.prometheusRules.enabled=true",
			"--set", "metrics.dashboard.enabled=true",
			"--set", "metrics.dashboard.namespace=monitoring",
			"--set", "metrics.serviceMonitor.interval=30s",
			"--set", "metrics.serviceMonitor.endpoint.scheme=https",
			"--set", "metrics.webConfig.secretName=gpulet-metrics-web",
			"--set", "dra.deviceClasses.exclude={nvidia-gpu}",
			"--set", "runtimeClassName=nvidia",
			"--set", "driver.root=/run/nvidia/driver",
			"--set", "driver.libraryDir=/usr/lib/x86_64-linux-gnu",
			"--set", `serviceAccount.annotations.example\.com/owner=gpu-team`,
			"--set", "extraArgs={--v=2}",
		}},
		{Name: "simulated", Args: []string{"--set", "nvml=mock:dgx-h100", "--set", "nodeSelector=null"}},
	}
}

// RepoRoot is the repository's root directory, found from a test's
// working directory (tests/e2e/<package>).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ChartDir, "Chart.yaml")); err != nil {
		t.Fatalf("repository root not found from the test's directory: %v", err)
	}
	return dir
}

// Output runs helm in the repository root with empty config, cache and
// data directories of its own and returns stdout; an error carries stderr.
func Output(t testing.TB, helm string, args ...string) (string, error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(helm, args...)
	cmd.Dir = RepoRoot(t)
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w\n%s", err, stderr.String())
	}
	return stdout.String(), nil
}

// Run is Output that fails the test on error.
func Run(t testing.TB, helm string, args ...string) string {
	t.Helper()
	out, err := Output(t, helm, args...)
	if err != nil {
		t.Fatalf("helm %v: %v", args, err)
	}
	return out
}

// Template renders the chart as the manifests are made, plus the
// variant's arguments.
func Template(t testing.TB, helm string, v Variant) string {
	t.Helper()
	return Run(t, helm, append([]string{"template", ReleaseName, ChartDir, "--namespace", ReleaseNamespace}, v.Args...)...)
}
