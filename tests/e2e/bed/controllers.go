package bed

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// startScheduler runs kube-scheduler with leader election off and no serving
// port: one scheduler, nothing scrapes it.
func startScheduler(bin, dir, kubeconfig string) (*process, error) {
	cfg := filepath.Join(dir, "kube-scheduler.yaml")
	text := fmt.Sprintf(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: %q
leaderElection:
  leaderElect: false
`, kubeconfig)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		return nil, err
	}
	return startProcess(procSpec{
		name: "kube-scheduler",
		path: bin,
		args: []string{
			"--config=" + cfg,
			"--secure-port=0",
			"--feature-gates=" + FeatureGates,
			"--v=2",
		},
		dir:     dir,
		logPath: filepath.Join(dir, "kube-scheduler.log"),
	})
}

// startControllerManager runs kube-controller-manager with every default
// controller: node lifecycle (removes a Ready node's not-ready taint),
// service accounts and their root CA config map, the ResourceClaim
// controller (claims from templates, release of claims of deleted pods),
// pod GC, namespace deletion. Each controller uses its own service account,
// as in a real cluster, so RBAC gaps show up here too.
func startControllerManager(bin, dir, kubeconfig, caFile, caKeyFile, saKeyFile string) (*process, error) {
	return startProcess(procSpec{
		name: "kube-controller-manager",
		path: bin,
		args: []string{
			"--kubeconfig=" + kubeconfig,
			"--leader-elect=false",
			"--secure-port=0",
			"--controllers=*",
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + saKeyFile,
			"--root-ca-file=" + caFile,
			"--cluster-signing-cert-file=" + caFile,
			"--cluster-signing-key-file=" + caKeyFile,
			// Notice a stopped kubelet sooner than the 50s default (the kubelet renews its lease every 10s), so fault
			// tests do not wait long for NotReady.
			"--node-monitor-grace-period=30s",
			"--feature-gates=" + FeatureGates,
			"--v=1",
		},
		dir:     dir,
		logPath: filepath.Join(dir, "kube-controller-manager.log"),
	})
}

const controllerStopGrace = 10 * time.Second
