package gpusim

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseExamples(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no example state files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			st, err := Load(f)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := New(st); err != nil {
				t.Fatalf("New: %v", err)
			}
			// What WriteState writes reads back to the same state.
			out := filepath.Join(t.TempDir(), "state.yaml")
			if err := WriteState(out, st); err != nil {
				t.Fatal(err)
			}
			again, err := Load(out)
			if err != nil {
				data, _ := os.ReadFile(out)
				t.Fatalf("reload: %v\n%s", err, data)
			}
			if !reflect.DeepEqual(st, again) {
				data, _ := os.ReadFile(out)
				t.Errorf("state changed in a write/load round trip:\n%s", data)
			}
		})
	}
}

func TestDefaultState(t *testing.T) {
	for _, m := range Machines() {
		t.Run(m, func(t *testing.T) {
			st, err := DefaultState(m)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "sub", m+".yaml")
			if err := WriteState(path, st); err != nil {
				t.Fatal(err)
			}
			got, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(st, got) {
				t.Errorf("DefaultState(%s) changed in a write/load round trip", m)
			}
		})
	}
	if _, err := DefaultState("dgx-z9000"); err == nil || !strings.Contains(err.Error(), "dgx-z9000") {
		t.Errorf("DefaultState of an unknown machine: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		field   string // the field the error names
		problem string // a phrase in its problem
	}{
		{name: "empty", yaml: "", field: "", problem: "empty"},
		{name: "not yaml", yaml: "machine: [dgx", field: "", problem: "not valid YAML"},
		{name: "no machine", yaml: "gpus: 2", field: "machine", problem: "required"},
		{name: "unknown machine", yaml: "machine: dgx-z", field: "machine", problem: "unknown machine"},
		{name: "unknown top field", yaml: "machine: dgx-h100\ngpu: 2", field: "gpu", problem: "unknown field"},
		{name: "unknown nested field", yaml: "machine: dgx-h100\ndevices:\n- index: 0\n- index: 2\n  migEnabld: true", field: "devices[1].migEnabld", problem: "unknown field"},
		{name: "wrong type", yaml: "machine: dgx-h100\ngpus: eight", field: "gpus", problem: "whole number"},
		{name: "too many gpus", yaml: "machine: dgx-h100\ngpus: 9", field: "gpus", problem: "between 1 and 8"},
		{name: "bad topology", yaml: "machine: dgx-h100\ntopology: ring", field: "topology", problem: "unknown topology"},
		{name: "bad driver version", yaml: "machine: dgx-h100\ndriverVersion: latest", field: "driverVersion", problem: "driver version"},
		{name: "index out of range", yaml: "machine: dgx-h100\ngpus: 2\ndevices: [{index: 2}]", field: "devices[0].index", problem: "not a GPU"},
		{name: "duplicate index", yaml: "machine: dgx-h100\ndevices: [{index: 1}, {index: 1}]", field: "devices[1].index", problem: "already described"},
		{name: "mig without migEnabled", yaml: "machine: dgx-h100\ndevices: [{index: 0, mig: [{profile: 1g.10gb}]}]", field: "devices[0].mig", problem: "migEnabled"},
		{name: "unknown profile", yaml: "machine: dgx-h100\ndevices:\n- index: 2\n  migEnabled: true\n  mig: [{profile: 1g.11gb}]", field: "devices[0].mig[0].profile", problem: "unknown MIG profile"},
		{name: "impossible start", yaml: "machine: dgx-h100\ndevices:\n- index: 0\n  migEnabled: true\n  mig: [{profile: 3g.40gb, start: 1}]", field: "devices[0].mig[0].start", problem: "cannot start"},
		{name: "overlap", yaml: "machine: dgx-h100\ndevices:\n- index: 0\n  migEnabled: true\n  mig: [{profile: 4g.40gb, start: 0}, {profile: 3g.40gb, start: 0}]", field: "devices[0].mig[1].start", problem: "overlaps"},
		{name: "no room", yaml: "machine: dgx-h100\ndevices:\n- index: 0\n  migEnabled: true\n  mig: [{profile: 7g.80gb}, {profile: 1g.10gb}]", field: "devices[0].mig[1].profile", problem: "no free placement"},
		{name: "instance count", yaml: "machine: dgx-h100\ndevices:\n- index: 0\n  migEnabled: true\n  mig: [{profile: 1g.10gb+me}, {profile: 1g.10gb+me}]", field: "devices[0].mig[1].profile", problem: "at most 1"},
		{name: "unknown ci profile", yaml: "machine: dgx-h100\ndevices:\n- index: 0\n  migEnabled: true\n  mig: [{profile: 2g.20gb, computeInstances: [3c]}]", field: "devices[0].mig[0].computeInstances[0]", problem: "unknown compute-instance profile"},
		{name: "bad pattern", yaml: "machine: dgx-h100\ndevices: [{index: 0, powerW: {pattern: zigzag, min: 1, max: 2, period: 1m}}]", field: "devices[0].powerW", problem: "unknown pattern"},
		{name: "pattern without period", yaml: "machine: dgx-h100\ndevices: [{index: 0, utilization: {gpu: {pattern: sine, min: 1, max: 2}}}]", field: "devices[0].utilization.gpu", problem: "period"},
		{name: "bad period", yaml: "machine: dgx-h100\ndevices: [{index: 0, powerW: {pattern: sine, min: 1, max: 2, period: soon}}]", field: "devices[0].powerW.period", problem: "duration"},
		{name: "value object without pattern", yaml: "machine: dgx-h100\ndevices: [{index: 0, memoryUsedMiB: {offset: 1s}}]", field: "devices[0].memoryUsedMiB", problem: "needs a pattern"},
		{name: "unknown value field", yaml: "machine: dgx-h100\ndevices: [{index: 0, powerW: {pattern: sine, low: 1}}]", field: "devices[0].powerW.low", problem: "unknown field"},
		{name: "utilization over 100", yaml: "machine: dgx-h100\ndevices: [{index: 0, utilization: {gpu: 140}}]", field: "devices[0].utilization.gpu", problem: "outside [0, 100]"},
		{name: "min above max", yaml: "machine: dgx-h100\ndevices: [{index: 0, temperatureC: {pattern: ramp, min: 80, max: 20, period: 1m}}]", field: "devices[0].temperatureC", problem: "above max"},
		{name: "xid without id", yaml: "machine: dgx-h100\ndevices: [{index: 0, xids: [{xid: 13}]}]", field: "devices[0].xids[0].id", problem: "required"},
		{name: "duplicate xid id", yaml: "machine: dgx-h100\ndevices: [{index: 0, xids: [{id: a, xid: 13}, {id: a, xid: 31}]}]", field: "devices[0].xids[1].id", problem: "already used"},
		{name: "xid on a MIG instance without MIG", yaml: "machine: dgx-h100\ndevices: [{index: 0, xids: [{id: a, xid: 13, gpuInstance: 1}]}]", field: "devices[0].xids[0].gpuInstance", problem: "migEnabled"},
		{name: "negative xid", yaml: "machine: dgx-h100\ndevices: [{index: 0, xids: [{id: a, xid: -1}]}]", field: "devices[0].xids[0].xid", problem: "whole number"},
		{name: "process without pid", yaml: "machine: dgx-h100\ndevices: [{index: 0, processes: [{usedMemoryMiB: 10}]}]", field: "devices[0].processes[0].pid", problem: "required"},
		{name: "process type", yaml: "machine: dgx-h100\ndevices: [{index: 0, processes: [{pid: 1, type: daemon}]}]", field: "devices[0].processes[0].type", problem: "unknown process type"},
		{name: "relative cgroup", yaml: "machine: dgx-h100\ndevices: [{index: 0, processes: [{pid: 1, cgroup: kubepods}]}]", field: "devices[0].processes[0].cgroup", problem: "absolute"},
		{name: "mig process without instance", yaml: "machine: dgx-h100\ndevices: [{index: 0, migEnabled: true, processes: [{pid: 1}]}]", field: "devices[0].processes[0].gpuInstance", problem: "MIG device"},
		{name: "pid with two cgroups", yaml: "machine: dgx-h100\ndevices: [{index: 0, processes: [{pid: 7, cgroup: /a}]}, {index: 1, processes: [{pid: 7, cgroup: /b}]}]", field: "devices[1].processes[0]", problem: "another name or cgroup"},
		{name: "memory over total", yaml: "machine: dgx-h100\ndevices: [{index: 0, memoryUsedMiB: 90000}]", field: "devices[0].memoryUsedMiB", problem: "outside"},
		{name: "duplicate key", yaml: "machine: dgx-h100\nmachine: dgx-a100", field: "", problem: "not valid YAML"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), "node.yaml")
			var se *StateError
			if !errors.As(err, &se) {
				t.Fatalf("Parse: got %v, want a *StateError", err)
			}
			if se.File != "node.yaml" || !strings.HasPrefix(err.Error(), "state file node.yaml: ") {
				t.Errorf("error does not name the file: %v", err)
			}
			for _, p := range se.Problems {
				if p.Field == tc.field && strings.Contains(p.Problem, tc.problem) {
					return
				}
			}
			t.Errorf("error %q lacks field %q with %q", err, tc.field, tc.problem)
		})
	}
}

