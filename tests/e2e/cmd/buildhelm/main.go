// Command buildhelm puts the Helm binary the deployment tests run into the
// e2e binary cache (built from the Go module proxy at the version
// helmchart.Version pins) and prints its path. Run it from tests/e2e:
//
//	go run ./cmd/buildhelm
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/gpulet/gpulet/tests/e2e/helmchart"
)

func main() {
	cacheRoot := flag.String("cache", "", "cache root (default: $GPULET_E2E_CACHE or <repo>/.cache/e2e)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	bin, err := helmchart.Ensure(ctx, helmchart.Options{CacheRoot: *cacheRoot})
	if err != nil {
		fmt.Fprintln(os.Stderr, "buildhelm:", err)
		os.Exit(1)
	}
	fmt.Println(bin)
}
