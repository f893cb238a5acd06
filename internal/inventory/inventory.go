// Package inventory is the node's device model as pure data: the GPUs and
// MIG devices discovery found, with stable names, NVLink domains and the
// MIG placements each GPU offers. Every surface (device plugin, DRA,
// metrics, CDI) reads it; nothing in it talks to NVML.
package inventory

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	"github.com/gpulet/gpulet/internal/nvml"
)

// Inventory is what one node has.
type Inventory struct {
	System nvml.System `json:"system"`
	// GPUs are sorted by NVML index.
	GPUs []GPU `json:"gpus"`
}

// GPU is a physical GPU with its stable name.
type GPU struct {
	nvml.Device
	// Name is stable across restarts and index shifts: it comes from the
	// UUID. It is a valid DNS label, usable as a DRA device name.
	Name string `json:"deviceName"`
	// NVLinkDomain names the set of GPUs reachable from this one over
	// NVLink (directly or through NVSwitch); empty when it has no NVLink.
	NVLinkDomain string `json:"nvlinkDomain,omitempty"`
	// MigDevices are the MIG devices that exist now, with their names.
	MigDevices []MigDevice `json:"migDevices,omitempty"`
}

// MigDevice is an existing MIG device with its stable name.
type MigDevice struct {
	nvml.MigDevice
	Name string `json:"deviceName"`
}

// MigPlacement is one place a MIG device of one profile can be created on
// a GPU: a profile at a start slice.
type MigPlacement struct {
	// Name is a stable DNS label, usable as a DRA device name.
	Name      string          `json:"name"`
	Parent    string          `json:"parent"`
	Profile   nvml.MigProfile `json:"profile"`
	Placement nvml.Placement  `json:"placement"`
}

// Build turns discovery's output into the node's inventory.
func Build(sys nvml.System, devices []nvml.Device) *Inventory {
	inv := &Inventory{System: sys}
	shortLen := shortIDLen(devices)
	for _, d := range devices {
		g := GPU{Device: d, Name: "gpu-" + shortID(d.UUID, shortLen)}
		if d.MIG != nil {
			for _, md := range d.MIG.Devices {
				g.MigDevices = append(g.MigDevices, MigDevice{
					MigDevice: md,
					Name:      MigPlacementName(g.Name, md.Profile, md.Placement.Start),
				})
			}
		}
		inv.GPUs = append(inv.GPUs, g)
	}
	sort.Slice(inv.GPUs, func(i, j int) bool { return inv.GPUs[i].Index < inv.GPUs[j].Index })
	assignNVLinkDomains(inv.GPUs)
	return inv
}

// GPU returns the GPU with the given UUID.
func (inv *Inventory) GPU(uuid string) (*GPU, bool) {
	for i := range inv.GPUs {
		if inv.GPUs[i].UUID == uuid {
			return &inv.GPUs[i], true
		}
	}
	return nil, false
}

// MigDevice returns the MIG device with the given UUID and its parent.
func (inv *Inventory) MigDevice(uuid string) (*MigDevice, *GPU, bool) {
	for i := range inv.GPUs {
		g := &inv.GPUs[i]
		for j := range g.MigDevices {
			if g.MigDevices[j].UUID == uuid {
				return &g.MigDevices[j], g, true
			}
		}
	}
	return nil, nil, false
}

// MigEnabled reports whether the GPU is in MIG mode now.
func (g *GPU) MigEnabled() bool { return g.MIG != nil && g.MIG.Enabled }

// Placements lists every MIG placement the GPU offers (profile × start
// slice), whether or not something occupies it now. Empty unless MIG mode
// is enabled.
func (g *GPU) Placements() []MigPlacement {
	if !g.MigEnabled() {
		return nil
	}
	var out []MigPlacement
	for _, p := range g.MIG.Profiles {
		for _, pl := range p.Placements {
			out = append(out, MigPlacement{
				Name:      MigPlacementName(g.Name, p.Name, pl.Start),
				Parent:    g.UUID,
				Profile:   p,
				Placement: pl,
			})
		}
	}
	return out
}