func TestValue(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		v    Value
		at   time.Duration
		want float64
	}{
		{name: "constant", v: Value{Constant: 42}, at: time.Hour, want: 42},
		{name: "sine start", v: Value{Pattern: PatternSine, Min: 0, Max: 100, Period: Duration{time.Minute}}, at: 0, want: 50},
		{name: "sine peak", v: Value{Pattern: PatternSine, Min: 0, Max: 100, Period: Duration{time.Minute}}, at: 15 * time.Second, want: 100},
		{name: "sine offset", v: Value{Pattern: PatternSine, Min: 0, Max: 100, Period: Duration{time.Minute}, Offset: Duration{15 * time.Second}}, at: 30 * time.Second, want: 100},
		{name: "ramp middle", v: Value{Pattern: PatternRamp, Min: 10, Max: 20, Period: Duration{10 * time.Second}}, at: 5 * time.Second, want: 15},
		{name: "square high", v: Value{Pattern: PatternSquare, Min: 1, Max: 9, Period: Duration{10 * time.Second}}, at: 2 * time.Second, want: 9},
		{name: "square low", v: Value{Pattern: PatternSquare, Min: 1, Max: 9, Period: Duration{10 * time.Second}}, at: 7 * time.Second, want: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.v.At(t0.Add(tc.at)); abs(got-tc.want) > 1e-6 {
				t.Errorf("At = %v, want %v", got, tc.want)
			}
			// The exact integral matches a fine numeric one.
			a, b := t0.Add(3*time.Second), t0.Add(97*time.Second+300*time.Millisecond)
			const step = time.Millisecond
			var sum float64
			for x := a; x.Before(b); x = x.Add(step) {
				sum += tc.v.At(x.Add(step/2)) * step.Seconds()
			}
			if got := tc.v.Integral(a, b); abs(got-sum) > 0.05 {
				t.Errorf("Integral = %v, numeric %v", got, sum)
			}
		})
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
