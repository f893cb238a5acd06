package deviceplugin

import (
	"strings"
	"testing"

	configv1 "github.com/gpulet/gpulet/api/config/v1"
	"github.com/gpulet/gpulet/internal/simnode"
)

// a100Mixed is a DGX A100 with two GPUs split by MIG: GPU 0 into seven
// 1g.10gb, GPU 1 into 3g.40gb + 2g.20gb + 1g.10gb; the rest whole.
const a100Mixed = `
machine: dgx-a100
devices:
- index: 0
  migEnabled: true
  mig: [{profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}, {profile: 1g.10gb}]
- index: 1
  migEnabled: true
  mig: [{profile: 3g.40gb}, {profile: 2g.20gb}, {profile: 1g.10gb}]
`

// a100Single is a DGX A100 with every GPU split into 3g.40gb halves.
const a100Single = `
machine: dgx-a100
gpus: 2
devices:
- {index: 0, migEnabled: true, mig: [{profile: 3g.40gb}, {profile: 3g.40gb}]}
- {index: 1, migEnabled: true, mig: [{profile: 3g.40gb}, {profile: 3g.40gb}]}
`

func timeSlicing(yaml string) *configv1.ReplicatedResources {
	cfg, _, err := configv1.Parse([]byte(yaml), "test")
	if err != nil {
		panic(err)
	}
	return cfg.Sharing.TimeSlicing
}

func TestPlan(t *testing.T) {
	tests := []struct {
		name         string
		state        string
		cfg          Config
		want         map[string]int // resource -> device count
		wantWarning  string
		wantReplicas bool
	}{
		{
			name:  "dgx-h100: 8 whole GPUs",
			state: "machine: dgx-h100",
			cfg:   Config{MigStrategy: configv1.MigStrategyNone},
			want:  map[string]int{"nvidia.com/gpu": 8},
		},
		{
			name:  "time-slicing 4 replicas: 32 nvidia.com/gpu",
			state: "machine: dgx-h100",
			cfg: Config{TimeSlicing: timeSlicing(`
sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}`)},
			want:         map[string]int{"nvidia.com/gpu": 32},
			wantReplicas: true,
		},
		{
			name:  "time-slicing renamed by default",
			state: "machine: dgx-h100",
			cfg: Config{TimeSlicing: timeSlicing(`
sharing: {timeSlicing: {renameByDefault: true, resources: [{name: nvidia.com/gpu, replicas: 4}]}}`)},
			want:         map[string]int{"nvidia.com/gpu.shared": 32},
			wantReplicas: true,
		},
		{
			name:  "mig none: MIG GPUs still whole",
			state: a100Mixed,
			cfg:   Config{MigStrategy: configv1.MigStrategyNone},
			want:  map[string]int{"nvidia.com/gpu": 8},
		},
		{
			name:  "mig mixed: per-profile resources",
			state: a100Mixed,
			cfg:   Config{MigStrategy: configv1.MigStrategyMixed},
			want:  map[string]int{"nvidia.com/gpu": 6, "nvidia.com/mig-1g.10gb": 8, "nvidia.com/mig-2g.20gb": 1, "nvidia.com/mig-3g.40gb": 1},
		},
		{
			name:  "mig single: MIG devices as nvidia.com/gpu",
			state: a100Single,
			cfg:   Config{MigStrategy: configv1.MigStrategySingle},
			want:  map[string]int{"nvidia.com/gpu": 4},
		},
		{
			name:        "mig single on a mixed node: nothing, with a warning",
			state:       a100Mixed,
			cfg:         Config{MigStrategy: configv1.MigStrategySingle},
			want:        map[string]int{"nvidia.com/gpu": 0},
			wantWarning: "not every GPU is in MIG mode",
		},
		{
			name:  "mig mixed with time-sliced 1g.10gb",
			state: a100Mixed,
			cfg: Config{MigStrategy: configv1.MigStrategyMixed, TimeSlicing: timeSlicing(`
sharing: {timeSlicing: {resources: [{name: nvidia.com/mig-1g.10gb, replicas: 2}]}}`)},
			want: map[string]int{"nvidia.com/gpu": 6, "nvidia.com/mig-1g.10gb": 16, "nvidia.com/mig-2g.20gb": 1, "nvidia.com/mig-3g.40gb": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := simnode.New(t, tt.state)
			plan, warnings := Plan(node.Inventory, tt.cfg)
			got := map[string]int{}
			for _, r := range plan {
				got[r.Name] = len(r.Devices)
				physical := map[string]int{}
				for _, d := range r.Devices {
					physical[d.UUID]++
					if len(d.ID) > 63 {
						t.Errorf("%s: device ID %q is longer than the kubelet's 63 characters", r.Name, d.ID)
					}
					if replicated := r.Replicas > 1; replicated != strings.Contains(d.ID, replicaSep) || replicated != d.Shared {
						t.Errorf("%s: device %q shared=%v, but the resource has %d replicas", r.Name, d.ID, d.Shared, r.Replicas)
					}
					if _, ok := node.Inventory.GPU(d.GPU); !ok {
						t.Errorf("%s: device %q maps to GPU %q, not in the inventory", r.Name, d.ID, d.GPU)
					}
				}
				if tt.wantReplicas && r.Replicas == 1 {
					t.Errorf("%s: not replicated", r.Name)
				}
				for uuid, n := range physical {
					if n != r.Replicas {
						t.Errorf("%s: physical device %s advertised %d times, want %d", r.Name, uuid, n, r.Replicas)
					}
				}
			}
			if len(got) != len(tt.want) {
				t.Errorf("resources = %v, want %v", got, tt.want)
			}
			for name, n := range tt.want {
				if got[name] != n {
					t.Errorf("%s: %d devices, want %d (all: %v)", name, got[name], n, got)
				}
			}
			joined := strings.Join(warnings, "; ")
			if (tt.wantWarning == "") != (joined == "") || !strings.Contains(joined, tt.wantWarning) {
				t.Errorf("warnings = %q, want %q", joined, tt.wantWarning)
			}
		})
	}
}

func TestPlanIsStableForEqualInput(t *testing.T) {
	node := simnode.New(t, a100Mixed)
	a, _ := Plan(node.Inventory, Config{MigStrategy: configv1.MigStrategyMixed})
	b, _ := Plan(node.Inventory, Config{MigStrategy: configv1.MigStrategyMixed})
	for i := range a {
		if !a[i].equal(b[i]) {
			t.Errorf("%s: two plans of one inventory differ", a[i].Name)
		}
	}
}
