package bed

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"
)

// FeatureGates is what every component of the bed runs with. DRA core,
// prioritized lists, device taints, extended-resource DeviceClasses and
// device status are GA in 1.37 (locked on or on by default); the beta gates
// gpulet builds on are on by default too, but are named here so a change of
// default in a later Kubernetes cannot quietly turn off what the tests drive.
// Every component gets the same list, as in a real cluster.
const FeatureGates = "DRAPartitionableDevices=true,DRAConsumableCapacity=true,ResourceHealthStatus=true"

// apiServer is a restartable kube-apiserver: the same port, certificates and
// etcd on every start, so clients and the kubelet reconnect by themselves.
type apiServer struct {
	bin  string
	dir  string
	args []string
	url  string
	proc *process
}

type apiServerConfig struct {
	bin, dir, etcdURL                    string
	certFile, keyFile, caFile, saKeyFile string
}

func newAPIServer(cfg apiServerConfig) (*apiServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	return &apiServer{
		bin: cfg.bin,
		dir: cfg.dir,
		url: "https://127.0.0.1:" + strconv.Itoa(port),
		args: []string{
			"--etcd-servers=" + cfg.etcdURL,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port),
			"--cert-dir=" + filepath.Join(cfg.dir, "apiserver-certs"),
			"--tls-cert-file=" + cfg.certFile,
			"--tls-private-key-file=" + cfg.keyFile,
			"--client-ca-file=" + cfg.caFile,
			// Service-account tokens: the API server signs them (TokenRequest,
			// projected volumes) and verifies them with the same key.
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + cfg.saKeyFile,
			"--service-account-signing-key-file=" + cfg.saKeyFile,
			"--service-cluster-ip-range=10.96.0.0/24",
			// On loopback there is no routable address to publish in the
			// kubernetes Service's endpoints.
			"--endpoint-reconciler-type=none",
			// As a real cluster: the kubelet is limited to its own node's
			// objects by the Node authorizer and NodeRestriction, everything
			// else goes through RBAC. ServiceAccount and the other default
			// plugins (ValidatingAdmissionPolicy among them) stay on.
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true",
			"--runtime-config=resource.k8s.io/v1=true",
			"--feature-gates=" + FeatureGates,
			"--profiling=false",
			"--v=1",
		},
	}, nil
}

// start runs the API server and waits until /readyz answers ok.
func (a *apiServer) start(ctx context.Context, client kubernetes.Interface) error {
	var err error
	a.proc, err = startProcess(procSpec{
		name:    "kube-apiserver",
		path:    a.bin,
		args:    a.args,
		dir:     a.dir,
		logPath: filepath.Join(a.dir, "kube-apiserver.log"),
	})
	if err != nil {
		return err
	}
	err = poll(ctx, 90*time.Second, "kube-apiserver ready", func(ctx context.Context) (bool, error) {
		if err := a.proc.checkAlive(); err != nil {
			return false, err
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		return err == nil && string(body) == "ok", nil
	})
	if err != nil {
		a.proc.kill()
		return fmt.Errorf("%w; see %s", err, a.proc.spec.logPath)
	}
	return nil
}

// stop sends SIGTERM and SIGKILLs after 5s: kube-apiserver stops listening
// at once but, on loopback with watches open, lingers about 30s more before
// it exits, which only slows tests down.
func (a *apiServer) stop() {
	if a.proc != nil {
		a.proc.stop(5 * time.Second)
	}
}
