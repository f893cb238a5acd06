package v1

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// FuzzParse checks that Parse never panics, and that what it accepts is
// valid, names its source in every warning, and survives a round trip
// through YAML unchanged.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, warnings, err := Parse(data, "fuzz.yaml")
		if err != nil {
			if c != nil || warnings != nil {
				t.Fatalf("Parse failed with %v but returned a config or warnings", err)
			}
			if !strings.HasPrefix(err.Error(), "fuzz.yaml: ") {
				t.Fatalf("error does not name the source: %v", err)
			}
			return
		}
		for _, w := range warnings {
			if !strings.HasPrefix(w, "fuzz.yaml: ") {
				t.Fatalf("warning does not name the source: %q", w)
			}
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted config does not validate: %v", err)
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("accepted config does not marshal: %v", err)
		}
		again, _, err := Parse(out, "marshalled")
		if err != nil {
			t.Fatalf("marshalled config does not parse: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(c, again) {
			t.Fatalf("round trip changed the config:\n%s", out)
		}
	})
}
