package nvml_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi"

	"github.com/gpulet/gpulet/internal/nvml/gpusim"
)

// TestNewCDILib checks that nvcdi reads the adapter's NVML: a GPU's edits
// hold its own node, and nvcdi's Init/Shutdown pairs leave the adapter
// initialised.
func TestNewCDILib(t *testing.T) {
	const state = "machine: dgx-h100\ngpus: 2\n"
	a, _ := open(t, state)
	st, err := gpusim.Parse([]byte(state), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "driver-root")
	if err := gpusim.WriteDriverRoot(root, st); err != nil {
		t.Fatal(err)
	}
	lib, err := a.NewCDILib(nvcdi.WithDriverRoot(root), nvcdi.WithVendor("gpulet.dev"), nvcdi.WithLogger(quiet{}))
	if err != nil {
		t.Fatal(err)
	}
	devs, err := a.Devices()
	if err != nil {
		t.Fatal(err)
	}
	specs, err := lib.GetDeviceSpecsByID(devs[1].UUID)
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 1 {
		t.Fatalf("%d device specs, want 1", len(specs))
	}
	var nodes []string
	for _, n := range specs[0].ContainerEdits.DeviceNodes {
		nodes = append(nodes, n.Path)
	}
	// nvcdi takes only character devices, which need root to create.
	if os.Geteuid() == 0 && !slices.Equal(nodes, []string{"/dev/nvidia1"}) {
		t.Errorf("GPU 1's device nodes %v, want [/dev/nvidia1]", nodes)
	}
	if _, err := a.System(); err != nil {
		t.Errorf("adapter after nvcdi's queries: %v", err)
	}
}

// quiet drops nvcdi's log, which warns about every optional file.
type quiet struct{}

func (quiet) Debugf(string, ...any)   {}
func (quiet) Errorf(string, ...any)   {}
func (quiet) Infof(string, ...any)    {}
func (quiet) Warningf(string, ...any) {}
func (quiet) Tracef(string, ...any)   {}
