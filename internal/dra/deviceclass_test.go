package dra

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/dynamic-resource-allocation/cel"
	"sigs.k8s.io/yaml"
)

// TestDeviceClassesSelect compiles the DeviceClasses of
// deployments/deviceclasses with the scheduler's CEL compiler and checks
// that each selects exactly its kind of device from a published pool: an
// A100 in MIG mode with shared twins.
func TestDeviceClassesSelect(t *testing.T) {
	b := newTestBed(t, stateA100MIG, func(o *Options) { o.ConsumableCapacity = true })
	res := b.driver.resources(nil)
	want := map[string]Kind{
		"gpu.gpulet.dev":        KindGPU,
		"nvidia-gpu.gpulet.dev": KindGPU,
		"mig.gpulet.dev":        KindMIG,
		"shared-gpu.gpulet.dev": KindShared,
	}
	files, err := filepath.Glob("../../deployments/deviceclasses/*.yaml")
	if err != nil || len(files) != len(want) {
		t.Fatalf("device class files %v (%v), want %d", files, err, len(want))
	}
	compiler := cel.GetCompiler(cel.Features{EnableConsumableCapacity: true})
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var dc resourceapi.DeviceClass
		if err := yaml.UnmarshalStrict(data, &dc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		kind, ok := want[dc.Name]
		if !ok {
			t.Errorf("%s: unexpected DeviceClass %s", f, dc.Name)
			continue
		}
		if (dc.Name == "nvidia-gpu.gpulet.dev") != (dc.Spec.ExtendedResourceName != nil && *dc.Spec.ExtendedResourceName == "nvidia.com/gpu") {
			t.Errorf("%s: extendedResourceName %v", dc.Name, dc.Spec.ExtendedResourceName)
		}
		var got, wantNames []string
		for _, d := range b.driver.cat.devices {
			if d.kind == kind {
				wantNames = append(wantNames, d.name)
			}
		}
		for _, pool := range res.Pools {
			for _, s := range pool.Slices {
				for _, d := range s.Devices {
					match := true
					for _, sel := range dc.Spec.Selectors {
						r := compiler.CompileCELExpression(sel.CEL.Expression, cel.Options{})
						if r.Error != nil {
							t.Fatalf("%s: %v", dc.Name, r.Error)
						}
						m, _, err := r.DeviceMatches(b.ctx, cel.Device{Driver: DefaultDriverName, AllowMultipleAllocations: d.AllowMultipleAllocations, Attributes: d.Attributes, Capacity: d.Capacity})
						if err != nil {
							t.Fatalf("%s on %s: %v", dc.Name, d.Name, err)
						}
						match = match && m
					}
					if match {
						got = append(got, d.Name)
					}
				}
			}
		}
		if !slices.Equal(got, wantNames) {
			t.Errorf("%s selects %d devices, want the %d of kind %s", dc.Name, len(got), len(wantNames), kind)
		}
	}

	// A claim's selector on the attributes and capacity users select on.
	r := compiler.CompileCELExpression(`device.attributes["gpu.gpulet.dev"].productName == "NVIDIA A100-SXM4-80GB" && device.capacity["gpu.gpulet.dev"].memory.compareTo(quantity("38Gi")) >= 0 && device.attributes["gpu.gpulet.dev"].type == "mig"`, cel.Options{})
	if r.Error != nil {
		t.Fatal(r.Error)
	}
	n := 0
	for _, pool := range res.Pools {
		for _, s := range pool.Slices {
			for _, d := range s.Devices {
				if m, _, err := r.DeviceMatches(b.ctx, cel.Device{Driver: DefaultDriverName, Attributes: d.Attributes, Capacity: d.Capacity}); err != nil {
					t.Fatal(err)
				} else if m {
					n++
				}
			}
		}
	}
	// 3g.40gb (2 placements) and 4g.40gb (1), 38.25 GiB each, and 7g.80gb
	// (1) on each of 8 GPUs.
	if n != 8*4 {
		t.Errorf("the selector matches %d MIG placements, want 32", n)
	}
}
