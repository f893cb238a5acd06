package nvml_test

import (
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gpulet/gpulet/internal/nvml"
	"github.com/gpulet/gpulet/internal/nvml/gpusim"
)

var uuidRE = regexp.MustCompile(`^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// open starts the adapter over a simulated node.
func open(t *testing.T, stateYAML string) (*nvml.Adapter, *gpusim.Simulator) {
	t.Helper()
	st, err := gpusim.Parse([]byte(stateYAML), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sim, err := gpusim.New(st)
	if err != nil {
		t.Fatal(err)
	}
	a := nvml.New(sim.Interface())
	if err := a.Init(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Shutdown() })
	return a, sim
}

// TestDevicesOnEveryMachine runs discovery against each simulated DGX.
func TestDevicesOnEveryMachine(t *testing.T) {
	tests := []struct {
		machine      string
		product      string
		arch         string
		cc           string
		memGiB       uint64
		nvlinksToOne int
		profiles     []string
	}{
		{"dgx-a100", "NVIDIA A100-SXM4-80GB", "Ampere", "8.0", 80, 1, []string{"1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"}},
		{"dgx-h100", "NVIDIA H100 80GB HBM3", "Hopper", "9.0", 80, 2, []string{"1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"}},
		{"dgx-h200", "NVIDIA H200", "Hopper", "9.0", 141, 2, []string{"1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"}},
		{"dgx-b200", "NVIDIA B200", "Blackwell", "10.0", 180, 2, []string{"1g.23gb", "1g.23gb+me", "1g.45gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb"}},
	}
	for _, tt := range tests {
		t.Run(tt.machine, func(t *testing.T) {
			a, _ := open(t, "machine: "+tt.machine)
			sys, err := a.System()
			if err != nil || sys.DriverVersion == "" || sys.CUDADriverVersion == "" {
				t.Fatalf("System() = %+v, %v", sys, err)
			}
			devs, err := a.Devices()
			if err != nil {
				t.Fatal(err)
			}
			if len(devs) != 8 {
				t.Fatalf("%d GPUs, want 8", len(devs))
			}
			seen := map[string]bool{}
			for i, d := range devs {
				if d.Index != i || !uuidRE.MatchString(d.UUID) || seen[d.UUID] {
					t.Errorf("GPU %d: index %d uuid %q (duplicate %v)", i, d.Index, d.UUID, seen[d.UUID])
				}
				seen[d.UUID] = true
				if !strings.HasPrefix(d.Name, tt.product) || d.Architecture != tt.arch || d.CUDAComputeCapability != tt.cc {
					t.Errorf("GPU %d: %q %q %q, want %q %q %q", i, d.Name, d.Architecture, d.CUDAComputeCapability, tt.product, tt.arch, tt.cc)
				}
				if gib := (d.MemoryBytes + 1<<29) >> 30; gib != tt.memGiB {
					t.Errorf("GPU %d: %d GiB, want %d", i, gib, tt.memGiB)
				}
				if d.PCIBusID == "" || d.MIG == nil || d.MIG.Enabled {
					t.Errorf("GPU %d: bus id %q, MIG %+v: want a bus id and MIG capable, disabled", i, d.PCIBusID, d.MIG)
				}
				if len(d.Links) != 7 {
					t.Errorf("GPU %d: %d links, want 7", i, len(d.Links))
				}
				for _, l := range d.Links {
					if l.NVLinks < tt.nvlinksToOne || l.PCIe == "" {
						t.Errorf("GPU %d -> %s: %d NVLinks, PCIe %q: want >= %d and a PCIe level", i, l.PeerUUID, l.NVLinks, l.PCIe, tt.nvlinksToOne)
					}
				}
				var names []string
				for _, p := range d.MIG.Profiles {
					names = append(names, p.Name)
					if len(p.Placements) == 0 {
						t.Errorf("GPU %d profile %s: no placements", i, p.Name)
					}
				}
				if strings.Join(names, ",") != strings.Join(tt.profiles, ",") {
					t.Errorf("GPU %d profiles = %v, want %v", i, names, tt.profiles)
				}
			}
		})
	}
}

func TestMigDevicesCreateAndDestroy(t *testing.T) {
	a, _ := open(t, `
machine: dgx-a100
gpus: 2
devices: [{index: 0, migEnabled: true, mig: [{profile: 3g.40gb, start: 4}]}]`)
	devs, err := a.Devices()
	if err != nil {
		t.Fatal(err)
	}
	gpu := devs[0]
	if len(gpu.MIG.Devices) != 1 || gpu.MIG.Devices[0].Profile != "3g.40gb" || gpu.MIG.Devices[0].Placement.Start != 4 {
		t.Fatalf("MIG devices from the state file = %+v", gpu.MIG.Devices)
	}
	var oneG nvml.MigProfile
	for _, p := range gpu.MIG.Profiles {
		if p.Name == "1g.10gb" {
			oneG = p
		}
	}
	md, err := a.CreateMigDevice(gpu.UUID, oneG.GIProfileID, 0)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if !strings.HasPrefix(md.UUID, "MIG-") || md.Profile != "1g.10gb" || md.Placement.Start != 0 || md.ParentUUID != gpu.UUID {
		t.Fatalf("created %+v", md)
	}
	again, err := a.CreateMigDevice(gpu.UUID, oneG.GIProfileID, 0)
	if err != nil || again.UUID != md.UUID {
		t.Fatalf("a repeated create = %+v, %v: want the same device", again, err)
	}
	if _, err := a.CreateMigDevice(gpu.UUID, oneG.GIProfileID, 4); !errors.Is(err, nvml.ErrInsufficientResources) {
		t.Fatalf("create over the 3g.40gb = %v, want ErrInsufficientResources", err)
	}
	if _, err := a.CreateMigDevice(devs[1].UUID, oneG.GIProfileID, 0); err == nil || !strings.Contains(err.Error(), "MIG mode is not enabled") {
		t.Fatalf("create on a non-MIG GPU = %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := a.DestroyMigDevice(gpu.UUID, md.GIID, md.CIID); err != nil {
			t.Fatalf("destroy #%d: %v", i, err)
		}
	}
	devs, _ = a.Devices()
	if len(devs[0].MIG.Devices) != 1 {
		t.Errorf("after destroy: %d MIG devices, want 1", len(devs[0].MIG.Devices))
	}
}

func TestTelemetryAndLostGPU(t *testing.T) {
	a, sim := open(t, "machine: dgx-h100\ngpus: 2\ndevices: [{index: 1, utilization: {gpu: 40}, powerW: 300, temperatureC: 50}]")
	devs, _ := a.Devices()
	uuid := devs[1].UUID
	tel, err := a.Telemetry(uuid, 0)
	if err != nil {
		t.Fatal(err)
	}
	if tel.GPUUtilization == nil || *tel.GPUUtilization != 0.4 || tel.PowerWatts == nil || *tel.PowerWatts != 300 || tel.TemperatureCelsius == nil || *tel.TemperatureCelsius != 50 {
		t.Errorf("telemetry = util %v power %v temp %v", tel.GPUUtilization, tel.PowerWatts, tel.TemperatureCelsius)
	}
	if tel.MemoryTotalBytes == nil || tel.EnergyJoules == nil || tel.SMClockHz == nil {
		t.Errorf("telemetry misses memory, energy or clock: %+v", tel)
	}
	st, _ := gpusim.Parse([]byte("machine: dgx-h100\ngpus: 2\ndevices: [{index: 1, lost: true}]"), "edit")
	if err := sim.Apply(st); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Telemetry(uuid, tel.LastSample); !errors.Is(err, nvml.ErrGPULost) {
		t.Errorf("telemetry of a lost GPU = %v, want ErrGPULost", err)
	}
	if p, err := a.Probe(uuid); err != nil || !p.Lost {
		t.Errorf("probe of a lost GPU = %+v, %v", p, err)
	}
	if devs, err := a.Devices(); len(devs) != 1 || err == nil {
		t.Errorf("discovery with a lost GPU: %d GPUs, err %v: want the other GPU and an error", len(devs), err)
	}
}

func TestEventsArriveThroughTheWatcher(t *testing.T) {
	a, sim := open(t, "machine: dgx-h100\ngpus: 2")
	devs, _ := a.Devices()
	w, err := a.WatchEvents([]string{devs[0].UUID, devs[1].UUID})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Close() }()
	if _, err := w.Wait(10 * time.Millisecond); !errors.Is(err, nvml.ErrTimeout) {
		t.Fatalf("wait with nothing pending = %v, want ErrTimeout", err)
	}
	st, _ := gpusim.Parse([]byte("machine: dgx-h100\ngpus: 2\ndevices: [{index: 1, xids: [{id: a, xid: 79}]}]"), "edit")
	if err := sim.Apply(st); err != nil {
		t.Fatal(err)
	}
	ev, err := w.Wait(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Kind != nvml.EventXID || ev.XID != 79 || ev.UUID != devs[1].UUID {
		t.Errorf("event = %+v, want XID 79 on GPU 1", ev)
	}
}

func TestParseSpec(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{"real", "real", ""},
		{"mock:dgx-h100", "mock:dgx-h100", ""},
		{"mock:./node.yaml", "mock:./node.yaml", ""},
		{"mock:node.yml", "mock:node.yml", ""},
		{"mock:", "", "want real"},
		{"mock:dgx-h1000", "", `unknown machine "dgx-h1000"`},
		{"gpu", "", "want real"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			spec, err := nvml.ParseSpec(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSpec(%q) = %v, want error with %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || spec.String() != tt.want {
				t.Fatalf("ParseSpec(%q) = %v, %v", tt.in, spec, err)
			}
		})
	}
}
