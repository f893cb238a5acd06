package nvml

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"

	"github.com/gpulet/gpulet/internal/nvml/gpusim"
)

// Spec says where NVML comes from: the real library, or the simulator
// started from a named machine or a state file.
type Spec struct {
	// Mock is false for the real library.
	Mock bool
	// Machine is the simulated machine ("dgx-h100") when no state file is given.
	Machine string
	// StateFile is the simulator's state file, watched for changes.
	StateFile string
}

// ParseSpec parses the --nvml flag: "real", "mock:<machine>" or
// "mock:<path to a state file>".
func ParseSpec(s string) (Spec, error) {
	if s == "real" {
		return Spec{}, nil
	}
	rest, ok := strings.CutPrefix(s, "mock:")
	if !ok || rest == "" {
		return Spec{}, fmt.Errorf("%q: want real, mock:<machine> (one of %s) or mock:<path to a state file>", s, strings.Join(gpusim.Machines(), ", "))
	}
	for _, m := range gpusim.Machines() {
		if rest == m {
			return Spec{Mock: true, Machine: m}, nil
		}
	}
	if strings.ContainsRune(rest, os.PathSeparator) || strings.HasSuffix(rest, ".yaml") || strings.HasSuffix(rest, ".yml") {
		return Spec{Mock: true, StateFile: rest}, nil
	}
	return Spec{}, fmt.Errorf("%q: unknown machine %q (known: %s); a state file path must contain a / or end in .yaml", s, rest, strings.Join(gpusim.Machines(), ", "))
}

// String renders the spec as the flag would read it.
func (s Spec) String() string {
	switch {
	case !s.Mock:
		return "real"
	case s.StateFile != "":
		return "mock:" + s.StateFile
	}
	return "mock:" + s.Machine
}

// BackendOptions configure Open.
type BackendOptions struct {
	Spec Spec
	// MockDir is where a simulated node keeps what it writes: the state
	// file of a "mock:<machine>" spec (so a person can edit it to inject
	// faults) and the mock driver root. Empty means nothing is written.
	MockDir string
	// Watch makes the simulator follow edits of its state file.
	Watch bool
	// NodeSeed varies a simulated machine's UUIDs (the node name, say), so
	// two simulated nodes never share one. Used when gpulet starts the
	// state itself from "mock:<machine>".
	NodeSeed string
}

// Backend is an initialised Adapter and, on the mock backend, the
// simulator behind it.
type Backend struct {
	*Adapter
	// Sim is nil on real hardware.
	Sim *gpusim.Simulator
	// StateFile is the simulator's state file ("" if none on disk).
	StateFile string
	// DriverRoot is the simulated driver root ("" on real hardware or
	// when nothing is written).
	DriverRoot string

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Open loads NVML as the spec says and initialises it. A failure to load
// the real library is one line that says so and how to try the mock.
func Open(ctx context.Context, opts BackendOptions) (*Backend, error) {
	if !opts.Spec.Mock {
		a := New(gonvml.New())
		if err := a.Init(); err != nil {
			if errors.Is(err, ErrLibraryNotFound) || errors.Is(err, ErrDriverNotLoaded) {
				return nil, fmt.Errorf("%w; to try gpulet without a GPU use --nvml mock:dgx-h100", err)
			}
			return nil, err
		}
		return &Backend{Adapter: a}, nil
	}
	return openMock(ctx, opts)
}

func openMock(ctx context.Context, opts BackendOptions) (*Backend, error) {
	b := &Backend{StateFile: opts.Spec.StateFile}
	var state *gpusim.State
	var err error
	switch {
	case b.StateFile != "":
		state, err = gpusim.Load(b.StateFile)
	case opts.MockDir != "":
		// Keep a state file the user may have edited; start one otherwise.
		b.StateFile = filepath.Join(opts.MockDir, opts.Spec.Machine+".yaml")
		state, err = gpusim.Load(b.StateFile)
		if errors.Is(err, os.ErrNotExist) {
			if state, err = gpusim.DefaultState(opts.Spec.Machine); err == nil {
				state.NodeSeed = opts.NodeSeed
				err = gpusim.WriteState(b.StateFile, state)
			}
		}
	default:
		if state, err = gpusim.DefaultState(opts.Spec.Machine); err == nil {
			state.NodeSeed = opts.NodeSeed
		}
	}
	if err != nil {
		return nil, fmt.Errorf("mock NVML: %w", err)
	}
	sim, err := gpusim.New(state)
	if err != nil {
		return nil, fmt.Errorf("mock NVML: %w", err)
	}
	b.Sim = sim
	b.Adapter = New(sim.Interface())
	if err := b.Init(); err != nil {
		return nil, err
	}
	if opts.MockDir != "" {
		b.DriverRoot = filepath.Join(opts.MockDir, "driver-root")
		if err := gpusim.WriteDriverRoot(b.DriverRoot, state); err != nil {
			return nil, fmt.Errorf("mock NVML: write driver root: %w", err)
		}
	}
	if opts.Watch && b.StateFile != "" {
		wctx, cancel := context.WithCancel(ctx)
		b.cancel = cancel
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			if err := sim.Watch(wctx, b.StateFile); err != nil && wctx.Err() == nil {
				klog.FromContext(ctx).Error(err, "Stopped watching the mock state file", "file", b.StateFile)
			}
		}()
	}
	return b, nil
}

// Close stops watching and shuts NVML down.
func (b *Backend) Close() error {
	if b.cancel != nil {
		b.cancel()
	}
	b.wg.Wait()
	return b.Shutdown()
}
