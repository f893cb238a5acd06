package inventory

import (
	"fmt"
	"regexp"
	"testing"

	"github.com/gpulet/gpulet/internal/nvml"
)

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// node makes n GPUs whose UUIDs differ in their first hex digits, linked
// as links(i, j) says.
func node(n int, links func(i, j int) int) []nvml.Device {
	devs := make([]nvml.Device, n)
	for i := range devs {
		devs[i] = nvml.Device{Index: i, UUID: fmt.Sprintf("GPU-%08x-1111-2222-3333-444455556666", 0xa0000000+i)}
	}
	for i := range devs {
		for j := range devs {
			if i != j {
				devs[i].Links = append(devs[i].Links, nvml.Link{PeerUUID: devs[j].UUID, NVLinks: links(i, j)})
			}
		}
	}
	return devs
}

func TestBuildNamesAndDomains(t *testing.T) {
	tests := []struct {
		name        string
		devices     []nvml.Device
		wantDomains []string
	}{
		{
			name:    "nvswitch: one domain",
			devices: node(4, func(int, int) int { return 18 }),
			wantDomains: []string{
				"gpu-a00000001111", "gpu-a00000001111", "gpu-a00000001111", "gpu-a00000001111",
			},
		},
		{
			name:    "two islands",
			devices: node(4, func(i, j int) int { return map[bool]int{true: 4}[i/2 == j/2] }),
			wantDomains: []string{
				"gpu-a00000001111", "gpu-a00000001111", "gpu-a00000021111", "gpu-a00000021111",
			},
		},
		{
			name:        "pcie only: no domain",
			devices:     node(2, func(int, int) int { return 0 }),
			wantDomains: []string{"", ""},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := Build(nvml.System{}, tt.devices)
			for i, g := range inv.GPUs {
				if !dnsLabel.MatchString(g.Name) {
					t.Errorf("GPU %d name %q is not a DNS label", i, g.Name)
				}
				if g.NVLinkDomain != tt.wantDomains[i] {
					t.Errorf("GPU %d domain = %q, want %q", i, g.NVLinkDomain, tt.wantDomains[i])
				}
			}
		})
	}
}

func TestBuildSortsByIndexAndNamesStayWithUUID(t *testing.T) {
	devs := node(3, func(int, int) int { return 0 })
	names := map[string]string{}
	for _, g := range Build(nvml.System{}, devs).GPUs {
		names[g.UUID] = g.Name
	}
	// GPU 1 drops off the bus and the others are renumbered: names follow UUIDs.
	shifted := []nvml.Device{devs[2], devs[0]}
	shifted[0].Index, shifted[1].Index = 1, 0
	inv := Build(nvml.System{}, shifted)
	if inv.GPUs[0].UUID != devs[0].UUID || inv.GPUs[1].UUID != devs[2].UUID {
		t.Fatalf("not sorted by index: %s, %s", inv.GPUs[0].UUID, inv.GPUs[1].UUID)
	}
	for _, g := range inv.GPUs {
		if g.Name != names[g.UUID] {
			t.Errorf("%s renamed from %q to %q after an index shift", g.UUID, names[g.UUID], g.Name)
		}
	}
}

func TestShortID(t *testing.T) {
	tests := []struct {
		name, uuid string
		n          int
		want       string
	}{
		{"gpu uuid", "GPU-4B9A1C2D-0000-1111-2222-333344445555", 12, "4b9a1c2d0000"},
		{"mig uuid", "MIG-4b9a1c2d-0000-1111-2222-333344445555", 12, "4b9a1c2d0000"},
		{"full", "GPU-4b9a1c2d-0000-1111-2222-333344445555", 32, "4b9a1c2d000011112222333344445555"},
		{"legacy MIG form is hashed", "MIG-GPU-4b9a1c2d-0000-1111-2222-333344445555/1/0", 12, shortID("MIG-GPU-4b9a1c2d-0000-1111-2222-333344445555/1/0", 12)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := shortID(tt.uuid, tt.n)
			if got != tt.want || len(got) != tt.n || !isHex(got) {
				t.Errorf("shortID(%q, %d) = %q, want %q", tt.uuid, tt.n, got, tt.want)
			}
		})
	}
}

func TestShortIDCollisionUsesWholeUUID(t *testing.T) {
	devs := []nvml.Device{
		{Index: 0, UUID: "GPU-aaaaaaaa-bbbb-0000-0000-000000000001"},
		{Index: 1, UUID: "GPU-aaaaaaaa-bbbb-0000-0000-000000000002"},
	}
	inv := Build(nvml.System{}, devs)
	if inv.GPUs[0].Name == inv.GPUs[1].Name {
		t.Fatalf("two GPUs share the name %q", inv.GPUs[0].Name)
	}
	for _, g := range inv.GPUs {
		if len(g.Name) != len("gpu-")+32 || !dnsLabel.MatchString(g.Name) {
			t.Errorf("name %q: want gpu- and 32 hex digits", g.Name)
		}
	}
}

func TestPlacements(t *testing.T) {
	mig := &nvml.MIG{
		Enabled: true,
		Profiles: []nvml.MigProfile{
			{Name: "1g.10gb", Placements: []nvml.Placement{{Start: 0, Size: 1}, {Start: 1, Size: 1}}},
			{Name: "1g.10gb+me", Placements: []nvml.Placement{{Start: 6, Size: 1}}},
			{Name: "7g.80gb", Placements: []nvml.Placement{{Start: 0, Size: 8}}},
		},
		Devices: []nvml.MigDevice{{UUID: "MIG-a", Profile: "1g.10gb", Placement: nvml.Placement{Start: 1, Size: 1}}},
	}
	devs := []nvml.Device{{UUID: "GPU-4b9a1c2d-0000-1111-2222-333344445555", MIG: mig}}
	g := Build(nvml.System{}, devs).GPUs[0]
	want := []string{
		"gpu-4b9a1c2d0000-mig-1g10gb-0",
		"gpu-4b9a1c2d0000-mig-1g10gb-1",
		"gpu-4b9a1c2d0000-mig-1g10gbme-6",
		"gpu-4b9a1c2d0000-mig-7g80gb-0",
	}
	got := g.Placements()
	if len(got) != len(want) {
		t.Fatalf("got %d placements, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Name != want[i] || !dnsLabel.MatchString(got[i].Name) {
			t.Errorf("placement %d = %q, want %q", i, got[i].Name, want[i])
		}
	}
	if g.MigDevices[0].Name != "gpu-4b9a1c2d0000-mig-1g10gb-1" {
		t.Errorf("existing MIG device named %q, want the name of its placement", g.MigDevices[0].Name)
	}
	g.MIG.Enabled = false
	if p := g.Placements(); len(p) != 0 {
		t.Errorf("MIG disabled: got %d placements, want none", len(p))
	}
}
