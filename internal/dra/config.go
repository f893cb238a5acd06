package dra

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	resourceapi "k8s.io/api/resource/v1"

	gpuv1alpha1 "github.com/gpulet/gpulet/api/gpu/v1alpha1"
	"github.com/gpulet/gpulet/internal/ledger"
)

// opaqueConfig is one of the driver's opaque configurations of a claim's
// allocation, decoded, with where it came from for error messages.
type opaqueConfig struct {
	// path names the configuration as the user wrote it:
	// "spec.devices.config[1]" of the claim, or "DeviceClass config[0]".
	path     string
	requests []string
	config   gpuv1alpha1.DeviceConfig
}

// claimConfigs decodes the driver's opaque configurations of an allocated
// claim, in precedence order: the DeviceClasses' first, then the claim's
// own, each in the order written, a later one overriding an earlier one.
// A configuration that does not decode or validate is an error naming
// its field path, whether or not it applies to a device of this node.
func claimConfigs(claim *resourceapi.ResourceClaim, driver string) ([]opaqueConfig, error) {
	alloc := claim.Status.Allocation
	var fromClass, fromClaim []opaqueConfig
	var errs []error
	classIdx, claimIdx := 0, 0
	for _, c := range alloc.Devices.Config {
		var path string
		switch c.Source {
		case resourceapi.AllocationConfigSourceClass:
			path = fmt.Sprintf("DeviceClass config[%d]", classIdx)
			classIdx++
		default:
			path = fmt.Sprintf("spec.devices.config[%d]", claimIdx)
			claimIdx++
		}
		if c.Opaque == nil || c.Opaque.Driver != driver {
			continue
		}
		path += ".opaque.parameters"
		cfg, err := gpuv1alpha1.Decode(c.Opaque.Parameters.Raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
			continue
		}
		oc := opaqueConfig{path: path, requests: c.Requests, config: cfg}
		if c.Source == resourceapi.AllocationConfigSourceClass {
			fromClass = append(fromClass, oc)
		} else {
			fromClaim = append(fromClaim, oc)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return append(fromClass, fromClaim...), nil
}

// appliesTo reports whether a configuration is for the request ("req" or
// "req/subreq"); explicit reports whether it names the request rather
// than applying to all of them.
func (c opaqueConfig) appliesTo(request string) (applies, explicit bool) {
	if len(c.requests) == 0 {
		return true, false
	}
	base, _, _ := strings.Cut(request, "/")
	if slices.Contains(c.requests, request) || slices.Contains(c.requests, base) {
		return true, true
	}
	return false, false
}

// sharingFor decides the effective sharing of one allocated device from
// the configurations: the last one that applies and is of the device's
// kind (GpuConfig for GPUs, MigDeviceConfig for MIG devices) wins. A
// configuration of the other kind that names the request is an error; one
// for all requests simply does not apply. A shared GPU (consumable
// capacity) is time-sliced; asking for Exclusive on it is an error.
func sharingFor(d *device, request string, configs []opaqueConfig) (*gpuv1alpha1.Sharing, error) {
	var chosen gpuv1alpha1.DeviceConfig
	var chosenPath string
	for _, c := range configs {
		applies, explicit := c.appliesTo(request)
		if !applies {
			continue
		}
		_, isMIG := c.config.(*gpuv1alpha1.MigDeviceConfig)
		if isMIG != (d.kind == KindMIG) {
			if explicit {
				return nil, fmt.Errorf("%s: %s cannot configure %s device %s of request %q (use %s)",
					c.path, kindOf(c.config), kindName(d.kind), d.name, request, wantKind(d.kind))
			}
			continue
		}
		chosen, chosenPath = c.config, c.path
	}
	switch {
	case chosen == nil && d.kind == KindMIG:
		chosen = gpuv1alpha1.NewMigDeviceConfig()
	case chosen == nil && d.kind == KindShared:
		chosen = &gpuv1alpha1.GpuConfig{Sharing: &gpuv1alpha1.Sharing{Strategy: gpuv1alpha1.TimeSlicingStrategy}}
	case chosen == nil:
		chosen = gpuv1alpha1.NewGpuConfig()
	case d.kind == KindShared:
		s := chosen.SharingSettings()
		if s != nil && s.Strategy == gpuv1alpha1.ExclusiveStrategy {
			return nil, fmt.Errorf("%s: sharing.strategy: %q is not possible on %s, a GPU shared through consumable capacity (use %q or leave it unset)",
				chosenPath, gpuv1alpha1.ExclusiveStrategy, d.name, gpuv1alpha1.TimeSlicingStrategy)
		}
		if s == nil || s.Strategy == "" {
			cfg := chosen.(*gpuv1alpha1.GpuConfig).DeepCopy()
			cfg.Sharing = &gpuv1alpha1.Sharing{Strategy: gpuv1alpha1.TimeSlicingStrategy}
			if s != nil {
				cfg.Sharing.TimeSlicingConfig = s.TimeSlicingConfig
			}
			chosen = cfg
		}
	}
	chosen = chosen.DeepCopyObject().(gpuv1alpha1.DeviceConfig)
	chosen.Normalize()
	if err := chosen.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", chosenPath, err)
	}
	return chosen.SharingSettings(), nil
}

func kindOf(c gpuv1alpha1.DeviceConfig) string {
	if _, ok := c.(*gpuv1alpha1.MigDeviceConfig); ok {
		return gpuv1alpha1.MigDeviceConfigKind
	}
	return gpuv1alpha1.GpuConfigKind
}

func kindName(k Kind) string {
	switch k {
	case KindMIG:
		return "MIG"
	case KindShared:
		return "shared GPU"
	}
	return "GPU"
}

func wantKind(k Kind) string {
	if k == KindMIG {
		return gpuv1alpha1.MigDeviceConfigKind
	}
	return gpuv1alpha1.GpuConfigKind
}

// checkSharedInterval refuses a time-slice interval on a shared GPU that
// differs from the one the claims already sharing it use: the interval is
// a setting of the GPU, so all its sharers must agree.
func checkSharedInterval(d *device, sharing *gpuv1alpha1.Sharing, self string, records []ledger.Record) error {
	if d.kind != KindShared || sharing == nil || sharing.TimeSlicingConfig == nil {
		return nil
	}
	want := sharing.TimeSlicingConfig.Interval
	for _, r := range records {
		if r.API != ledger.DRA || r.ID == self {
			continue
		}
		st, err := decodeState(r)
		if err != nil {
			continue
		}
		for _, o := range st.Devices {
			if o.Device != d.name || o.Sharing == nil || o.Sharing.TimeSlicingConfig == nil {
				continue
			}
			if got := o.Sharing.TimeSlicingConfig.Interval; got != want {
				return fmt.Errorf("sharing.timeSlicingConfig.interval: %q, but %s is already shared at %q with claim %s/%s: all claims sharing a GPU use one interval",
					want, d.name, got, r.Namespace, r.Name)
			}
		}
	}
	return nil
}
