package cdi

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"k8s.io/klog/v2"
	"tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpulet/gpulet/internal/inventory"
)

// visibleDevicesEnv is the variable NVIDIA's runtime hooks read to decide
// which GPUs a container sees.
const visibleDevicesEnv = "NVIDIA_VISIBLE_DEVICES"

// deviceEdits are one device's container edits. They never hold
// NVIDIA_VISIBLE_DEVICES: the specs add it where it applies.
type deviceEdits struct {
	edits specs.ContainerEdits
	// key holds what the edits were computed from (minor numbers, MIG
	// instance ids), so a device that changes under its UUID is redone.
	key string
	// fromNVCDI is false for gpulet's minimal edits; fallbackReason then
	// says why nvcdi's were not used ("" when nvcdi was not tried).
	fromNVCDI      bool
	fallbackReason string
}

func gpuKey(gpu *inventory.GPU) string { return fmt.Sprintf("minor=%d", gpu.Minor) }

func migKey(gpu *inventory.GPU, mig *inventory.MigDevice) string {
	return fmt.Sprintf("minor=%d gi=%d ci=%d", gpu.Minor, mig.GIID, mig.CIID)
}

// Update computes the container edits of inv's devices: the common edits
// when the driver changed or nvcdi was unusable so far, and each device's
// edits when the device is new (a MIG device created on demand, say).
// Devices inv no longer has are forgotten. A device whose edits cannot be
// built is left out and named in the returned error; the others are kept.
func (g *Generator) Update(ctx context.Context, inv *inventory.Inventory) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.updateLocked(ctx, inv)
}

func (g *Generator) updateLocked(ctx context.Context, inv *inventory.Inventory) error {
	if inv == nil {
		return errors.New("cdi: update: no inventory")
	}
	logger := klog.FromContext(ctx)
	if g.common == nil || !g.commonNVCDI || g.driverVersion != inv.System.DriverVersion {
		common, err := g.nvcdiCommon()
		fromNVCDI := err == nil
		if err != nil {
			g.warnOnce(ctx, "nvcdi cannot build the common edits", "err", err, "driverRoot", g.opts.DriverRoot, "devRoot", g.opts.DevRoot)
			g.reason = err.Error()
			common = g.fallbackCommon()
		}
		if fromNVCDI != g.commonNVCDI || g.driverVersion != inv.System.DriverVersion {
			clear(g.devices) // device edits follow the common edits' source
		}
		g.common, g.commonNVCDI, g.driverVersion = common, fromNVCDI, inv.System.DriverVersion
		logger.V(2).Info("Computed common CDI edits", "nvcdi", fromNVCDI, "deviceNodes", len(common.DeviceNodes), "mounts", len(common.Mounts), "hooks", len(common.Hooks))
	}

	var (
		errs   []error
		want   = map[string]bool{}
		minors *migMinors
	)
	for i := range inv.GPUs {
		gpu := &inv.GPUs[i]
		want[gpu.UUID] = true
		if d := g.devices[gpu.UUID]; d == nil || d.key != gpuKey(gpu) {
			d, err := g.gpuEdits(ctx, gpu)
			if err != nil {
				errs = append(errs, err)
				delete(g.devices, gpu.UUID) // never keep edits of what the device was
			} else {
				g.devices[gpu.UUID] = d
			}
		}
		for j := range gpu.MigDevices {
			mig := &gpu.MigDevices[j]
			want[mig.UUID] = true
			if d := g.devices[mig.UUID]; d != nil && d.key == migKey(gpu, mig) {
				continue
			}
			if minors == nil {
				minors = g.readMigMinors()
			}
			d, err := g.migEdits(ctx, gpu, mig, minors)
			if err != nil {
				errs = append(errs, err)
				delete(g.devices, mig.UUID)
				continue
			}
			g.devices[mig.UUID] = d
		}
	}
	for uuid := range g.devices {
		if !want[uuid] {
			delete(g.devices, uuid)
		}
	}
	prev := g.mode
	g.setModeLocked()
	g.updatedAt = g.opts.Now()
	if g.mode != prev {
		logger.Info("CDI edits mode", "mode", g.mode, "reason", g.reason, "driverRoot", g.opts.DriverRoot)
	}
	logger.V(2).Info("Computed CDI device edits", "mode", g.mode, "devices", len(g.devices))
	return errors.Join(errs...)
}

// setModeLocked derives the mode, and why, from where the edits came
// from.
func (g *Generator) setModeLocked() {
	if !g.commonNVCDI {
		g.mode = ModeFallback // g.reason is the common edits'
		return
	}
	g.mode, g.reason = ModeNVCDI, ""
	for _, uuid := range slices.Sorted(maps.Keys(g.devices)) {
		if d := g.devices[uuid]; !d.fromNVCDI {
			g.mode, g.reason = ModeMixed, d.fallbackReason
			return
		}
	}
}

