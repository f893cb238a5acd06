package cdi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"k8s.io/klog/v2"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
	"tags.cncf.io/container-device-interface/specs-go"
)

// ErrUnknownDevice is returned for a claim device whose UUID has no edits:
// it was not in the inventory last given to Update.
var ErrUnknownDevice = errors.New("device has no CDI edits: not in the inventory given to Update")

// ClaimDevice is one device prepared for a ResourceClaim.
type ClaimDevice struct {
	// Name is the device's name in the claim's allocation result, a DNS
	// label such as "gpu-4b9a1c2d0000"; the CDI device is named
	// "<claim UID>-<Name>".
	Name string
	// UUID is the physical GPU or MIG device.
	UUID string
	// Request is the claim request the device was allocated for. A
	// device's NVIDIA_VISIBLE_DEVICES lists the UUIDs of its request's
	// devices, so a container given one request sees exactly those.
	Request string
	// Env are further variables for containers given the device
	// ("KEY=value"), such as its sharing setting.
	Env []string
}

// Limits on what claims may name. Claim UIDs and device names come from
// the API server and end up in file names and specs.
const (
	maxClaimUIDLen = 64
	// maxClaimDevices is well above what an allocation result may hold (32).
	maxClaimDevices = 128
	maxEnvLen       = 4096
	maxEnvKeyLen    = 255
	maxEnvCount     = 64
)

