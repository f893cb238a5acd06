package v1

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// MigStrategy says how MIG devices are advertised through the device plugin.
type MigStrategy string

// The MIG strategies of NVIDIA's plugin.
const (
	// MigStrategyNone advertises whole GPUs only, MIG or not.
	MigStrategyNone MigStrategy = "none"
	// MigStrategySingle advertises the MIG devices of a node whose GPUs are
	// all split the same way as nvidia.com/gpu.
	MigStrategySingle MigStrategy = "single"
	// MigStrategyMixed advertises each MIG profile as its own resource,
	// nvidia.com/mig-<profile>.
	MigStrategyMixed MigStrategy = "mixed"
)

// DeviceListStrategy says how the device plugin tells the container runtime
// which devices a container gets.
type DeviceListStrategy string

// The device list strategies of NVIDIA's plugin. gpulet implements
// DeviceListStrategyCDICRI and DeviceListStrategyEnvVar.
const (
	// DeviceListStrategyEnvVar sets NVIDIA_VISIBLE_DEVICES for the NVIDIA
	// container runtime.
	DeviceListStrategyEnvVar DeviceListStrategy = "envvar"
	// DeviceListStrategyVolumeMounts passes devices as volume mounts for the
	// NVIDIA container runtime. Not implemented by gpulet.
	DeviceListStrategyVolumeMounts DeviceListStrategy = "volume-mounts"
	// DeviceListStrategyCDIAnnotations passes CDI device names in container
	// annotations. Not implemented by gpulet.
	DeviceListStrategyCDIAnnotations DeviceListStrategy = "cdi-annotations"
	// DeviceListStrategyCDICRI passes CDI device names in the CRI CDIDevices
	// field (AllocateResponse.CdiDevices).
	DeviceListStrategyCDICRI DeviceListStrategy = "cdi-cri"
)

// DeviceIDStrategy says how devices are named to the container runtime.
type DeviceIDStrategy string

// The device ID strategies of NVIDIA's plugin. gpulet implements
// DeviceIDStrategyUUID: indexes shift when a GPU drops off the bus.
const (
	// DeviceIDStrategyUUID names devices by UUID.
	DeviceIDStrategyUUID DeviceIDStrategy = "uuid"
	// DeviceIDStrategyIndex names devices by index. Not implemented by gpulet.
	DeviceIDStrategyIndex DeviceIDStrategy = "index"
)

// Defaults of NVIDIA's flags that gpulet honours.
const (
	// DefaultNvidiaDriverRoot is where the driver is installed on the host.
	DefaultNvidiaDriverRoot = "/"
	// DefaultNvidiaCTKPath is the nvidia-ctk binary named in CDI hooks.
	DefaultNvidiaCTKPath = "/usr/bin/nvidia-ctk"
	// DefaultContainerDriverRoot is where the driver root is mounted inside
	// gpulet's container.
	DefaultContainerDriverRoot = "/driver-root"
	// DefaultCDIAnnotationPrefix is NVIDIA's default annotation prefix.
	DefaultCDIAnnotationPrefix = "cdi.k8s.io/"
)

