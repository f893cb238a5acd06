package gpusim

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"

	"github.com/gpulet/gpulet/internal/filewatch"
)

// watchSettle is how long Watch waits after the last change in the
// directory before it reloads, so an editor's burst of events (truncate,
// write, rename) makes one reload.
const watchSettle = 30 * time.Millisecond

// Watch applies the state file at path now and after every change until
// ctx ends, then returns nil. It watches the file's directory rather than
// the file, so rename-writes (editors, WriteState) and Kubernetes ConfigMap
// updates (a symlink swap of ..data) are seen. A file that fails to load
// is logged, passed to the WithErrorHandler callback and kept as
// LastError; the last good state stays in force. Only a watch that cannot
// be set up is returned as an error.
func (s *Simulator) Watch(ctx context.Context, path string) error {
	logger := klog.FromContext(ctx).WithValues("file", path)
	if _, err := os.Stat(filepath.Dir(path)); err != nil {
		return fmt.Errorf("watch state file %s: %w", path, err)
	}
	var last []byte
	reload := func() {
		data, err := os.ReadFile(path)
		if err == nil && last != nil && bytes.Equal(data, last) {
			return
		}
		if err == nil && len(bytes.TrimSpace(data)) == 0 {
			// A writer that truncates before writing; its write follows.
			logger.V(2).Info("State file is empty, waiting for its contents")
			return
		}
		if err == nil {
			var st *State
			if st, err = Parse(data, path); err == nil {
				err = s.apply(st, path)
			}
		} else {
			err = fmt.Errorf("read state file: %w", err)
		}
		if err != nil {
			logger.Error(err, "Keeping the last good GPU simulator state")
			if s.onError != nil {
				s.onError(err)
			}
			s.setLastError(err)
			last = nil
			return
		}
		s.setLastError(nil)
		last = data
		logger.V(2).Info("Applied GPU simulator state")
	}
	return filewatch.Watch(ctx, path, watchSettle, reload)
}
