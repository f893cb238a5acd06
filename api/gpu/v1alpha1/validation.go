package v1alpha1

import (
	"errors"
	"fmt"
	"strings"
)

// NewGpuConfig returns the configuration a GPU gets when a claim gives
// none: exclusive use.
func NewGpuConfig() *GpuConfig {
	c := &GpuConfig{}
	c.Normalize()
	return c
}

// NewMigDeviceConfig returns the configuration a MIG device gets when a
// claim gives none: exclusive use.
func NewMigDeviceConfig() *MigDeviceConfig {
	c := &MigDeviceConfig{}
	c.Normalize()
	return c
}

// Normalize fills the defaults: the kind and apiVersion, exclusive sharing
// when unset, the Default interval for time-slicing. It is idempotent.
func (c *GpuConfig) Normalize() {
	c.APIVersion = SchemeGroupVersion.String()
	c.Kind = GpuConfigKind
	c.Sharing = c.Sharing.normalize()
}

// Normalize fills the defaults: the kind and apiVersion, exclusive sharing
// when unset, the Default interval for time-slicing. It is idempotent.
func (c *MigDeviceConfig) Normalize() {
	c.APIVersion = SchemeGroupVersion.String()
	c.Kind = MigDeviceConfigKind
	c.Sharing = c.Sharing.normalize()
}

// Validate checks the configuration, normalized or not, and returns every
// problem joined, each naming its field path.
func (c *GpuConfig) Validate() error {
	return c.Sharing.validate("sharing")
}

// Validate checks the configuration, normalized or not, and returns every
// problem joined, each naming its field path. A MIG device takes only the
// Default time-slice interval: the interval is a setting of its parent GPU,
// shared by all of the GPU's MIG devices.
func (c *MigDeviceConfig) Validate() error {
	err := c.Sharing.validate("sharing")
	if c.Sharing == nil || c.Sharing.TimeSlicingConfig == nil {
		return err
	}
	if iv := c.Sharing.TimeSlicingConfig.Interval; iv != "" && iv != DefaultTimeSlice {
		if _, known := iv.Level(); known {
			err = errors.Join(err, fmt.Errorf("sharing.timeSlicingConfig.interval: unsupported value %q for a MIG device, whose time slice is its parent GPU's: supported values: %q",
				string(iv), string(DefaultTimeSlice)))
		}
	}
	return err
}

// normalize returns s with its defaults filled, allocating it when nil.
func (s *Sharing) normalize() *Sharing {
	if s == nil {
		s = &Sharing{}
	}
	if s.Strategy == "" {
		s.Strategy = ExclusiveStrategy
	}
	if s.Strategy == TimeSlicingStrategy {
		if s.TimeSlicingConfig == nil {
			s.TimeSlicingConfig = &TimeSlicingConfig{}
		}
		if s.TimeSlicingConfig.Interval == "" {
			s.TimeSlicingConfig.Interval = DefaultTimeSlice
		}
	}
	return s
}

// validate checks the sharing settings found at path.
func (s *Sharing) validate(path string) error {
	if s == nil {
		return nil
	}
	var errs []error
	switch s.Strategy {
	case "", ExclusiveStrategy, TimeSlicingStrategy:
	default:
		errs = append(errs, unsupported(path+".strategy", string(s.Strategy), string(ExclusiveStrategy), string(TimeSlicingStrategy)))
	}
	if s.TimeSlicingConfig != nil {
		if s.Strategy != TimeSlicingStrategy {
			errs = append(errs, fmt.Errorf("%s.timeSlicingConfig: must not be set unless %s.strategy is %q", path, path, string(TimeSlicingStrategy)))
		}
		if _, ok := s.TimeSlicingConfig.Interval.Level(); !ok {
			errs = append(errs, unsupported(path+".timeSlicingConfig.interval", string(s.TimeSlicingConfig.Interval),
				string(DefaultTimeSlice), string(ShortTimeSlice), string(MediumTimeSlice), string(LongTimeSlice)))
		}
	}
	return errors.Join(errs...)
}

// unsupported is the error for a value outside an enumeration, in the
// wording of Kubernetes' field validation.
func unsupported(path, value string, allowed ...string) error {
	quoted := make([]string, len(allowed))
	for i, a := range allowed {
		quoted[i] = fmt.Sprintf("%q", a)
	}
	return fmt.Errorf("%s: unsupported value %q: supported values: %s", path, truncate(value), strings.Join(quoted, ", "))
}

// truncate shortens s for an error message, so that hostile input cannot
// make a huge error.
func truncate(s string) string {
	const limit = 64
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "..."
}
