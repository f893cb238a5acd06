// Package filewatch follows one file the way editors and Kubernetes change
// it: by watching its directory, not the file, since an editor's
// rename-write and a ConfigMap update (the kubelet swaps a "..data"
// symlink) both replace the file rather than write to it.
package filewatch

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/klog/v2"
)

// Watch calls changed once the watch is in place (so no change between a
// caller's first read and the watch is missed), then each time something
// in path's directory changed and stayed quiet for settle, so a burst of
// events (truncate, write, rename) is one call; changed reads the file
// itself. It returns nil when ctx ends, and an error only when the watch
// cannot be set up.
func Watch(ctx context.Context, path string, settle time.Duration, changed func()) error {
	logger := klog.FromContext(ctx)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", path, err)
	}
	defer func() { _ = w.Close() }()
	if err := w.Add(filepath.Dir(path)); err != nil {
		return fmt.Errorf("watch %s: %w", path, err)
	}
	changed()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("watch " + path + ": closed")
			}
			logger.V(4).Info("Directory changed", "file", path, "event", ev.String())
			timer.Reset(settle)
		case err, ok := <-w.Errors:
			if ok {
				logger.Error(err, "Watching", "file", path)
			}
		case <-timer.C:
			changed()
		}
	}
}