// Flags are NVIDIA's plugin and GPU feature discovery settings. A nil field
// was not set; [Config.SetDefaults] fills the ones gpulet honours.
type Flags struct {
	// MigStrategy is none (default), single or mixed.
	MigStrategy *MigStrategy `json:"migStrategy,omitempty"`
	// FailOnInitError is NVIDIA's choice between exiting and waiting when
	// NVML cannot be initialised. gpulet reads it but always waits: it
	// retries with backoff, logging why, advertises nothing meanwhile and
	// reports not ready, so a node whose driver is still loading comes up
	// by itself and a crash loop hides nothing. Default true.
	FailOnInitError *bool `json:"failOnInitError,omitempty"`
	// MpsRoot is the host directory for MPS. Not implemented by gpulet.
	MpsRoot *string `json:"mpsRoot,omitempty"`
	// NvidiaDriverRoot is the driver's root on the host ("/" or, with a
	// driver container, "/run/nvidia/driver"). Default "/".
	NvidiaDriverRoot *string `json:"nvidiaDriverRoot,omitempty"`
	// NvidiaDevRoot is the root of the device nodes on the host. Default:
	// NvidiaDriverRoot.
	NvidiaDevRoot *string `json:"nvidiaDevRoot,omitempty"`
	// GDRCopyEnabled asks for GDRCopy in containers. Not implemented by gpulet.
	GDRCopyEnabled *bool `json:"gdrcopyEnabled,omitempty"`
	// GDSEnabled asks for GPUDirect Storage in containers. Not implemented by
	// gpulet.
	GDSEnabled *bool `json:"gdsEnabled,omitempty"`
	// MOFEDEnabled asks for MOFED in containers. Not implemented by gpulet.
	MOFEDEnabled *bool `json:"mofedEnabled,omitempty"`
	// UseNodeFeatureAPI is a GPU feature discovery setting. Not implemented
	// by gpulet.
	UseNodeFeatureAPI *bool `json:"useNodeFeatureAPI,omitempty"`
	// DeviceDiscoveryStrategy is auto, nvml or tegra. gpulet always uses NVML.
	DeviceDiscoveryStrategy *string `json:"deviceDiscoveryStrategy,omitempty"`
	// Plugin holds settings of the device plugin proper.
	Plugin *PluginFlags `json:"plugin,omitempty"`
	// GFD holds GPU feature discovery settings. Not implemented by gpulet.
	GFD *GFDFlags `json:"gfd,omitempty"`
}

// PluginFlags are NVIDIA's device plugin settings.
type PluginFlags struct {
	// PassDeviceSpecs passes device nodes in the Allocate response, for the
	// CPU manager. Not implemented by gpulet, whose CDI devices carry them.
	PassDeviceSpecs *bool `json:"passDeviceSpecs,omitempty"`
	// DeviceListStrategy is NVIDIA's choice of how to pass devices, one
	// strategy or a list. gpulet uses gpulet.deviceListStrategy instead and
	// warns when this one differs.
	DeviceListStrategy DeviceListStrategies `json:"deviceListStrategy,omitempty"`
	// DeviceIDStrategy is uuid (default) or index (not implemented).
	DeviceIDStrategy *DeviceIDStrategy `json:"deviceIDStrategy,omitempty"`
	// CDIAnnotationPrefix is for the cdi-annotations strategy. Not
	// implemented by gpulet.
	CDIAnnotationPrefix *string `json:"cdiAnnotationPrefix,omitempty"`
	// NvidiaCTKPath is the nvidia-ctk (CDI hook) binary named in generated
	// CDI specs. Default /usr/bin/nvidia-ctk.
	NvidiaCTKPath *string `json:"nvidiaCTKPath,omitempty"`
	// ContainerDriverRoot is where the driver root is mounted in gpulet's
	// container. Default /driver-root.
	ContainerDriverRoot *string `json:"containerDriverRoot,omitempty"`
	// SharedDevicesAllocationPolicy is distributed or packed. Not implemented
	// by gpulet, whose preferred allocation is topology-aware.
	SharedDevicesAllocationPolicy *string `json:"sharedDevicesAllocationPolicy,omitempty"`
}

// GFDFlags are NVIDIA's GPU feature discovery settings. gpulet does not run
// feature discovery; they are kept so that a shared file reads unchanged.
type GFDFlags struct {
	// Oneshot labels once and exits.
	Oneshot *bool `json:"oneshot,omitempty"`
	// NoTimestamp leaves the timestamp label out.
	NoTimestamp *bool `json:"noTimestamp,omitempty"`
	// SleepInterval is the labelling period, kept as written ("60s",
	// "infinite" or nanoseconds).
	SleepInterval json.RawMessage `json:"sleepInterval,omitempty"`
	// OutputFile is where labels are written.
	OutputFile *string `json:"outputFile,omitempty"`
	// MachineTypeFile is read for the machine type label.
	MachineTypeFile *string `json:"machineTypeFile,omitempty"`
}

