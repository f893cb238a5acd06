// Command gpulet is the GPU node agent: it puts a node's NVIDIA GPUs into
// Kubernetes through the kubelet's device-plugin API and as a DRA driver,
// and tells Prometheus how they are used. See `gpulet help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `gpulet: the GPU node agent for Kubernetes.

Usage:
  gpulet serve      [flags]   run on a node (the DaemonSet mode)
  gpulet inventory  [flags]   print the GPUs, MIG devices and links this node has
  gpulet version              print the version
  gpulet help [command]       print help

Try it without a GPU:
  gpulet inventory --nvml mock:dgx-h100
`

// run is the whole program, so tests drive it like a user: arguments in,
// output and an exit code out.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		err = serveCommand(ctx, rest, stderr)
	case "inventory":
		err = inventoryCommand(ctx, rest, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, versionString())
	case "help", "-h", "--help":
		err = helpCommand(rest, stdout)
	default:
		fmt.Fprintf(stderr, "gpulet: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		// The flag package already printed what was wrong and the usage.
		return 2
	}
	fmt.Fprintf(stderr, "gpulet: %v\n", err)
	return 1
}

func helpCommand(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stdout, usage)
		return nil
	}
	switch args[0] {
	case "serve":
		fs, _ := serveFlags(stdout)
		fs.Usage()
	case "inventory":
		fs, _ := inventoryFlags(stdout)
		fs.Usage()
	default:
		fmt.Fprint(stdout, usage)
	}
	return nil
}