var (
	// claimUIDPattern admits Kubernetes UIDs (lowercase UUIDs) and other
	// lowercase dash-separated tokens: nothing that can name a path.
	claimUIDPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	// deviceNamePattern is a DNS label, as DRA device names are.
	deviceNamePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	// envKeyPattern is an environment variable name; its length (at most
	// maxEnvKeyLen) is checked apart: a counted repeat would compile into
	// 254 copies of the class, 260 KB at every start.
	envKeyPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// ValidateClaimUID checks that uid is a claim UID gpulet accepts: at most
// 64 lowercase letters, digits and inner dashes, as Kubernetes UIDs are.
func ValidateClaimUID(uid string) error {
	switch {
	case uid == "":
		return errors.New("empty claim UID")
	case len(uid) > maxClaimUIDLen:
		return fmt.Errorf("claim UID %.80q... is %d bytes long, more than %d", uid, len(uid), maxClaimUIDLen)
	case !claimUIDPattern.MatchString(uid):
		return fmt.Errorf("claim UID %q: want lowercase letters, digits and inner dashes only (a Kubernetes UID)", uid)
	}
	return nil
}

// claimSpecPrefix starts every claim spec file name.
func (g *Generator) claimSpecPrefix() string { return g.opts.Vendor + "-claim_" }

// ClaimSpecPath is the file WriteClaimSpec writes for the claim:
// "<root>/<vendor>-claim_<uid>.json" (JSON: a claim spec is written on
// every Prepare, and encoding YAML cost more than the rest of it). It fails
// for a UID ValidateClaimUID refuses, so the path is always a file directly
// in the CDI root.
func (g *Generator) ClaimSpecPath(uid string) (string, error) {
	return claimSpecPath(g.opts.Root, g.claimSpecPrefix(), uid)
}

func claimSpecPath(root, prefix, uid string) (string, error) {
	if err := ValidateClaimUID(uid); err != nil {
		return "", err
	}
	p := filepath.Join(root, prefix+uid+claimSpecExt)
	if filepath.Dir(p) != root { // cannot happen after validation; kept as a last guard
		return "", fmt.Errorf("claim UID %q names a path outside %s", uid, root)
	}
	return p, nil
}

// WriteClaimSpec writes the claim's CDI spec: one CDI device per claim
// device, carrying that physical device's edits, NVIDIA_VISIBLE_DEVICES
// and the device's Env. It returns the devices' fully qualified CDI
// names, in order. Writing the same claim again replaces its spec.
func (g *Generator) WriteClaimSpec(ctx context.Context, claimUID string, devices []ClaimDevice) ([]string, error) {
	path, err := g.ClaimSpecPath(claimUID)
	if err != nil {
		return nil, fmt.Errorf("write claim CDI spec: %w", err)
	}
	if len(devices) == 0 || len(devices) > maxClaimDevices {
		return nil, fmt.Errorf("write CDI spec of claim %s: %d devices, want 1 to %d", claimUID, len(devices), maxClaimDevices)
	}
	var errs []error
	visible := map[string][]string{} // request -> UUIDs
	seen := map[string]bool{}
	for i, d := range devices {
		if err := validateClaimDevice(d); err != nil {
			errs = append(errs, fmt.Errorf("device %d: %w", i, err))
			continue
		}
		if seen[d.Name] {
			errs = append(errs, fmt.Errorf("device %d: name %q appears twice", i, d.Name))
		}
		seen[d.Name] = true
		if !slices.Contains(visible[d.Request], d.UUID) { // a shared GPU may come twice
			visible[d.Request] = append(visible[d.Request], d.UUID)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("write CDI spec of claim %s: %w", claimUID, errors.Join(errs...))
	}

	names := make([]string, 0, len(devices))
	devs := make([]specs.Device, 0, len(devices))
	g.mu.Lock()
	for _, d := range devices {
		de := g.devices[d.UUID]
		if de == nil {
			errs = append(errs, fmt.Errorf("device %q (%.80q): %w", d.Name, d.UUID, ErrUnknownDevice))
			continue
		}
		edits := de.edits
		edits.Env = append(slices.Clip(edits.Env), visibleDevicesEnv+"="+strings.Join(visible[d.Request], ","))
		edits.Env = append(edits.Env, d.Env...)
		name := claimUID + "-" + d.Name
		devs = append(devs, specs.Device{Name: name, ContainerEdits: edits})
		names = append(names, parser.QualifiedName(g.opts.Vendor, g.opts.Class, name))
	}
	spec, err := g.newSpec(devs)
	g.mu.Unlock()
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("write CDI spec of claim %s: %w", claimUID, errors.Join(errs...))
	}
	if err := writeClaimSpec(path, spec); err != nil {
		return nil, fmt.Errorf("write CDI spec of claim %s: %w", claimUID, err)
	}
	klog.FromContext(ctx).V(3).Info("Wrote claim CDI spec", "claim", claimUID, "path", path, "devices", names)
	return names, nil
}

// validateClaimDevice checks what the API server and the claim's
// configuration put in a claim device.
func validateClaimDevice(d ClaimDevice) error {
	if !deviceNamePattern.MatchString(d.Name) {
		return fmt.Errorf("device name %.80q: want a DNS label (lowercase letters, digits and inner dashes, at most 63)", d.Name)
	}
	if d.UUID == "" {
		return fmt.Errorf("device %q: no UUID", d.Name)
	}
	if len(d.Env) > maxEnvCount {
		return fmt.Errorf("device %q: %d environment variables, more than %d", d.Name, len(d.Env), maxEnvCount)
	}
	for _, e := range d.Env {
		key, value, ok := strings.Cut(e, "=")
		switch {
		case len(e) > maxEnvLen:
			return fmt.Errorf("device %q: environment variable %.40q... is longer than %d bytes", d.Name, e, maxEnvLen)
		case !ok || len(key) > maxEnvKeyLen || !envKeyPattern.MatchString(key):
			return fmt.Errorf("device %q: environment variable %q: want KEY=value with KEY of letters, digits and underscores", d.Name, e)
		case key == visibleDevicesEnv:
			return fmt.Errorf("device %q: environment variable %s is gpulet's to set", d.Name, key)
		case strings.ContainsFunc(value, func(r rune) bool { return r < 0x20 || r == 0x7f }):
			return fmt.Errorf("device %q: environment variable %q holds control characters", d.Name, e)
		}
	}
	if err := cdi.ValidateEnv(d.Env); err != nil {
		return fmt.Errorf("device %q: %w", d.Name, err)
	}
	return nil
}

// RemoveClaimSpec removes the claim's CDI spec. Removing a spec that is
// not there succeeds.
func (g *Generator) RemoveClaimSpec(ctx context.Context, claimUID string) error {
	path, err := g.ClaimSpecPath(claimUID)
	if err != nil {
		return fmt.Errorf("remove claim CDI spec: %w", err)
	}
	// Also a YAML spec an earlier gpulet wrote.
	for _, p := range []string{path, strings.TrimSuffix(path, claimSpecExt) + ".yaml"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove CDI spec of claim %s: %w", claimUID, err)
		}
	}
	klog.FromContext(ctx).V(3).Info("Removed claim CDI spec", "claim", claimUID, "path", path)
	return nil
}

// ClaimSpecUIDs lists the UIDs of the claims whose specs are in the CDI
// root, sorted, so that specs a crash orphaned can be removed. Files whose
// names hold no valid UID are not gpulet's and are left out.
func (g *Generator) ClaimSpecUIDs() ([]string, error) {
	entries, err := os.ReadDir(g.opts.Root)
	if err != nil {
		return nil, fmt.Errorf("list claim CDI specs: %w", err)
	}
	var uids []string
	for _, e := range entries {
		uid, ok := strings.CutPrefix(e.Name(), g.claimSpecPrefix())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		for _, ext := range []string{claimSpecExt, ".yaml"} {
			if u, ok := strings.CutSuffix(uid, ext); ok && ValidateClaimUID(u) == nil && !slices.Contains(uids, u) {
				uids = append(uids, u)
			}
		}
	}
	slices.Sort(uids)
	return uids, nil
}
