package v1

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestReplicasFor(t *testing.T) {
	yes := true
	ts := &ReplicatedResources{
		FailRequestsGreaterThanOne: &yes,
		Resources: []ReplicatedResource{
			{Name: "nvidia.com/gpu", Replicas: 4},
			{Name: "mig-1g.10gb", Replicas: 2},
			{Name: "nvidia.com/mig-2g.20gb", Rename: "mig-2g.shared", Replicas: 3},
		},
	}
	renaming := &ReplicatedResources{
		RenameByDefault: true,
		Resources: []ReplicatedResource{
			{Name: "nvidia.com/gpu", Replicas: 10},
			{Name: "nvidia.com/mig-3g.40gb", Rename: "nvidia.com/big-slice", Replicas: 2},
		},
	}
	tests := []struct {
		name     string
		ts       *ReplicatedResources
		resource string
		want     SharedResource
		wantOK   bool
	}{
		{"listed gpu", ts, "nvidia.com/gpu", SharedResource{"nvidia.com/gpu", 4, true}, true},
		{"unqualified query", ts, "gpu", SharedResource{"nvidia.com/gpu", 4, true}, true},
		{"unqualified entry", ts, "nvidia.com/mig-1g.10gb", SharedResource{"nvidia.com/mig-1g.10gb", 2, true}, true},
		{"explicit rename", ts, "nvidia.com/mig-2g.20gb", SharedResource{"nvidia.com/mig-2g.shared", 3, true}, true},
		{"not listed", ts, "nvidia.com/mig-7g.80gb", SharedResource{"nvidia.com/mig-7g.80gb", 1, false}, false},
		{"renameByDefault", renaming, "nvidia.com/gpu", SharedResource{"nvidia.com/gpu.shared", 10, false}, true},
		{"explicit rename beats renameByDefault", renaming, "nvidia.com/mig-3g.40gb", SharedResource{"nvidia.com/big-slice", 2, false}, true},
		{"renameByDefault leaves unlisted alone", renaming, "nvidia.com/mig-1g.10gb", SharedResource{"nvidia.com/mig-1g.10gb", 1, false}, false},
		{"nil time-slicing", nil, "nvidia.com/gpu", SharedResource{"nvidia.com/gpu", 1, false}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := tt.ts.ReplicasFor(tt.resource)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("ReplicasFor(%q) = %+v, %v; want %+v, %v", tt.resource, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestReplicatedDevicesJSON(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    ReplicatedDevices
		wantErr string
		out     string // marshalled form; "" means same as in
	}{
		{name: "all", in: `"all"`, want: ReplicatedDevices{All: true}},
		{name: "count", in: `3`, want: ReplicatedDevices{Count: 3}},
		{name: "indexes as numbers", in: `[0,1]`, want: ReplicatedDevices{List: []string{"0", "1"}}, out: `["0","1"]`},
		{name: "mixed list", in: `["0:1","GPU-b1028956-cfa2-0990-bf4a-5da9abb51763","MIG-b1028956-cfa2-0990-bf4a-5da9abb51763","MIG-GPU-b1028956-cfa2-0990-bf4a-5da9abb51763/3/0"]`,
			want: ReplicatedDevices{List: []string{"0:1", "GPU-b1028956-cfa2-0990-bf4a-5da9abb51763", "MIG-b1028956-cfa2-0990-bf4a-5da9abb51763", "MIG-GPU-b1028956-cfa2-0990-bf4a-5da9abb51763/3/0"}}},
		{name: "empty list", in: `[]`, want: ReplicatedDevices{List: []string{}}},
		{name: "other string", in: `"some"`, wantErr: `must be "all", a count or a list of devices, got "some"`},
		{name: "zero count", in: `0`, wantErr: "a count of devices must be an integer > 0, got 0"},
		{name: "negative count", in: `-2`, wantErr: "got -2"},
		{name: "fractional count", in: `1.5`, wantErr: "got 1.5"},
		{name: "negative index", in: `[-1]`, wantErr: "[0]: a GPU index must be an integer >= 0, got -1"},
		{name: "bad uuid", in: `["GPU-1234"]`, wantErr: `[0]: must be a GPU index`},
		{name: "bad mig index", in: `["0:x"]`, wantErr: `got "0:x"`},
		{name: "object", in: `{"a":1}`, wantErr: `must be "all", a count or a list of devices, got {"a":1}`},
		{name: "bool in list", in: `[true]`, wantErr: "[0]: must be a GPU index, MIG index or UUID, got true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got ReplicatedDevices
			err := json.Unmarshal([]byte(tt.in), &got)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Unmarshal(%s) error = %v, want %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Unmarshal(%s): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Unmarshal(%s) = %#v, want %#v", tt.in, got, tt.want)
			}
			out, err := json.Marshal(got)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.out
			if want == "" {
				want = tt.in
			}
			if string(out) != want {
				t.Errorf("Marshal = %s, want %s", out, want)
			}
		})
	}
}

func TestDeviceListStrategiesJSON(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    DeviceListStrategies
		out     string
		wantErr bool
	}{
		{name: "one as string", in: `"envvar"`, want: DeviceListStrategies{"envvar"}, out: `"envvar"`},
		{name: "one in a list", in: `["cdi-cri"]`, want: DeviceListStrategies{"cdi-cri"}, out: `"cdi-cri"`},
		{name: "several", in: `["envvar","cdi-cri"]`, want: DeviceListStrategies{"envvar", "cdi-cri"}, out: `["envvar","cdi-cri"]`},
		{name: "number", in: `5`, wantErr: true},
		{name: "list of numbers", in: `[5]`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got DeviceListStrategies
			err := json.Unmarshal([]byte(tt.in), &got)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("Unmarshal(%s) succeeded, want an error", tt.in)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Unmarshal(%s) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			out, _ := json.Marshal(got)
			if string(out) != tt.out {
				t.Errorf("Marshal = %s, want %s", out, tt.out)
			}
		})
	}
}

