// Command buildbins fills the end-to-end bed's binary cache ahead of a test
// run: etcd, kube-apiserver, kube-scheduler, kube-controller-manager and
// kubelet at the versions tests/e2e/go.mod pins. Run it from tests/e2e:
//
//	go run ./cmd/buildbins
//
// It builds only what is missing or stale and prints the cached paths.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/gpulet/gpulet/tests/e2e/bed"
)

func main() {
	cacheRoot := flag.String("cache", "", "cache root (default: $GPULET_E2E_CACHE or <repo>/.cache/e2e)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	bins, err := bed.EnsureBinaries(ctx, bed.BuildOptions{CacheRoot: *cacheRoot})
	if err != nil {
		fmt.Fprintln(os.Stderr, "buildbins:", err)
		os.Exit(1)
	}
	for _, p := range []string{bins.Etcd, bins.APIServer, bins.Scheduler, bins.ControllerManager, bins.Kubelet} {
		fmt.Println(p)
	}
}
