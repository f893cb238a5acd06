package main

import (
	"fmt"
	"runtime"
)

// version and commit are set at build time with -ldflags "-X main.version=...".
var (
	version = "dev"
	commit  = "unknown"
)

func versionString() string {
	return fmt.Sprintf("gpulet %s (commit %s, %s, %s/%s)", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
