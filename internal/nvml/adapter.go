// Package nvml is gpulet's only door to NVIDIA's management library. It
// turns go-nvml's handles and return codes into the plain structs of this
// package (Device, MigDevice, Telemetry, Event, ...), so no other package
// imports go-nvml. The real library and the simulator (package gpusim) are
// both just an nvml.Interface handed to the same Adapter, so tests exercise
// the code that runs on real GPUs.
package nvml

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	nvdevice "github.com/NVIDIA/go-nvlib/pkg/nvlib/device"
	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Adapter reads and drives the GPUs of one node through an nvml.Interface.
// It is safe for concurrent use.
type Adapter struct {
	lib    gonvml.Interface
	devlib nvdevice.Interface

	// mu serialises MIG changes, which NVML does not make atomic across
	// the GPU-instance and compute-instance steps.
	mu sync.Mutex
}

// New returns an Adapter over lib. Call Init before anything else.
func New(lib gonvml.Interface) *Adapter {
	return &Adapter{lib: lib, devlib: nvdevice.New(lib)}
}

// Init initialises NVML. A missing library or driver is reported as an
// error wrapping ErrLibraryNotFound or ErrDriverNotLoaded.
func (a *Adapter) Init() error {
	ret := a.lib.Init()
	switch ret {
	case gonvml.SUCCESS:
		return nil
	case gonvml.ERROR_LIBRARY_NOT_FOUND:
		return fmt.Errorf("cannot load libnvidia-ml.so.1 (is the NVIDIA driver installed on this node?): %w", &Error{Op: "init", Ret: ret})
	case gonvml.ERROR_DRIVER_NOT_LOADED:
		return fmt.Errorf("libnvidia-ml.so.1 loaded but the NVIDIA kernel driver is not running: %w", &Error{Op: "init", Ret: ret})
	}
	return check(ret, "init", "")
}

// Shutdown releases NVML.
func (a *Adapter) Shutdown() error {
	return check(a.lib.Shutdown(), "shutdown", "")
}

// System reads the driver stack's versions.
func (a *Adapter) System() (System, error) {
	var s System
	var ret gonvml.Return
	if s.DriverVersion, ret = a.lib.SystemGetDriverVersion(); ret != gonvml.SUCCESS {
		return s, check(ret, "get driver version", "")
	}
	if v, ret := a.lib.SystemGetCudaDriverVersion(); ret == gonvml.SUCCESS {
		s.CUDADriverVersion = fmt.Sprintf("%d.%d", v/1000, v%1000/10)
	}
	if v, ret := a.lib.SystemGetNVMLVersion(); ret == gonvml.SUCCESS {
		s.NVMLVersion = v
	}
	return s, nil
}

// Devices discovers every GPU of the node with its MIG state and links.
// A GPU that cannot be read is left out and its error joined into the
// returned error, so one bad GPU does not hide the others.
func (a *Adapter) Devices() ([]Device, error) {
	count, ret := a.lib.DeviceGetCount()
	if ret != gonvml.SUCCESS {
		return nil, check(ret, "get device count", "")
	}
	var (
		devices []Device
		handles []gonvml.Device
		errs    []error
	)
	for i := 0; i < count; i++ {
		h, ret := a.lib.DeviceGetHandleByIndex(i)
		if ret != gonvml.SUCCESS {
			errs = append(errs, check(ret, "get handle", fmt.Sprintf("GPU %d", i)))
			continue
		}
		d, err := a.readDevice(h)
		if err != nil {
			errs = append(errs, fmt.Errorf("GPU %d: %w", i, err))
			continue
		}
		devices = append(devices, d)
		handles = append(handles, h)
	}
	a.readLinks(devices, handles)
	return devices, errors.Join(errs...)
}