// DeviceListStrategies is NVIDIA's deviceListStrategy: written as one
// strategy or a list of them. Nil means not set.
type DeviceListStrategies []DeviceListStrategy

// MarshalJSON writes a single strategy as a string, several as a list.
func (s DeviceListStrategies) MarshalJSON() ([]byte, error) {
	if len(s) == 1 {
		return json.Marshal(string(s[0]))
	}
	return json.Marshal([]DeviceListStrategy(s))
}

// UnmarshalJSON reads one strategy or a list of strategies.
func (s *DeviceListStrategies) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if string(b) == "null" {
		return nil
	}
	var one DeviceListStrategy
	if err := json.Unmarshal(b, &one); err == nil {
		*s = DeviceListStrategies{one}
		return nil
	}
	var many []DeviceListStrategy
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("must be a strategy or a list of strategies, got %s", truncate(string(b)))
	}
	*s = many
	return nil
}

// setDefaults fills the flags gpulet honours.
func (f *Flags) setDefaults() {
	if f.MigStrategy == nil || *f.MigStrategy == "" {
		f.MigStrategy = ptr(MigStrategyNone)
	}
	if f.FailOnInitError == nil {
		f.FailOnInitError = ptr(true)
	}
	if f.NvidiaDriverRoot == nil || *f.NvidiaDriverRoot == "" {
		f.NvidiaDriverRoot = ptr(DefaultNvidiaDriverRoot)
	}
	if f.NvidiaDevRoot == nil || *f.NvidiaDevRoot == "" {
		f.NvidiaDevRoot = ptr(*f.NvidiaDriverRoot)
	}
	if f.Plugin == nil {
		f.Plugin = &PluginFlags{}
	}
	p := f.Plugin
	if p.DeviceIDStrategy == nil {
		p.DeviceIDStrategy = ptr(DeviceIDStrategyUUID)
	}
	if p.NvidiaCTKPath == nil || *p.NvidiaCTKPath == "" {
		p.NvidiaCTKPath = ptr(DefaultNvidiaCTKPath)
	}
	if p.ContainerDriverRoot == nil || *p.ContainerDriverRoot == "" {
		p.ContainerDriverRoot = ptr(DefaultContainerDriverRoot)
	}
}

// validate checks the flags; paths are relative to "flags".
func (f *Flags) validate() error {
	var errs []error
	if f.MigStrategy != nil {
		errs = append(errs, oneOf("flags.migStrategy", *f.MigStrategy, MigStrategyNone, MigStrategySingle, MigStrategyMixed))
	}
	errs = append(errs,
		absPath("flags.nvidiaDriverRoot", f.NvidiaDriverRoot),
		absPath("flags.nvidiaDevRoot", f.NvidiaDevRoot),
		absPath("flags.mpsRoot", f.MpsRoot),
	)
	if f.DeviceDiscoveryStrategy != nil {
		errs = append(errs, oneOf("flags.deviceDiscoveryStrategy", *f.DeviceDiscoveryStrategy, "auto", "nvml", "tegra"))
	}
	if p := f.Plugin; p != nil {
		if p.DeviceListStrategy != nil && len(p.DeviceListStrategy) == 0 {
			errs = append(errs, errors.New("flags.plugin.deviceListStrategy: must name at least one strategy"))
		}
		for i, s := range p.DeviceListStrategy {
			errs = append(errs, oneOf(fmt.Sprintf("flags.plugin.deviceListStrategy[%d]", i), s,
				DeviceListStrategyEnvVar, DeviceListStrategyVolumeMounts, DeviceListStrategyCDIAnnotations, DeviceListStrategyCDICRI))
		}
		if p.DeviceIDStrategy != nil {
			errs = append(errs, oneOf("flags.plugin.deviceIDStrategy", *p.DeviceIDStrategy, DeviceIDStrategyUUID, DeviceIDStrategyIndex))
		}
		if p.SharedDevicesAllocationPolicy != nil {
			errs = append(errs, oneOf("flags.plugin.sharedDevicesAllocationPolicy", *p.SharedDevicesAllocationPolicy, "distributed", "packed"))
		}
		errs = append(errs,
			absPath("flags.plugin.nvidiaCTKPath", p.NvidiaCTKPath),
			absPath("flags.plugin.containerDriverRoot", p.ContainerDriverRoot),
		)
	}
	return errors.Join(errs...)
}

