package gpusim

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzParse: Parse never panics, and whatever it accepts a simulator can
// run, and writes back to the same state.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("machine: dgx-h100\ndevices: [{index: 0, powerW: {pattern: sine, min: 1, max: 2, period: 1ns, offset: 2562047h}}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := Parse(data, "fuzz.yaml")
		if err != nil {
			if st != nil {
				t.Fatal("Parse returned a state and an error")
			}
			return
		}
		sim, err := New(st)
		if err != nil {
			t.Fatalf("New refused a state Parse accepted: %v", err)
		}
		_ = sim.Interface().Init()
		for i := range st.gpuCount() {
			d, _ := sim.Interface().DeviceGetHandleByIndex(i)
			_, _ = d.GetMemoryInfo()
			_, _ = d.GetTotalEnergyConsumption()
			_, _, _ = d.GetSamples(1, 0)
		}
		again, err := Parse(encodeState(st), "fuzz.yaml")
		if err != nil {
			t.Fatalf("written state does not parse: %v\n%s", err, encodeState(st))
		}
		if !reflect.DeepEqual(st, again) {
			t.Fatalf("state changed in a write/parse round trip:\n%s", encodeState(st))
		}
	})
}