// readDevice reads one whole GPU. Identity fields are required; the rest
// are left unset where the device does not support them.
func (a *Adapter) readDevice(h gonvml.Device) (Device, error) {
	var d Device
	var ret gonvml.Return
	if d.UUID, ret = h.GetUUID(); ret != gonvml.SUCCESS {
		return d, check(ret, "get uuid", "")
	}
	if d.Index, ret = h.GetIndex(); ret != gonvml.SUCCESS {
		return d, check(ret, "get index", d.UUID)
	}
	if d.Minor, ret = h.GetMinorNumber(); ret != gonvml.SUCCESS {
		return d, check(ret, "get minor number", d.UUID)
	}
	if d.Name, ret = h.GetName(); ret != gonvml.SUCCESS {
		return d, check(ret, "get name", d.UUID)
	}
	pci, ret := h.GetPciInfo()
	if ret != gonvml.SUCCESS {
		return d, check(ret, "get pci info", d.UUID)
	}
	d.PCIBusID = busID(pci)
	d.PCIDeviceID = pci.PciDeviceId
	mem, ret := h.GetMemoryInfo()
	if ret != gonvml.SUCCESS {
		return d, check(ret, "get memory info", d.UUID)
	}
	d.MemoryBytes = mem.Total

	if b, ret := h.GetBrand(); ret == gonvml.SUCCESS {
		d.Brand = brandName(b)
	}
	if arch, ret := h.GetArchitecture(); ret == gonvml.SUCCESS {
		d.Architecture = archName(arch)
	}
	if major, minor, ret := h.GetCudaComputeCapability(); ret == gonvml.SUCCESS {
		d.CUDAComputeCapability = fmt.Sprintf("%d.%d", major, minor)
	}
	if s, ret := h.GetSerial(); ret == gonvml.SUCCESS {
		d.Serial = s
	}
	if n, ret := h.GetNumaNodeId(); ret == gonvml.SUCCESS {
		d.NUMANode = &n
	}
	if attrs, ret := h.GetAttributes(); ret == gonvml.SUCCESS {
		d.Multiprocessors = int(attrs.MultiprocessorCount)
	}
	mig, err := a.readMIG(h, d)
	if err != nil {
		return d, err
	}
	d.MIG = mig
	return d, nil
}

// handle finds a GPU or MIG device by UUID. NVML resolves MIG UUIDs too.
func (a *Adapter) handle(uuid string) (gonvml.Device, error) {
	h, ret := a.lib.DeviceGetHandleByUUID(uuid)
	if ret != gonvml.SUCCESS {
		if ret == gonvml.ERROR_INVALID_ARGUMENT {
			ret = gonvml.ERROR_NOT_FOUND
		}
		return nil, check(ret, "get handle", uuid)
	}
	return h, nil
}

// busID renders NVML's NUL-terminated bus id in the canonical sysfs form
// "0000:18:00.0" (NVML reports an 8-digit domain).
func busID(p gonvml.PciInfo) string {
	var b strings.Builder
	for _, c := range p.BusId {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	id := strings.ToLower(b.String())
	if id == "" {
		return fmt.Sprintf("%04x:%02x:%02x.0", p.Domain, p.Bus, p.Device)
	}
	if i := strings.IndexByte(id, ':'); i > 4 {
		id = id[i-4:]
	}
	return id
}

func brandName(b gonvml.BrandType) string {
	switch b {
	case gonvml.BRAND_TESLA:
		return "Tesla"
	case gonvml.BRAND_QUADRO:
		return "Quadro"
	case gonvml.BRAND_GEFORCE:
		return "GeForce"
	case gonvml.BRAND_NVIDIA:
		return "Nvidia"
	case gonvml.BRAND_NVIDIA_RTX:
		return "NvidiaRTX"
	case gonvml.BRAND_TITAN:
		return "Titan"
	}
	return fmt.Sprintf("Brand%d", int(b))
}

func archName(a gonvml.DeviceArchitecture) string {
	switch a {
	case gonvml.DEVICE_ARCH_KEPLER:
		return "Kepler"
	case gonvml.DEVICE_ARCH_MAXWELL:
		return "Maxwell"
	case gonvml.DEVICE_ARCH_PASCAL:
		return "Pascal"
	case gonvml.DEVICE_ARCH_VOLTA:
		return "Volta"
	case gonvml.DEVICE_ARCH_TURING:
		return "Turing"
	case gonvml.DEVICE_ARCH_AMPERE:
		return "Ampere"
	case gonvml.DEVICE_ARCH_ADA:
		return "Ada Lovelace"
	case gonvml.DEVICE_ARCH_HOPPER:
		return "Hopper"
	case gonvml.DEVICE_ARCH_BLACKWELL:
		return "Blackwell"
	}
	return fmt.Sprintf("Arch%d", int(a))
}