// MigPlacementName names a MIG placement of a GPU: "<gpu>-mig-1g10gb-3"
// for profile 1g.10gb at start slice 3. Profile punctuation is dropped so
// the name stays a DNS label ("1g.10gb+me" becomes "1g10gbme").
func MigPlacementName(gpuName, profile string, start int) string {
	var b strings.Builder
	for _, r := range strings.ToLower(profile) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
	}
	return fmt.Sprintf("%s-mig-%s-%d", gpuName, b.String(), start)
}

// shortIDLen is how many hex digits of the UUID names use: 12 unless two
// GPUs of the node share those, then the whole UUID.
func shortIDLen(devices []nvml.Device) int {
	seen := make(map[string]bool, len(devices))
	for _, d := range devices {
		id := shortID(d.UUID, 12)
		if seen[id] {
			return 32
		}
		seen[id] = true
	}
	return 12
}

// shortID takes the first n hex digits of a UUID such as
// "GPU-4b9a1c2d-...". An identifier that is not of that form (old MIG
// UUIDs, odd drivers) is hashed so the result is still stable hex.
func shortID(uuid string, n int) string {
	s := strings.ToLower(uuid)
	for _, p := range []string{"gpu-", "mig-"} {
		s = strings.TrimPrefix(s, p)
	}
	hexOnly := strings.ReplaceAll(s, "-", "")
	if len(hexOnly) == 32 && isHex(hexOnly) {
		return hexOnly[:n]
	}
	sum := sha256.Sum256([]byte(uuid))
	return hex.EncodeToString(sum[:])[:n]
}

func isHex(s string) bool {
	for _, r := range s {
		if (r < '0' || r > '9') && (r < 'a' || r > 'f') {
			return false
		}
	}
	return true
}

// assignNVLinkDomains groups GPUs into NVLink-connected components and
// names each after its member with the smallest name, so the name does not
// depend on indexes.
func assignNVLinkDomains(gpus []GPU) {
	idx := make(map[string]int, len(gpus))
	for i, g := range gpus {
		idx[g.UUID] = i
	}
	parent := make([]int, len(gpus))
	for i := range parent {
		parent[i] = i
	}
	find := func(i int) int {
		for parent[i] != i {
			parent[i] = parent[parent[i]]
			i = parent[i]
		}
		return i
	}
	linked := make([]bool, len(gpus))
	for i, g := range gpus {
		for _, l := range g.Links {
			j, ok := idx[l.PeerUUID]
			if !ok || l.NVLinks == 0 {
				continue
			}
			linked[i], linked[j] = true, true
			if ri, rj := find(i), find(j); ri != rj {
				parent[ri] = rj
			}
		}
	}
	names := make(map[int]string)
	for i, g := range gpus {
		if !linked[i] {
			continue
		}
		r := find(i)
		if n, ok := names[r]; !ok || g.Name < n {
			names[r] = g.Name
		}
	}
	for i := range gpus {
		if linked[i] {
			gpus[i].NVLinkDomain = names[find(i)]
		}
	}
}

// Source is what discovery reads the node through; *nvml.Adapter is one.
type Source interface {
	System() (nvml.System, error)
	Devices() ([]nvml.Device, error)
}

// Discover reads the node and builds its inventory. GPUs that cannot be
// read are left out and named in the error that comes with the inventory;
// the inventory is nil only when nothing could be read.
func Discover(src Source) (*Inventory, error) {
	sys, err := src.System()
	if err != nil {
		return nil, fmt.Errorf("discover: %w", err)
	}
	devices, err := src.Devices()
	if err != nil && len(devices) == 0 {
		return nil, fmt.Errorf("discover: %w", err)
	}
	if err != nil {
		err = fmt.Errorf("discover: %w", err)
	}
	return Build(sys, devices), err
}
