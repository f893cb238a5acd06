package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"k8s.io/klog/v2"

	"github.com/gpulet/gpulet/internal/agent"
	"github.com/gpulet/gpulet/internal/nvml"
)

// nvmlFlag is the --nvml flag: checked when it is set, so a typo is an
// error that names the flag.
type nvmlFlag struct{ spec nvml.Spec }

func (f *nvmlFlag) String() string { return f.spec.String() }

func (f *nvmlFlag) Set(s string) error {
	spec, err := nvml.ParseSpec(s)
	if err != nil {
		return err
	}
	f.spec = spec
	return nil
}

// verbosityFlag sets klog's verbosity.
type verbosityFlag struct{ level string }

func (f *verbosityFlag) String() string { return f.level }

func (f *verbosityFlag) Set(s string) error {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	klog.InitFlags(fs)
	if err := fs.Set("v", s); err != nil {
		return fmt.Errorf("want a number >= 0, got %q", s)
	}
	f.level = s
	return nil
}

// serveArgs are serve's flags before they become agent options.
type serveArgs struct {
	opts agent.Options
	nvml nvmlFlag
}

func serveFlags(out io.Writer) (*flag.FlagSet, *serveArgs) {
	a := &serveArgs{}
	fs := newFlagSet("serve", "Runs on a node: discovers its GPUs and serves them to the kubelet and Prometheus until SIGTERM.", out)
	fs.Var(&a.nvml, "nvml", "where NVML comes from: real, mock:<machine> (dgx-a100, dgx-h100, dgx-h200, dgx-b200) or mock:<state file>")
	fs.StringVar(&a.opts.ConfigFile, "config", "", "config file (gpulet's, or an NVIDIA device plugin config as is); watched and reloaded")
	fs.StringVar(&a.opts.NodeName, "node-name", "", "name of this Kubernetes node (default: the host name)")
	fs.StringVar(&a.opts.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config)")
	fs.StringVar(&a.opts.KubeletRoot, "kubelet-root", "/var/lib/kubelet", "the kubelet's root directory")
	fs.StringVar(&a.opts.CDIRoot, "cdi-root", "/var/run/cdi", "directory CDI specs are written to")
	fs.StringVar(&a.opts.CDIHookPath, "cdi-hook-path", "/usr/bin/nvidia-cdi-hook", "nvidia-cdi-hook on the host, named in CDI specs")
	fs.StringVar(&a.opts.StateDir, "state-dir", "/var/lib/gpulet", "directory for gpulet's checkpoints and the simulator's files")
	fs.StringVar(&a.opts.MetricsAddress, "metrics-address", ":9402", "address of the Prometheus endpoint (9400 is dcgm-exporter's)")
	fs.StringVar(&a.opts.WebConfigFile, "web-config-file", "", "exporter-toolkit web config for the metrics endpoint (TLS, basic auth)")
	fs.StringVar(&a.opts.ProcRoot, "proc-root", "/proc", "where processes' cgroups are read to attribute GPU memory to pods (the host's /proc, mounted)")
	fs.Var(&verbosityFlag{level: "0"}, "v", "log verbosity (klog)")
	return fs, a
}

func serveCommand(ctx context.Context, args []string, stderr io.Writer) error {
	fs, a := serveFlags(stderr)
	if err := parseFlags(fs, args, osLookupEnv); err != nil {
		return err
	}
	opts := a.opts
	opts.NVML = a.nvml.spec
	if opts.NodeName == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("--node-name is not set and the host name cannot be read: %w", err)
		}
		opts.NodeName = host
	}
	logger := klog.NewKlogr().WithName("gpulet")
	return agent.Run(klog.NewContext(ctx, logger), opts)
}
