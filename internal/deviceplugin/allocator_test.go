package deviceplugin

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	configv1 "github.com/gpulet/gpulet/api/config/v1"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/simnode"
)

// allocatorFor builds the allocator a server of the named resource would
// have.
func allocatorFor(t testing.TB, inv *inventory.Inventory, cfg Config, name string) (*allocator, Resource) {
	t.Helper()
	plan, _ := Plan(inv, cfg)
	for _, r := range plan {
		if r.Name == name {
			a := newAllocator(r)
			a.setLinks(nvlinks(inv))
			return a, r
		}
	}
	t.Fatalf("no resource %s in the plan", name)
	return nil, Resource{}
}

// indexesOf gives the GPU index of each device ID, sorted.
func indexesOf(a *allocator, ids []string) []int {
	var out []int
	for _, id := range ids {
		if d, ok := a.byID[id]; ok {
			out = append(out, d.Index)
		}
	}
	sort.Ints(out)
	return out
}

func TestPreferredAllocationFollowsNVLinkIslands(t *testing.T) {
	node := simnode.New(t, "machine: dgx-h100\ntopology: islands")
	inv := node.Inventory
	a, res := allocatorFor(t, inv, Config{}, "nvidia.com/gpu")
	all := ids(res.Devices)
	uuidOf := func(i int) string { return inv.GPUs[i].UUID }

	tests := []struct {
		name      string
		available []string
		must      []string
		size      int
		wantIn    [][]int // the answer must be one of these index sets
	}{
		{"four of eight: one island", all, nil, 4, [][]int{{0, 1, 2, 3}, {4, 5, 6, 7}}},
		{"two with GPU 5: its island", all, []string{uuidOf(5)}, 2, [][]int{{4, 5}, {5, 6}, {5, 7}}},
		{"island 0 half used", []string{uuidOf(2), uuidOf(3), uuidOf(4), uuidOf(5), uuidOf(6), uuidOf(7)}, nil, 2, [][]int{{2, 3}, {4, 5}, {4, 6}, {4, 7}, {5, 6}, {5, 7}, {6, 7}}},
		{"a missing GPU in the list is skipped", append([]string{"GPU-gone"}, all...), nil, 4, [][]int{{0, 1, 2, 3}, {4, 5, 6, 7}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := indexesOf(a, a.preferred(tt.available, tt.must, tt.size))
			for _, want := range tt.wantIn {
				if fmt.Sprint(got) == fmt.Sprint(want) {
					return
				}
			}
			t.Errorf("preferred = GPUs %v, want one of %v", got, tt.wantIn)
		})
	}
}

func TestPreferredAllocationSpreadsReplicas(t *testing.T) {
	node := simnode.New(t, "machine: dgx-h100")
	cfg := Config{TimeSlicing: timeSlicing(`sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}`)}
	a, res := allocatorFor(t, node.Inventory, cfg, "nvidia.com/gpu")
	all := ids(res.Devices)

	got := a.preferred(all, nil, 4)
	if gpus := indexesOf(a, got); len(gpus) != 4 || gpus[0] == gpus[1] || gpus[1] == gpus[2] || gpus[2] == gpus[3] {
		t.Errorf("4 replicas landed on GPUs %v, want 4 different GPUs", gpus)
	}

	// GPU 0 has 3 of 4 replicas taken: a single replica goes elsewhere.
	var avail []string
	for _, id := range all {
		if strings.HasPrefix(id, node.Inventory.GPUs[0].UUID) && !strings.HasSuffix(id, "::3") {
			continue
		}
		avail = append(avail, id)
	}
	if got := indexesOf(a, a.preferred(avail, nil, 1)); got[0] == 0 {
		t.Errorf("one replica went to the busiest GPU 0")
	}

	must := []string{all[0]}
	got = a.preferred(all, must, 2)
	if got[0] != all[0] || len(got) != 2 {
		t.Errorf("preferred = %v: must start with mustInclude %s", got, all[0])
	}
}

func TestPreferredAllocationMIGStaysOnOneGPU(t *testing.T) {
	node := simnode.New(t, a100Mixed)
	a, res := allocatorFor(t, node.Inventory, Config{MigStrategy: configv1.MigStrategyMixed}, "nvidia.com/mig-1g.10gb")
	got := indexesOf(a, a.preferred(ids(res.Devices), nil, 3))
	if fmt.Sprint(got) != "[0 0 0]" {
		t.Errorf("3 MIG devices on GPUs %v, want all on GPU 0", got)
	}
}
