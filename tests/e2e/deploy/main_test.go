// Package deploy_test checks what a platform team applies: the Helm chart
// in deployments/helm/gpulet, the plain manifests rendered from it, and the
// ValidatingAdmissionPolicy that keeps each gpulet to its own node's
// ResourceSlices, against the e2e bed's real kube-apiserver.
//
// The Helm binary is Helm itself, built from the Go module proxy at the
// version helmbin pins (see helmchart.Ensure), never a fake.
package deploy_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/gpulet/gpulet/tests/e2e/bed"
	"github.com/gpulet/gpulet/tests/e2e/helmchart"
)

// helm is the path of the Helm binary, or "" with helmErr saying why not.
var (
	helm    string
	helmErr error
)

func TestMain(m *testing.M) {
	// Built before the tests run, as the bed builds its binaries, so a cold
	// build does not count against go test's -timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	helm, helmErr = helmchart.Ensure(ctx, helmchart.Options{})
	cancel()
	if helmErr != nil {
		fmt.Fprintf(os.Stderr, "e2e: helm: %v\n", helmErr)
	}
	os.Exit(bed.Main(m))
}

// helmBin returns the Helm binary's path, failing the test if it could not
// be built.
func helmBin(t testing.TB) string {
	t.Helper()
	if helmErr != nil {
		t.Fatalf("helm %s could not be built: %v", helmchart.Version, helmErr)
	}
	return helm
}
