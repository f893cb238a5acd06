package v1alpha1

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzDecode checks that Decode never panics on hostile input, and that
// what it accepts is valid, normalizes to something valid, and survives a
// round trip through JSON unchanged.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		prefix + `"kind":"GpuConfig"}`,
		prefix + `"kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Long"}}}`,
		prefix + `"kind":"MigDeviceConfig","sharing":{"strategy":"Exclusive"}}`,
		prefix + `"kind":"MigDeviceConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{}}}`,
		prefix + `"kind":"GpuConfig","sharing":{"strategy":"Exclusive"},"sharing":{}}`,
		prefix + `"kind":"GpuConfig","extra":[[[[{}]]]]}`,
		`{"kind":"GpuConfig"} trailing`,
		`[]`, `null`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		obj, err := Decode(raw)
		if err != nil {
			if obj != nil {
				t.Fatalf("Decode returned %#v with error %v", obj, err)
			}
			return
		}
		if err := obj.Validate(); err != nil {
			t.Fatalf("decoded config does not validate: %v", err)
		}
		out, err := json.Marshal(obj)
		if err != nil {
			t.Fatalf("decoded config does not marshal: %v", err)
		}
		again, err := Decode(out)
		if err != nil {
			t.Fatalf("marshalled config does not decode: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(obj, again) {
			t.Fatalf("round trip changed the config: %#v, then %#v", obj, again)
		}
		obj.Normalize()
		if err := obj.Validate(); err != nil {
			t.Fatalf("normalized config does not validate: %v", err)
		}
		if s := obj.SharingSettings(); s == nil || s.Strategy == "" {
			t.Fatalf("normalized config has no sharing strategy: %#v", obj)
		}
	})
}
