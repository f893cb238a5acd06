package cdi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
	"tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpulet/gpulet/internal/inventory"
)

// tempSuffix marks the temporary files specs are written through. The CDI
// library reads only *.yaml and *.json, so it never sees them.
const tempSuffix = ".tmp-"

// NodeSpecPath is where WriteNodeSpec writes: "<root>/<vendor>-<class>.yaml".
func (g *Generator) NodeSpecPath() string {
	return filepath.Join(g.opts.Root, cdi.GenerateSpecName(g.opts.Vendor, g.opts.Class)+".yaml")
}

// WriteNodeSpec brings the edits up to date with inv (see Update) and
// writes the node spec: one CDI device per GPU and per existing MIG
// device, named by UUID (see DeviceName). Devices inv no longer has
// disappear from it. A device whose edits cannot be built is left out and
// named in the returned error; the spec is still written with the others.
// With no device at all the spec is removed, since CDI forbids an empty
// one.
func (g *Generator) WriteNodeSpec(ctx context.Context, inv *inventory.Inventory) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	updateErr := g.updateLocked(ctx, inv)
	if inv == nil {
		return updateErr
	}
	errs := []error{updateErr}
	var devs []specs.Device
	add := func(uuid string) {
		d := g.devices[uuid]
		if d == nil {
			return // named in updateErr
		}
		if err := parser.ValidateDeviceName(uuid); err != nil {
			errs = append(errs, fmt.Errorf("device %q cannot be a CDI device name: %w", uuid, err))
			return
		}
		edits := d.edits
		if !g.commonNVCDI {
			// Without nvcdi's libraries a runtime hook must bring them, and
			// it reads which GPUs from here. With several devices the last
			// one's value wins: fewer GPUs listed, never another's.
			edits.Env = append(slices.Clip(edits.Env), visibleDevicesEnv+"="+uuid)
		}
		devs = append(devs, specs.Device{Name: uuid, ContainerEdits: edits})
	}
	for i := range inv.GPUs {
		add(inv.GPUs[i].UUID)
		for j := range inv.GPUs[i].MigDevices {
			add(inv.GPUs[i].MigDevices[j].UUID)
		}
	}
	path := g.NodeSpecPath()
	if len(devs) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove node CDI spec: %w", err))
		}
		return errors.Join(errs...)
	}
	spec, err := g.newSpec(devs)
	if err != nil {
		return err
	}
	if err := writeSpec(path, spec); err != nil {
		errs = append(errs, err)
	} else {
		klog.FromContext(ctx).V(2).Info("Wrote node CDI spec", "path", path, "devices", len(devs), "mode", g.mode)
	}
	return errors.Join(errs...)
}

// newSpec makes a spec of gpulet's kind with the common edits, its paths
// the host's. Callers hold g.mu.
func (g *Generator) newSpec(devs []specs.Device) (*specs.Spec, error) {
	s := &specs.Spec{Kind: g.Kind(), Devices: devs}
	if g.common != nil {
		s.ContainerEdits = *g.common
	}
	if g.toHost == nil {
		return s, nil
	}
	// The transformer edits in place; the cached edits must stay as
	// gpulet sees them, so it works on a deep copy.
	data, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("copy spec: %w", err)
	}
	var copied specs.Spec
	if err := json.Unmarshal(data, &copied); err != nil {
		return nil, fmt.Errorf("copy spec: %w", err)
	}
	if err := g.toHost.Transform(&copied); err != nil {
		return nil, fmt.Errorf("rewrite spec paths for the host: %w", err)
	}
	return &copied, nil
}

// claimSpecExt is the extension of claim specs.
const claimSpecExt = ".json"

// writeClaimSpec writes a claim's spec: validated in memory with the CDI
// library's validators, encoded as JSON, written to a temporary file and
// renamed into place, so a runtime never reads half a spec. The file is
// synced before the rename: on filesystems that do not order a file's data
// before its rename (xfs; ext4 mounted noauto_da_alloc) a power loss could
// otherwise leave an empty spec under the final name. The directory is not
// synced: a claim spec is derived state, and the claim's ledger record,
// durable before Prepare returns, is enough to write it again (the DRA
// driver does so for every record when it starts, and removes specs a
// crash left without a record). The DRA driver writes the spec while the
// ledger syncs, so the two syncs overlap.
func writeClaimSpec(path string, spec *specs.Spec) error {
	version, err := specs.MinimumRequiredVersion(spec)
	if err != nil {
		return fmt.Errorf("CDI spec %s: %w", path, err)
	}
	spec.Version = version
	if err := validateSpec(spec); err != nil {
		return fmt.Errorf("CDI spec %s is invalid, not written: %w", path, err)
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("CDI spec %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+tempSuffix+"*")
	if err != nil {
		return fmt.Errorf("write CDI spec %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }() // no-op once renamed
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write CDI spec %s: %w", path, err)
	}
	return nil
}

// validateSpec checks a spec in memory as the CDI library checks one it
// reads: version, vendor and class, the spec's edits, and each device's
// name and edits.
func validateSpec(spec *specs.Spec) error {
	if err := specs.ValidateVersion(spec); err != nil {
		return err
	}
	vendor, class := parser.ParseQualifier(spec.Kind)
	if err := parser.ValidateVendorName(vendor); err != nil {
		return err
	}
	if err := parser.ValidateClassName(class); err != nil {
		return err
	}
	if err := (&cdi.ContainerEdits{ContainerEdits: &spec.ContainerEdits}).Validate(); err != nil {
		return err
	}
	if len(spec.Devices) == 0 {
		return errors.New("no devices")
	}
	seen := make(map[string]bool, len(spec.Devices))
	for i := range spec.Devices {
		d := &spec.Devices[i]
		if err := parser.ValidateDeviceName(d.Name); err != nil {
			return err
		}
		if seen[d.Name] {
			return fmt.Errorf("device %q appears twice", d.Name)
		}
		seen[d.Name] = true
		e := &cdi.ContainerEdits{ContainerEdits: &d.ContainerEdits}
		if len(d.ContainerEdits.Env)+len(d.ContainerEdits.DeviceNodes)+len(d.ContainerEdits.Hooks)+len(d.ContainerEdits.Mounts) == 0 {
			return fmt.Errorf("device %q has no edits", d.Name)
		}
		if err := e.Validate(); err != nil {
			return fmt.Errorf("device %q: %w", d.Name, err)
		}
	}
	return nil
}

// writeSpec validates spec with the CDI library and replaces path with it
// so that a crash leaves the old spec or the new one: temporary file,
// fsync, validation of what is on disk, rename, fsync of the directory.
// (internal/atomicfile would do all but the validation, which the CDI
// library offers only for a spec read from a file; its own WriteSpec
// does not fsync.)
func writeSpec(path string, spec *specs.Spec) error {
	version, err := specs.MinimumRequiredVersion(spec)
	if err != nil {
		return fmt.Errorf("CDI spec %s: %w", path, err)
	}
	spec.Version = version
	data, err := yaml.Marshal(spec)
	if err != nil {
		return fmt.Errorf("CDI spec %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+tempSuffix+"*")
	if err != nil {
		return fmt.Errorf("write CDI spec %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }() // no-op once renamed
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Chmod(0o644); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if _, err := cdi.ReadSpec(tmp, 0); err != nil {
		return fmt.Errorf("CDI spec %s is invalid, not written: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write CDI spec %s: %w", path, err)
	}
	return syncDir(dir)
}

// syncDir makes a rename or removal in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer func() { _ = d.Close() }()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
