package v1alpha1

import "k8s.io/apimachinery/pkg/runtime"

// DeepCopyInto copies s into out.
func (s *Sharing) DeepCopyInto(out *Sharing) {
	*out = *s
	if s.TimeSlicingConfig != nil {
		tc := *s.TimeSlicingConfig
		out.TimeSlicingConfig = &tc
	}
}

// DeepCopy returns a copy of s.
func (s *Sharing) DeepCopy() *Sharing {
	if s == nil {
		return nil
	}
	out := new(Sharing)
	s.DeepCopyInto(out)
	return out
}

// DeepCopy returns a copy of c.
func (c *GpuConfig) DeepCopy() *GpuConfig {
	if c == nil {
		return nil
	}
	return &GpuConfig{TypeMeta: c.TypeMeta, Sharing: c.Sharing.DeepCopy()}
}

// DeepCopyObject returns a copy of c as a runtime.Object.
func (c *GpuConfig) DeepCopyObject() runtime.Object {
	if c == nil {
		return nil
	}
	return c.DeepCopy()
}

// DeepCopy returns a copy of c.
func (c *MigDeviceConfig) DeepCopy() *MigDeviceConfig {
	if c == nil {
		return nil
	}
	return &MigDeviceConfig{TypeMeta: c.TypeMeta, Sharing: c.Sharing.DeepCopy()}
}

// DeepCopyObject returns a copy of c as a runtime.Object.
func (c *MigDeviceConfig) DeepCopyObject() runtime.Object {
	if c == nil {
		return nil
	}
	return c.DeepCopy()
}
