package v1

import (
	"errors"
	"fmt"
)

// Resources renames devices by product name pattern. NVIDIA's plugin reads
// this section but ignores it, and so does gpulet: both advertise NVIDIA's
// standard names.
type Resources struct {
	// GPUs renames whole GPUs whose product name matches a pattern.
	GPUs []Resource `json:"gpus,omitempty"`
	// MIGs renames MIG devices whose profile matches a pattern.
	MIGs []Resource `json:"mig,omitempty"`
}

// Resource pairs a product name pattern ("*" matches anything) with the
// resource name for devices that match it.
type Resource struct {
	// Pattern is matched against the product name or MIG profile.
	Pattern string `json:"pattern"`
	// Name is the resource name for matching devices.
	Name ResourceName `json:"name"`
}

// validate checks the entries as NVIDIA's plugin does: both fields set, the
// name a valid resource name.
func (r *Resources) validate() error {
	if r == nil {
		return nil
	}
	var errs []error
	check := func(path string, list []Resource) {
		for i, res := range list {
			p := fmt.Sprintf("%s[%d]", path, i)
			if res.Pattern == "" {
				errs = append(errs, fmt.Errorf("%s.pattern: must not be empty", p))
			}
			if err := res.Name.Validate(); err != nil {
				errs = append(errs, fmt.Errorf("%s.name: %w", p, err))
			}
		}
	}
	check("resources.gpus", r.GPUs)
	check("resources.mig", r.MIGs)
	return errors.Join(errs...)
}

// warnings says that renaming is ignored, when the file asks for any.
func (r *Resources) warnings() []string {
	if r == nil || (len(r.GPUs) == 0 && len(r.MIGs) == 0) {
		return nil
	}
	return []string{"resources: renaming resources by pattern is not implemented by gpulet, ignored: standard names are advertised"}
}

// Imex selects IMEX channels to inject into containers. Not implemented by
// gpulet.
type Imex struct {
	// ChannelIDs lists the channels to inject; NVIDIA allows [] or [0].
	ChannelIDs []int `json:"channelIDs,omitempty"`
	// Required fails a container when a listed channel is missing.
	Required bool `json:"required,omitempty"`
}

// warnings says that IMEX is ignored, when the file asks for it.
func (m *Imex) warnings() []string {
	if m == nil || (len(m.ChannelIDs) == 0 && !m.Required) {
		return nil
	}
	return []string{"imex: IMEX channel injection is not implemented by gpulet, ignored"}
}
