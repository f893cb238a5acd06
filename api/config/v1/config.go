package v1

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// Version is the config file version this package reads. A file without a
// version is taken to be this version, as NVIDIA's plugin does.
const Version = "v1"

// MaxFileSize is the largest config file read: the size limit of a ConfigMap.
const MaxFileSize = 1 << 20

// Config is gpulet's configuration file: NVIDIA's k8s-device-plugin v1
// schema plus the gpulet section.
type Config struct {
	// Version is "v1"; empty is read as "v1".
	Version string `json:"version,omitempty"`
	// Flags are NVIDIA's plugin settings.
	Flags Flags `json:"flags,omitzero"`
	// Resources is NVIDIA's resource renaming, read and ignored.
	Resources *Resources `json:"resources,omitempty"`
	// Sharing is NVIDIA's GPU sharing (time-slicing, MPS).
	Sharing Sharing `json:"sharing,omitzero"`
	// Imex is NVIDIA's IMEX channel injection, read and ignored.
	Imex *Imex `json:"imex,omitempty"`
	// Gpulet holds gpulet's own settings.
	Gpulet Gpulet `json:"gpulet,omitzero"`
}

// Default returns a config with every default filled in: what an empty or
// missing file gives.
func Default() *Config {
	c := &Config{}
	c.SetDefaults()
	return c
}

// SetDefaults fills every unset field that has a default, writes resource
// names in their qualified form ("gpu" becomes "nvidia.com/gpu") and drops
// empty lists of NVIDIA's schema, where empty and unset mean the same. Fields
// of NVIDIA's schema that gpulet does not implement stay unset. It is
// idempotent.
func (c *Config) SetDefaults() {
	if c.Version == "" {
		c.Version = Version
	}
	if c.Resources != nil {
		c.Resources.GPUs = nilIfEmpty(c.Resources.GPUs)
		c.Resources.MIGs = nilIfEmpty(c.Resources.MIGs)
	}
	if c.Imex != nil {
		c.Imex.ChannelIDs = nilIfEmpty(c.Imex.ChannelIDs)
	}
	c.Flags.setDefaults()
	c.Sharing.TimeSlicing.setDefaults()
	c.Sharing.MPS.setDefaults()
	c.Gpulet.setDefaults()
}

// Validate checks every field and returns all problems joined, each naming
// its field path. Unset fields are valid whether or not defaults were set.
func (c *Config) Validate() error {
	var errs []error
	if c.Version != "" && c.Version != Version {
		errs = append(errs, oneOf("version", c.Version, Version))
	}
	errs = append(errs,
		c.Flags.validate(),
		c.Resources.validate(),
		c.Sharing.TimeSlicing.validate("sharing.timeSlicing", true),
		c.Sharing.MPS.validate("sharing.mps", false),
		c.Gpulet.validate(),
	)
	return errors.Join(errs...)
}

// Warnings lists the settings that gpulet reads but will not act on, each
// naming its field path. It does not repeat the unknown-field warnings of
// [Parse].
func (c *Config) Warnings() []string {
	effective := c.Gpulet.DeviceListStrategy
	if effective == "" {
		effective = DefaultDeviceListStrategy
	}
	var w []string
	w = append(w, c.Flags.warnings(effective)...)
	w = append(w, c.Resources.warnings()...)
	w = append(w, c.Sharing.TimeSlicing.warnings("sharing.timeSlicing")...)
	if c.Sharing.MPS != nil {
		w = append(w, "sharing.mps: not implemented by gpulet, ignored")
	}
	w = append(w, c.Imex.warnings()...)
	w = append(w, c.Gpulet.warnings()...)
	return w
}

// Load reads the config file at path. An empty path gives the defaults; so
// does a file that does not exist, with a warning saying so.
func Load(path string) (*Config, []string, error) {
	if path == "" {
		return Default(), nil, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Default(), []string{fmt.Sprintf("%s: config file not found, using defaults", path)}, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	data, err := readLimited(f, path)
	if err != nil {
		return nil, nil, err
	}
	return Parse(data, path)
}

// Parse reads a config file's contents; source names it in errors and
// warnings (a path, or something like "configmap gpulet/config"). It
// decodes, applies defaults and validates, and returns the warnings for
// settings gpulet ignores. Errors name the source and each bad field:
//
//	config.yaml: sharing.timeSlicing.resources[0].replicas: must be >= 1, got -1
func Parse(data []byte, source string) (*Config, []string, error) {
	if len(data) > MaxFileSize {
		return nil, nil, fmt.Errorf("%s: %d bytes, more than the %d byte limit", source, len(data), MaxFileSize)
	}
	c, warnings, err := decode(data)
	if err == nil {
		err = c.Validate()
	}
	if err != nil {
		return nil, nil, capErrors(source, prefixErrors(source, err))
	}
	warnings = append(warnings, c.Warnings()...)
	c.SetDefaults()
	if len(warnings) > maxReported {
		more := len(warnings) - maxReported
		warnings = append(warnings[:maxReported], fmt.Sprintf("and %d more warnings", more))
	}
	for i, w := range warnings {
		warnings[i] = source + ": " + w
	}
	return c, warnings, nil
}

// maxReported bounds the errors and warnings Parse reports, so that a
// broken or hostile file cannot flood the log.
const maxReported = 50

// capErrors keeps the first maxReported of the joined errors in err.
func capErrors(source string, err error) error {
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok || len(joined.Unwrap()) <= maxReported {
		return err
	}
	errs := joined.Unwrap()
	kept := append([]error{}, errs[:maxReported]...)
	kept = append(kept, fmt.Errorf("%s: and %d more errors", source, len(errs)-maxReported))
	return errors.Join(kept...)
}

// prefixErrors puts source in front of each of the joined errors in err, so
// that every line of the message names the file.
func prefixErrors(source string, err error) error {
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return fmt.Errorf("%s: %w", source, err)
	}
	var out []error
	for _, e := range joined.Unwrap() {
		// Flatten nested joins, so that each problem is one entry.
		p := prefixErrors(source, e)
		if inner, ok := p.(interface{ Unwrap() []error }); ok {
			out = append(out, inner.Unwrap()...)
			continue
		}
		out = append(out, p)
	}
	return errors.Join(out...)
}

// nilIfEmpty returns nil for an empty list, s otherwise.
func nilIfEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}