func TestDurationJSON(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    time.Duration
		out     string
		wantErr string
	}{
		{name: "seconds", in: `"30s"`, want: 30 * time.Second, out: `"30s"`},
		{name: "compound", in: `"1h30m"`, want: 90 * time.Minute, out: `"1h30m0s"`},
		{name: "zero", in: `"0"`, want: 0, out: `"0s"`},
		{name: "bare number", in: `30`, wantErr: `must be a duration string such as "30s", got 30`},
		{name: "no unit", in: `"30"`, wantErr: `got "30"`},
		{name: "word", in: `"infinite"`, wantErr: `got "infinite"`},
		{name: "overflow", in: `"9999999999h"`, wantErr: `got "9999999999h"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d Duration
			err := json.Unmarshal([]byte(tt.in), &d)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Unmarshal(%s) error = %v, want %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || d.Duration != tt.want {
				t.Fatalf("Unmarshal(%s) = %v, %v; want %v", tt.in, d, err, tt.want)
			}
			out, _ := json.Marshal(d)
			if string(out) != tt.out {
				t.Errorf("Marshal = %s, want %s", out, tt.out)
			}
		})
	}
}

func TestResourceName(t *testing.T) {
	tests := []struct {
		name          string
		in            ResourceName
		wantQualified ResourceName
		wantErr       string
	}{
		{name: "qualified", in: "nvidia.com/gpu", wantQualified: "nvidia.com/gpu"},
		{name: "short", in: "gpu", wantQualified: "nvidia.com/gpu"},
		{name: "mig profile", in: "mig-1g.10gb", wantQualified: "nvidia.com/mig-1g.10gb"},
		{name: "shared suffix", in: "nvidia.com/gpu.shared", wantQualified: "nvidia.com/gpu.shared"},
		{name: "longest", in: ResourceName(strings.Repeat("a", 52)), wantQualified: ResourceName("nvidia.com/" + strings.Repeat("a", 52))},
		{name: "one too long", in: ResourceName(strings.Repeat("a", 53)), wantErr: "must be at most 63 characters"},
		{name: "empty", in: "", wantErr: "must not be empty"},
		{name: "other domain", in: "amd.com/gpu", wantErr: `must be "nvidia.com/<name>"`},
		{name: "upper case", in: "GPU", wantErr: "RFC 1123"},
		{name: "underscore", in: "my_gpu", wantErr: "RFC 1123"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.in.Validate()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Validate(%q) = %v, want %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Validate(%q) = %v", tt.in, err)
			}
			if got := tt.in.Qualified(); got != tt.wantQualified {
				t.Errorf("Qualified(%q) = %q, want %q", tt.in, got, tt.wantQualified)
			}
		})
	}
}

func TestNearMiss(t *testing.T) {
	fields := jsonFields(reflect.TypeFor[ReplicatedResources]())
	tests := []struct {
		key  string
		want string
	}{
		{"resources", "resources"},
		{"Resources", "resources"},
		{"resource", "resources"},
		{"resourcess", "resources"},
		{"renameByDefualt", "renameByDefault"},
		{"RENAMEBYDEFAULT", "renameByDefault"},
		{"reſources", "resources"},
		{"failRequestGreaterThanOne", "failRequestsGreaterThanOne"},
		{"replicas", ""},
		{"somethingElse", ""},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			if got := nearMiss(tt.key, fields); got != tt.want {
				t.Errorf("nearMiss(%q) = %q, want %q", tt.key, got, tt.want)
			}
		})
	}
}

func TestEditDistance(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"", "", 0},
		{"abc", "abc", 0},
		{"abc", "abd", 1},
		{"abc", "ab", 1},
		{"abc", "abcd", 1},
		{"abcd", "abdc", 1},
		{"abc", "cba", 2},
		{"a", "abc", 2},
		{"mig", "mps", 2},
	}
	for _, tt := range tests {
		t.Run(tt.a+"/"+tt.b, func(t *testing.T) {
			if got := editDistance(tt.a, tt.b); got != tt.want {
				t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
			}
		})
	}
}
