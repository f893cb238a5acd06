package gpusim

import "testing"

// BenchmarkNew: building a simulator (mostly filling the mocks' stubs).
func BenchmarkNew(b *testing.B) {
	st, _ := DefaultState(MachineDGXH100)
	for b.Loop() {
		if _, err := New(st); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParse: reading a default eight-GPU state file.
func BenchmarkParse(b *testing.B) {
	st, _ := DefaultState(MachineDGXH100)
	data := encodeState(st)
	for b.Loop() {
		if _, err := Parse(data, "x"); err != nil {
			b.Fatal(err)
		}
	}
}
