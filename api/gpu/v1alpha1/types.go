package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is the API group of gpulet's device configuration.
const GroupName = "gpu.gpulet.dev"

// Version is this package's API version.
const Version = "v1alpha1"

// SchemeGroupVersion is the group and version of the kinds in this package.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: Version}

// The kinds of this package.
const (
	// GpuConfigKind configures a whole GPU.
	GpuConfigKind = "GpuConfig"
	// MigDeviceConfigKind configures a MIG device.
	MigDeviceConfigKind = "MigDeviceConfig"
)

// GpuConfig is the configuration of whole GPUs allocated to a claim.
type GpuConfig struct {
	metav1.TypeMeta `json:",inline"`
	// Sharing says how the containers of the claim share each GPU. Unset
	// means exclusive use.
	Sharing *Sharing `json:"sharing,omitempty"`
}

// MigDeviceConfig is the configuration of MIG devices allocated to a claim.
type MigDeviceConfig struct {
	metav1.TypeMeta `json:",inline"`
	// Sharing says how the containers of the claim share each MIG device.
	// Unset means exclusive use. The time-slice interval is a setting of the
	// parent GPU, so a MIG device takes only the "Default" interval.
	Sharing *Sharing `json:"sharing,omitempty"`
}

// Sharing says how the containers that a claim's device is handed to share
// it.
type Sharing struct {
	// Strategy is Exclusive (the default) or TimeSlicing.
	Strategy SharingStrategy `json:"strategy,omitempty"`
	// TimeSlicingConfig tunes time-slicing; only with strategy TimeSlicing.
	TimeSlicingConfig *TimeSlicingConfig `json:"timeSlicingConfig,omitempty"`
	// An mpsConfig for strategy MPS may be added in a later version.
}

// SharingStrategy is how a device is shared.
type SharingStrategy string

// The sharing strategies.
const (
	// ExclusiveStrategy gives the device to one claim's containers with no
	// change to its settings.
	ExclusiveStrategy SharingStrategy = "Exclusive"
	// TimeSlicingStrategy lets the claim's containers share the device by
	// CUDA time-slicing, with the interval of TimeSlicingConfig.
	TimeSlicingStrategy SharingStrategy = "TimeSlicing"
)

// TimeSlicingConfig tunes CUDA time-slicing.
type TimeSlicingConfig struct {
	// Interval is how long each process runs before the GPU switches:
	// Default, Short, Medium or Long. Unset means Default.
	Interval TimeSliceInterval `json:"interval,omitempty"`
}

// TimeSliceInterval is a GPU's time-slice length, in the driver's named
// steps.
type TimeSliceInterval string

// The time-slice intervals.
const (
	// DefaultTimeSlice is the driver's default interval.
	DefaultTimeSlice TimeSliceInterval = "Default"
	// ShortTimeSlice is the shortest interval.
	ShortTimeSlice TimeSliceInterval = "Short"
	// MediumTimeSlice is a medium interval.
	MediumTimeSlice TimeSliceInterval = "Medium"
	// LongTimeSlice is the longest interval.
	LongTimeSlice TimeSliceInterval = "Long"
)

// Level returns the interval as the driver's compute-policy time-slice
// number (0 Default, 1 Short, 2 Medium, 3 Long), and false for an unknown
// interval. An unset interval is Default.
func (t TimeSliceInterval) Level() (int, bool) {
	switch t {
	case "", DefaultTimeSlice:
		return 0, true
	case ShortTimeSlice:
		return 1, true
	case MediumTimeSlice:
		return 2, true
	case LongTimeSlice:
		return 3, true
	}
	return 0, false
}
