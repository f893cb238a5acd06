package v1alpha1

import (
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
)

const prefix = `{"apiVersion":"gpu.gpulet.dev/v1alpha1",`

func TestDecode(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want DeviceConfig
	}{
		{
			name: "gpu config without sharing",
			in:   prefix + `"kind":"GpuConfig"}`,
			want: &GpuConfig{TypeMeta: typeMeta(GpuConfigKind)},
		},
		{
			name: "gpu time-slicing with interval",
			in:   prefix + `"kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Long"}}}`,
			want: &GpuConfig{TypeMeta: typeMeta(GpuConfigKind), Sharing: &Sharing{
				Strategy: TimeSlicingStrategy, TimeSlicingConfig: &TimeSlicingConfig{Interval: LongTimeSlice}}},
		},
		{
			name: "gpu exclusive",
			in:   prefix + `"kind":"GpuConfig","sharing":{"strategy":"Exclusive"}}`,
			want: &GpuConfig{TypeMeta: typeMeta(GpuConfigKind), Sharing: &Sharing{Strategy: ExclusiveStrategy}},
		},
		{
			name: "mig time-slicing at the default interval",
			in:   prefix + `"kind":"MigDeviceConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Default"}}}`,
			want: &MigDeviceConfig{TypeMeta: typeMeta(MigDeviceConfigKind), Sharing: &Sharing{
				Strategy: TimeSlicingStrategy, TimeSlicingConfig: &TimeSlicingConfig{Interval: DefaultTimeSlice}}},
		},
		{
			name: "whitespace and null sharing",
			in:   "\n  {\"kind\": \"MigDeviceConfig\", \"apiVersion\": \"gpu.gpulet.dev/v1alpha1\", \"sharing\": null}\n",
			want: &MigDeviceConfig{TypeMeta: typeMeta(MigDeviceConfigKind)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.in))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Decode = %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	deep := strings.Repeat("[", 20000) + strings.Repeat("]", 20000)
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{name: "empty", in: "", want: []string{"parameters: empty"}},
		{name: "blank", in: " \n\t", want: []string{"parameters: empty"}},
		{name: "null", in: "null", want: []string{"parameters: must be a JSON object"}},
		{name: "array", in: "[]", want: []string{"parameters: must be a JSON object"}},
		{name: "string", in: `"GpuConfig"`, want: []string{"parameters: must be a JSON object"}},
		{name: "yaml", in: "apiVersion: gpu.gpulet.dev/v1alpha1\nkind: GpuConfig\n", want: []string{"parameters: must be a JSON object"}},
		{name: "truncated", in: prefix + `"kind":"GpuConfig"`, want: []string{"parameters: invalid JSON: unexpected end of JSON input"}},
		{name: "trailing garbage", in: prefix + `"kind":"GpuConfig"} x`, want: []string{"parameters: invalid JSON: invalid character 'x' after top-level value"}},
		{name: "second object", in: prefix + `"kind":"GpuConfig"}{}`, want: []string{"invalid character '{' after top-level value"}},
		{name: "too large", in: prefix + `"kind":"GpuConfig","x":"` + strings.Repeat("a", MaxParametersSize) + `"}`, want: []string{"more than the 65536 byte limit"}},
		{name: "missing apiVersion", in: `{"kind":"GpuConfig"}`, want: []string{`apiVersion: required: must be "gpu.gpulet.dev/v1alpha1"`}},
		{name: "wrong apiVersion", in: `{"apiVersion":"resource.nvidia.com/v1beta1","kind":"GpuConfig"}`,
			want: []string{`apiVersion: unsupported value "resource.nvidia.com/v1beta1": supported values: "gpu.gpulet.dev/v1alpha1"`}},
		{name: "future version", in: `{"apiVersion":"gpu.gpulet.dev/v1","kind":"GpuConfig"}`, want: []string{`apiVersion: unsupported value "gpu.gpulet.dev/v1"`}},
		{name: "missing kind", in: `{"apiVersion":"gpu.gpulet.dev/v1alpha1"}`, want: []string{`kind: required: must be one of "GpuConfig", "MigDeviceConfig"`}},
		{name: "unknown kind", in: prefix + `"kind":"TpuConfig"}`, want: []string{`kind: unsupported value "TpuConfig": supported values: "GpuConfig", "MigDeviceConfig"`}},
		{name: "kind in wrong case", in: prefix + `"kind":"gpuconfig"}`, want: []string{`kind: unsupported value "gpuconfig"`}},
		{name: "both missing", in: `{}`, want: []string{"apiVersion: required", "kind: required"}},
		{name: "kind not a string", in: prefix + `"kind":5}`, want: []string{"parameters: kind: must be a string, got number"}},
		{name: "unknown top-level field", in: prefix + `"kind":"GpuConfig","metadata":{"name":"x"}}`, want: []string{`GpuConfig: unknown field "metadata"`}},
		{name: "unknown nested field", in: prefix + `"kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","mpsConfig":{}}}`, want: []string{`GpuConfig: unknown field "sharing.mpsConfig"`}},
		{name: "field in wrong case", in: prefix + `"kind":"GpuConfig","Sharing":{}}`, want: []string{`GpuConfig: unknown field "Sharing"`}},
		{name: "apiVersion in wrong case", in: `{"APIVersion":"gpu.gpulet.dev/v1alpha1","kind":"GpuConfig"}`, want: []string{"apiVersion: required"}},
		{name: "duplicate field", in: prefix + `"kind":"GpuConfig","sharing":{"strategy":"Exclusive"},"sharing":{"strategy":"TimeSlicing"}}`,
			want: []string{`GpuConfig: duplicate field "sharing"`}},
		{name: "several unknown fields", in: prefix + `"kind":"GpuConfig","a":1,"b":2}`, want: []string{`unknown field "a"`, `unknown field "b"`}},
		{name: "strategy not a string", in: prefix + `"kind":"GpuConfig","sharing":{"strategy":1}}`, want: []string{"GpuConfig: sharing.strategy: must be a string, got number"}},
		{name: "sharing not an object", in: prefix + `"kind":"GpuConfig","sharing":[]}`, want: []string{"GpuConfig: sharing: must be an object, got array"}},
		{name: "unknown strategy", in: prefix + `"kind":"GpuConfig","sharing":{"strategy":"MPS"}}`,
			want: []string{`GpuConfig: sharing.strategy: unsupported value "MPS": supported values: "Exclusive", "TimeSlicing"`}},
		{name: "unknown interval", in: prefix + `"kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Fast"}}}`,
			want: []string{`GpuConfig: sharing.timeSlicingConfig.interval: unsupported value "Fast": supported values: "Default", "Short", "Medium", "Long"`}},
		{name: "interval without time-slicing", in: prefix + `"kind":"GpuConfig","sharing":{"strategy":"Exclusive","timeSlicingConfig":{"interval":"Long"}}}`,
			want: []string{`GpuConfig: sharing.timeSlicingConfig: must not be set unless sharing.strategy is "TimeSlicing"`}},
		{name: "mig interval", in: prefix + `"kind":"MigDeviceConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Short"}}}`,
			want: []string{`MigDeviceConfig: sharing.timeSlicingConfig.interval: unsupported value "Short" for a MIG device`}},
		{name: "path traversal in a value", in: prefix + `"kind":"GpuConfig","sharing":{"strategy":"../../etc/passwd"}}`,
			want: []string{`sharing.strategy: unsupported value "../../etc/passwd"`}},
		{name: "deeply nested junk", in: prefix + `"kind":"GpuConfig","x":` + deep + `}`, want: []string{"parameters: invalid JSON:", "exceeded max depth"}},
		{name: "huge value is cut in the message", in: prefix + `"kind":"` + strings.Repeat("K", 1000) + `"}`, want: []string{`kind: unsupported value "KKKK`, `..."`}},
		{name: "invalid utf-8", in: prefix + "\"kind\":\"Gpu\xffConfig\"}", want: []string{"kind: unsupported value"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.in))
			if err == nil {
				t.Fatalf("Decode succeeded with %#v, want an error containing %q", got, tt.want)
			}
			if got != nil {
				t.Errorf("Decode returned %#v with its error", got)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if len(err.Error()) > 1024 {
				t.Errorf("error is %d bytes long", len(err.Error()))
			}
		})
	}
}

func TestAddToScheme(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	s := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Strict: true})
	obj, _, err := s.Decode([]byte(prefix+`"kind":"MigDeviceConfig","sharing":{"strategy":"TimeSlicing"}}`), nil, nil)
	if err != nil {
		t.Fatalf("scheme decode: %v", err)
	}
	mig, ok := obj.(*MigDeviceConfig)
	if !ok || mig.Sharing.Strategy != TimeSlicingStrategy {
		t.Errorf("scheme decode = %#v", obj)
	}
}