// nvcdiCommon asks nvcdi for the edits every container with a GPU needs:
// control nodes, driver libraries and tools, hooks.
func (g *Generator) nvcdiCommon() (*specs.ContainerEdits, error) {
	if g.lib == nil {
		return nil, g.libErr
	}
	e, err := g.lib.GetCommonEdits()
	if err != nil {
		return nil, fmt.Errorf("nvcdi common edits: %w", err)
	}
	if e == nil || e.ContainerEdits == nil {
		return nil, errors.New("nvcdi returned no common edits")
	}
	edits := *e.ContainerEdits
	// Common edits go to every container of the spec: they must never
	// hold a GPU's own node, whatever nvcdi does.
	edits.DeviceNodes = slices.DeleteFunc(slices.Clone(edits.DeviceNodes), func(n *specs.DeviceNode) bool {
		_, ok := gpuMinor(n.Path)
		return ok
	})
	if !hasNode(&edits, "/dev/nvidiactl") {
		return nil, fmt.Errorf("nvcdi found no /dev/nvidiactl character device under %s (a missing driver root, or plain files where mknod was not permitted)", g.opts.DevRoot)
	}
	return &edits, nil
}

// gpuEdits computes a whole GPU's edits: nvcdi's when the common edits are
// nvcdi's and nvcdi gives the GPU its own node, gpulet's otherwise.
func (g *Generator) gpuEdits(ctx context.Context, gpu *inventory.GPU) (*deviceEdits, error) {
	node := fmt.Sprintf("/dev/nvidia%d", gpu.Minor)
	d := &deviceEdits{key: gpuKey(gpu)}
	if g.commonNVCDI {
		e, err := g.nvcdiDevice(gpu.UUID, gpu.Minor)
		if err == nil {
			d.edits, d.fromNVCDI = e, true
			return d, nil
		}
		g.warnOnce(ctx, "nvcdi cannot build a GPU's edits", "gpu", gpu.UUID, "err", err)
		d.fallbackReason = err.Error()
	}
	n, ok := g.fallbackNode(node)
	if !ok {
		return nil, fmt.Errorf("GPU %s: %s under %s is not a character device", gpu.UUID, node, g.opts.DevRoot)
	}
	d.edits.DeviceNodes = []*specs.DeviceNode{n}
	return d, nil
}

// migEdits computes a MIG device's edits: the parent GPU's node and the
// GPU-instance and compute-instance capability nodes.
func (g *Generator) migEdits(ctx context.Context, gpu *inventory.GPU, mig *inventory.MigDevice, minors *migMinors) (*deviceEdits, error) {
	d := &deviceEdits{key: migKey(gpu, mig)}
	if g.commonNVCDI {
		e, err := g.nvcdiDevice(mig.UUID, gpu.Minor)
		if err == nil && slices.ContainsFunc(e.DeviceNodes, func(n *specs.DeviceNode) bool { return strings.HasPrefix(n.Path, "/dev/nvidia-caps/") }) {
			d.edits, d.fromNVCDI = e, true
			return d, nil
		}
		if err == nil {
			err = fmt.Errorf("nvcdi edits of %s hold no MIG capability nodes", mig.UUID)
		}
		g.warnOnce(ctx, "nvcdi cannot build a MIG device's edits", "migDevice", mig.UUID, "err", err)
		d.fallbackReason = err.Error()
	}
	if minors.err != nil {
		return nil, fmt.Errorf("MIG device %s: %w", mig.UUID, minors.err)
	}
	paths := []string{fmt.Sprintf("/dev/nvidia%d", gpu.Minor)}
	for _, c := range []string{
		fmt.Sprintf("gpu%d/gi%d/access", gpu.Minor, mig.GIID),
		fmt.Sprintf("gpu%d/gi%d/ci%d/access", gpu.Minor, mig.GIID, mig.CIID),
	} {
		minor, ok := minors.caps[c]
		if !ok {
			return nil, fmt.Errorf("MIG device %s: %s has no %s", mig.UUID, minors.path, c)
		}
		paths = append(paths, fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", minor))
	}
	for _, p := range paths {
		n, ok := g.fallbackNode(p)
		if !ok {
			return nil, fmt.Errorf("MIG device %s: %s under %s is not a character device", mig.UUID, p, g.opts.DevRoot)
		}
		d.edits.DeviceNodes = append(d.edits.DeviceNodes, n)
	}
	return d, nil
}

// nvcdiDevice asks nvcdi for one device's edits and checks that they hold
// the node of the GPU with the given minor and no other GPU's.
func (g *Generator) nvcdiDevice(uuid string, minor int) (specs.ContainerEdits, error) {
	devs, err := g.lib.GetDeviceSpecsByID(uuid)
	if err != nil {
		return specs.ContainerEdits{}, fmt.Errorf("nvcdi edits of %s: %w", uuid, err)
	}
	if len(devs) != 1 {
		return specs.ContainerEdits{}, fmt.Errorf("nvcdi edits of %s: got %d devices, want 1", uuid, len(devs))
	}
	e := devs[0].ContainerEdits
	found := false
	for _, n := range e.DeviceNodes {
		if m, ok := gpuMinor(n.Path); ok {
			if m != minor {
				return specs.ContainerEdits{}, fmt.Errorf("nvcdi edits of %s hold another GPU's node %s", uuid, n.Path)
			}
			found = true
		}
	}
	if !found {
		return specs.ContainerEdits{}, fmt.Errorf("nvcdi edits of %s lack /dev/nvidia%d (not a character device under %s?)", uuid, minor, g.opts.DevRoot)
	}
	return e, nil
}

// gpuMinor returns N for a GPU's own node /dev/nvidiaN.
func gpuMinor(path string) (int, bool) {
	s, ok := strings.CutPrefix(path, "/dev/nvidia")
	if !ok || s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

func hasNode(e *specs.ContainerEdits, path string) bool {
	return slices.ContainsFunc(e.DeviceNodes, func(n *specs.DeviceNode) bool { return n.Path == path })
}
