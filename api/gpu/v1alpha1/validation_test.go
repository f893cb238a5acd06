package v1alpha1

import (
	"reflect"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// typeMeta returns the TypeMeta of kind in this package's version.
func typeMeta(kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: SchemeGroupVersion.String(), Kind: kind}
}

func TestNormalize(t *testing.T) {
	exclusive := &Sharing{Strategy: ExclusiveStrategy}
	slicedDefault := &Sharing{Strategy: TimeSlicingStrategy, TimeSlicingConfig: &TimeSlicingConfig{Interval: DefaultTimeSlice}}
	tests := []struct {
		name string
		in   DeviceConfig
		want DeviceConfig
	}{
		{"empty gpu config", &GpuConfig{}, &GpuConfig{TypeMeta: typeMeta(GpuConfigKind), Sharing: exclusive}},
		{"empty mig config", &MigDeviceConfig{}, &MigDeviceConfig{TypeMeta: typeMeta(MigDeviceConfigKind), Sharing: exclusive}},
		{"empty strategy", &GpuConfig{Sharing: &Sharing{}}, &GpuConfig{TypeMeta: typeMeta(GpuConfigKind), Sharing: exclusive}},
		{"time-slicing without config", &GpuConfig{Sharing: &Sharing{Strategy: TimeSlicingStrategy}},
			&GpuConfig{TypeMeta: typeMeta(GpuConfigKind), Sharing: slicedDefault}},
		{"time-slicing without interval", &MigDeviceConfig{Sharing: &Sharing{Strategy: TimeSlicingStrategy, TimeSlicingConfig: &TimeSlicingConfig{}}},
			&MigDeviceConfig{TypeMeta: typeMeta(MigDeviceConfigKind), Sharing: slicedDefault}},
		{"interval kept", &GpuConfig{Sharing: &Sharing{Strategy: TimeSlicingStrategy, TimeSlicingConfig: &TimeSlicingConfig{Interval: MediumTimeSlice}}},
			&GpuConfig{TypeMeta: typeMeta(GpuConfigKind), Sharing: &Sharing{Strategy: TimeSlicingStrategy, TimeSlicingConfig: &TimeSlicingConfig{Interval: MediumTimeSlice}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.in.Normalize()
			if !reflect.DeepEqual(tt.in, tt.want) {
				t.Errorf("Normalize = %#v, want %#v", tt.in, tt.want)
			}
			if err := tt.in.Validate(); err != nil {
				t.Errorf("normalized config does not validate: %v", err)
			}
			again := tt.in.DeepCopyObject().(DeviceConfig)
			again.Normalize()
			if !reflect.DeepEqual(again, tt.want) {
				t.Errorf("Normalize is not idempotent: %#v", again)
			}
		})
	}
}

func TestNewConfigs(t *testing.T) {
	if got := NewGpuConfig(); got.Sharing.Strategy != ExclusiveStrategy || got.Kind != GpuConfigKind {
		t.Errorf("NewGpuConfig() = %#v", got)
	}
	if got := NewMigDeviceConfig(); got.Sharing.Strategy != ExclusiveStrategy || got.Kind != MigDeviceConfigKind {
		t.Errorf("NewMigDeviceConfig() = %#v", got)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		in   DeviceConfig
		want []string // empty: valid
	}{
		{name: "zero gpu config", in: &GpuConfig{}},
		{name: "zero mig config", in: &MigDeviceConfig{}},
		{name: "gpu long interval", in: &GpuConfig{Sharing: &Sharing{Strategy: TimeSlicingStrategy, TimeSlicingConfig: &TimeSlicingConfig{Interval: LongTimeSlice}}}},
		{name: "mig default interval", in: &MigDeviceConfig{Sharing: &Sharing{Strategy: TimeSlicingStrategy, TimeSlicingConfig: &TimeSlicingConfig{Interval: DefaultTimeSlice}}}},
		{name: "unknown strategy", in: &GpuConfig{Sharing: &Sharing{Strategy: "Shared"}},
			want: []string{`sharing.strategy: unsupported value "Shared": supported values: "Exclusive", "TimeSlicing"`}},
		{name: "config without time-slicing and bad interval", in: &GpuConfig{Sharing: &Sharing{TimeSlicingConfig: &TimeSlicingConfig{Interval: "Fast"}}},
			want: []string{
				`sharing.timeSlicingConfig: must not be set unless sharing.strategy is "TimeSlicing"`,
				`sharing.timeSlicingConfig.interval: unsupported value "Fast": supported values: "Default", "Short", "Medium", "Long"`,
			}},
		{name: "mig long interval", in: &MigDeviceConfig{Sharing: &Sharing{Strategy: TimeSlicingStrategy, TimeSlicingConfig: &TimeSlicingConfig{Interval: LongTimeSlice}}},
			want: []string{`sharing.timeSlicingConfig.interval: unsupported value "Long" for a MIG device`}},
		{name: "mig unknown interval reported once", in: &MigDeviceConfig{Sharing: &Sharing{Strategy: TimeSlicingStrategy, TimeSlicingConfig: &TimeSlicingConfig{Interval: "Fast"}}},
			want: []string{`sharing.timeSlicingConfig.interval: unsupported value "Fast": supported values: "Default", "Short", "Medium", "Long"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.in.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want %q", tt.want)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.want) {
				t.Errorf("Validate = %q, want %d errors", lines, len(tt.want))
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestTimeSliceIntervalLevel(t *testing.T) {
	tests := []struct {
		in     TimeSliceInterval
		want   int
		wantOK bool
	}{
		{"", 0, true},
		{DefaultTimeSlice, 0, true},
		{ShortTimeSlice, 1, true},
		{MediumTimeSlice, 2, true},
		{LongTimeSlice, 3, true},
		{"long", 0, false},
		{"4", 0, false},
	}
	for _, tt := range tests {
		t.Run(string(tt.in), func(t *testing.T) {
			got, ok := tt.in.Level()
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("Level(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestDeepCopy(t *testing.T) {
	orig := &GpuConfig{TypeMeta: typeMeta(GpuConfigKind), Sharing: &Sharing{
		Strategy: TimeSlicingStrategy, TimeSlicingConfig: &TimeSlicingConfig{Interval: ShortTimeSlice}}}
	cp := orig.DeepCopyObject().(*GpuConfig)
	if !reflect.DeepEqual(orig, cp) {
		t.Fatalf("copy differs: %#v", cp)
	}
	cp.Sharing.TimeSlicingConfig.Interval = LongTimeSlice
	cp.Sharing.Strategy = ExclusiveStrategy
	if orig.Sharing.TimeSlicingConfig.Interval != ShortTimeSlice || orig.Sharing.Strategy != TimeSlicingStrategy {
		t.Errorf("changing the copy changed the original: %#v", orig.Sharing)
	}
	var nilGPU *GpuConfig
	if nilGPU.DeepCopy() != nil {
		t.Errorf("DeepCopy of nil GpuConfig is not nil")
	}
	var nilMIG *MigDeviceConfig
	if nilMIG.DeepCopy() != nil || (*Sharing)(nil).DeepCopy() != nil {
		t.Errorf("DeepCopy of nil is not nil")
	}
	mig := &MigDeviceConfig{Sharing: &Sharing{Strategy: ExclusiveStrategy}}
	if got := mig.DeepCopyObject(); !reflect.DeepEqual(got, mig) {
		t.Errorf("MigDeviceConfig copy differs: %#v", got)
	}
}
