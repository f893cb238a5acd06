package v1alpha1

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	sigsjson "sigs.k8s.io/json"
)

// MaxParametersSize bounds the parameters Decode reads. The API server
// already limits opaque parameters to 10 KiB; this is a second fence.
const MaxParametersSize = 64 << 10

// DeviceConfig is what every kind of this package is: a runtime.Object that
// can fill its defaults, check itself and tell how its device is shared.
type DeviceConfig interface {
	runtime.Object
	// Normalize fills the defaults. It is idempotent.
	Normalize()
	// Validate checks every field, naming field paths in its errors.
	Validate() error
	// SharingSettings returns the sharing settings, nil when unset.
	SharingSettings() *Sharing
}

// SharingSettings returns the sharing settings, nil when unset.
func (c *GpuConfig) SharingSettings() *Sharing { return c.Sharing }

// SharingSettings returns the sharing settings, nil when unset.
func (c *MigDeviceConfig) SharingSettings() *Sharing { return c.Sharing }

// AddToScheme registers the kinds of this package in s, for callers that
// decode through a runtime.Scheme of their own.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion, &GpuConfig{}, &MigDeviceConfig{})
	return nil
}

// Decode reads opaque device configuration parameters, as they arrive in
// resource.k8s.io OpaqueDeviceConfiguration.Parameters.Raw, and validates
// them. It is strict: the input must be one JSON object of a known kind and
// version, with no unknown or duplicate fields and nothing after it. It does
// not normalize, so that a caller merging several configurations can still
// tell set fields from unset ones.
func Decode(raw []byte) (DeviceConfig, error) {
	if len(raw) > MaxParametersSize {
		return nil, fmt.Errorf("parameters: %d bytes, more than the %d byte limit", len(raw), MaxParametersSize)
	}
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 {
		return nil, errors.New("parameters: empty")
	}
	if trimmed[0] != '{' {
		return nil, errors.New("parameters: must be a JSON object")
	}

	var meta struct {
		APIVersion *string `json:"apiVersion"`
		Kind       *string `json:"kind"`
	}
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &meta); err != nil {
		return nil, fmt.Errorf("parameters: %w", cleanJSONError(err))
	}
	var errs []error
	switch {
	case meta.APIVersion == nil:
		errs = append(errs, fmt.Errorf("apiVersion: required: must be %q", SchemeGroupVersion.String()))
	case *meta.APIVersion != SchemeGroupVersion.String():
		errs = append(errs, unsupported("apiVersion", *meta.APIVersion, SchemeGroupVersion.String()))
	}
	var obj DeviceConfig
	switch {
	case meta.Kind == nil:
		errs = append(errs, fmt.Errorf("kind: required: must be one of %q, %q", GpuConfigKind, MigDeviceConfigKind))
	case *meta.Kind == GpuConfigKind:
		obj = &GpuConfig{}
	case *meta.Kind == MigDeviceConfigKind:
		obj = &MigDeviceConfig{}
	default:
		errs = append(errs, unsupported("kind", *meta.Kind, GpuConfigKind, MigDeviceConfigKind))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	strict, err := sigsjson.UnmarshalStrict(raw, obj)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", *meta.Kind, cleanJSONError(err))
	}
	if len(strict) > 0 {
		for i, e := range strict {
			strict[i] = fmt.Errorf("%s: %w", *meta.Kind, e)
		}
		return nil, errors.Join(strict...)
	}
	if err := obj.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", *meta.Kind, err)
	}
	return obj, nil
}

// cleanJSONError turns a decoding error into a message without Go type
// names where one can be had.
func cleanJSONError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Errorf("%s: must be %s, got %s", te.Field, jsonKind(te.Type.String()), te.Value)
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	if strings.Contains(msg, "cannot unmarshal") {
		// sigs.k8s.io/json's own type error: keep its path, drop the prefix.
		return errors.New(msg)
	}
	return fmt.Errorf("invalid JSON: %s", msg)
}

// jsonKind names a Go type as the JSON value it wants.
func jsonKind(goType string) string {
	switch {
	case strings.HasPrefix(goType, "*"):
		return jsonKind(goType[1:])
	case strings.HasSuffix(goType, "Strategy"), strings.HasSuffix(goType, "Interval"), goType == "string":
		return "a string"
	default:
		return "an object"
	}
}
