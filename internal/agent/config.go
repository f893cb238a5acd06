package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"time"

	"k8s.io/klog/v2"

	configv1 "github.com/gpulet/gpulet/api/config/v1"
	"github.com/gpulet/gpulet/internal/filewatch"
)

// loadConfig reads the config file; no file name means the defaults.
func loadConfig(path string) (*configv1.Config, []string, error) {
	if path == "" {
		return configv1.Default(), nil, nil
	}
	return configv1.Load(path)
}

// configWatcher follows a config file as a mounted ConfigMap changes: the
// kubelet swaps a "..data" symlink in the file's directory, so the
// directory is watched, not the file, and the file is re-read whenever
// anything there changes. A change is applied only when the content
// differs; a file that does not parse is reported and the last good config
// stays in force.
type configWatcher struct {
	path string
	// debounce lets a burst of events (an editor's write, a symlink swap)
	// settle into one reload.
	debounce time.Duration
	onChange func(*configv1.Config, []string)
	onError  func(error)
	last     [sha256.Size]byte
}

func newConfigWatcher(path string, onChange func(*configv1.Config, []string), onError func(error)) *configWatcher {
	w := &configWatcher{path: path, debounce: 100 * time.Millisecond, onChange: onChange, onError: onError}
	if data, err := os.ReadFile(path); err == nil {
		w.last = sha256.Sum256(data)
	}
	return w
}

// run watches until ctx ends.
func (w *configWatcher) run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	err := filewatch.Watch(ctx, w.path, w.debounce, func() { w.reload(logger) })
	if err != nil {
		// No directory, no file to come: the defaults stay, as Load said.
		logger.Error(err, "Cannot watch the config file; config changes will not be applied until gpulet restarts", "file", w.path)
		<-ctx.Done()
	}
	return nil
}

func (w *configWatcher) reload(logger klog.Logger) {
	data, err := os.ReadFile(w.path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			// Mid-swap, or removed: keep what we have.
			logger.V(2).Info("Config file is gone for now; keeping the current config", "file", w.path)
			return
		}
		w.onError(fmt.Errorf("read config %s: %w", w.path, err))
		return
	}
	sum := sha256.Sum256(data)
	if bytes.Equal(sum[:], w.last[:]) {
		return
	}
	cfg, warnings, err := configv1.Parse(data, w.path)
	if err != nil {
		w.onError(err)
		return
	}
	w.last = sum
	w.onChange(cfg, warnings)
}