// warnings lists the flags that ask for something gpulet does not do.
// effective is the device list strategy gpulet will use.
func (f *Flags) warnings(effective DeviceListStrategy) []string {
	var w []string
	notImplemented := func(path, what string) {
		w = append(w, fmt.Sprintf("%s: %s is not implemented by gpulet, ignored", path, what))
	}
	if f.MpsRoot != nil && *f.MpsRoot != "" {
		notImplemented("flags.mpsRoot", "MPS")
	}
	if isTrue(f.GDRCopyEnabled) {
		notImplemented("flags.gdrcopyEnabled", "GDRCopy")
	}
	if isTrue(f.GDSEnabled) {
		notImplemented("flags.gdsEnabled", "GPUDirect Storage")
	}
	if isTrue(f.MOFEDEnabled) {
		notImplemented("flags.mofedEnabled", "MOFED")
	}
	if isTrue(f.UseNodeFeatureAPI) {
		notImplemented("flags.useNodeFeatureAPI", "GPU feature discovery")
	}
	if f.DeviceDiscoveryStrategy != nil && *f.DeviceDiscoveryStrategy == "tegra" {
		w = append(w, `flags.deviceDiscoveryStrategy: "tegra" is not implemented by gpulet, ignored: gpulet discovers devices through NVML`)
	}
	if f.GFD != nil {
		notImplemented("flags.gfd", "GPU feature discovery")
	}
	p := f.Plugin
	if p == nil {
		return w
	}
	if isTrue(p.PassDeviceSpecs) {
		notImplemented("flags.plugin.passDeviceSpecs", "passing device specs")
	}
	for _, s := range p.DeviceListStrategy {
		if s == effective {
			continue
		}
		w = append(w, fmt.Sprintf("flags.plugin.deviceListStrategy: %q is ignored: gpulet passes devices by gpulet.deviceListStrategy, %q", s, effective))
	}
	if p.DeviceIDStrategy != nil && *p.DeviceIDStrategy == DeviceIDStrategyIndex {
		w = append(w, `flags.plugin.deviceIDStrategy: "index" is not implemented by gpulet, ignored: devices are named by UUID`)
	}
	if p.CDIAnnotationPrefix != nil && *p.CDIAnnotationPrefix != DefaultCDIAnnotationPrefix {
		notImplemented("flags.plugin.cdiAnnotationPrefix", "the cdi-annotations strategy")
	}
	if p.SharedDevicesAllocationPolicy != nil {
		w = append(w, "flags.plugin.sharedDevicesAllocationPolicy: not implemented by gpulet, ignored: gpulet's preferred allocation is topology-aware")
	}
	return w
}

// oneOf checks that v is one of allowed, in the wording of Kubernetes'
// field validation.
func oneOf[T ~string](path string, v T, allowed ...T) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	quoted := make([]string, len(allowed))
	for i, a := range allowed {
		quoted[i] = fmt.Sprintf("%q", string(a))
	}
	return fmt.Errorf("%s: unsupported value %q: supported values: %s", path, truncate(string(v)), strings.Join(quoted, ", "))
}

// absPath checks that a set path is absolute and clean of NUL bytes. Empty
// means unset.
func absPath(path string, v *string) error {
	if v == nil || *v == "" {
		return nil
	}
	if !filepath.IsAbs(*v) || strings.ContainsRune(*v, 0) {
		return fmt.Errorf("%s: must be an absolute path, got %q", path, truncate(*v))
	}
	return nil
}

// ptr returns a pointer to v.
func ptr[T any](v T) *T {
	return &v
}

// isTrue reports whether b is set and true.
func isTrue(b *bool) bool {
	return b != nil && *b
}
