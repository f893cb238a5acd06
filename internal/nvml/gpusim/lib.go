package gpusim

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// library is the simulated NVML library (nvml.Interface). Library-level
// functions that take a handle (DeviceGetUUID(d), EventSetWait(s, t), ...)
// call the handle's method, as go-nvml does; the common ones are written
// out below, the rest are forwarded by reflection (see fillForwarders).
type library struct {
	mock.Interface
	sim *Simulator
}

var _ nvml.Interface = (*library)(nil)

func newLibrary(s *Simulator) *library {
	l := &library{sim: s}
	fillForwarders(&l.Interface)
	fillStubs(&l.Interface, func() nvml.Return {
		defer s.lock()()
		if s.initCount == 0 {
			return nvml.ERROR_UNINITIALIZED
		}
		return nvml.ERROR_NOT_SUPPORTED
	})
	return l
}

// Init initialises the library; calls are reference-counted like NVML's.
func (l *library) Init() nvml.Return {
	defer l.sim.lock()()
	l.sim.initCount++
	return nvml.SUCCESS
}

// InitWithFlags is Init; the flags change nothing here.
func (l *library) InitWithFlags(uint32) nvml.Return { return l.Init() }

// Shutdown undoes one Init. After the last one every call returns
// ERROR_UNINITIALIZED; a Shutdown too many returns it too.
func (l *library) Shutdown() nvml.Return {
	defer l.sim.lock()()
	if l.sim.initCount == 0 {
		return nvml.ERROR_UNINITIALIZED
	}
	l.sim.initCount--
	return nvml.SUCCESS
}

// ErrorString names a return code.
func (l *library) ErrorString(r nvml.Return) string { return r.Error() }

// Extensions reports which NVML symbols exist.
func (l *library) Extensions() nvml.ExtendedInterface { return extensions{} }

// extensions answers go-nvlib's symbol checks. Every symbol is present
// except the versioned queries whose go-nvml wrappers return handler
// structs that call into the C library directly and so cannot be
// simulated; callers that check first fall back to the plain calls.
type extensions struct{}

var unsimulatedSymbols = map[string]bool{
	"nvmlDeviceGetGpuFabricInfoV":                   true,
	"nvmlDeviceGetGpuInstanceProfileInfoV":          true,
	"nvmlDeviceGetGpuInstanceProfileInfoByIdV":      true,
	"nvmlGpuInstanceGetComputeInstanceProfileInfoV": true,
	"nvmlDeviceGetTemperatureV":                     true,
	"nvmlDeviceGetNvLinkInfo":                       true,
	"nvmlDeviceGetC2cModeInfoV":                     true,
}

func (extensions) LookupSymbol(symbol string) error {
	if unsimulatedSymbols[symbol] {
		return fmt.Errorf("%s: not available in the GPU simulator", symbol)
	}
	return nil
}

// initialised runs f under the lock once NVML is initialised.
func initialised[T any](l *library, f func() T) (T, nvml.Return) {
	defer l.sim.lock()()
	if l.sim.initCount == 0 {
		var zero T
		return zero, nvml.ERROR_UNINITIALIZED
	}
	return f(), nvml.SUCCESS
}

// SystemGetDriverVersion returns the driver version.
func (l *library) SystemGetDriverVersion() (string, nvml.Return) {
	return initialised(l, l.sim.driverVersionLocked)
}

// SystemGetNVMLVersion returns the NVML version: CUDA major and driver
// version, e.g. 12.550.54.15.
func (l *library) SystemGetNVMLVersion() (string, nvml.Return) {
	return initialised(l, func() string {
		return fmt.Sprintf("%d.%s", l.sim.m.cudaDriver/1000, l.sim.driverVersionLocked())
	})
}

// SystemGetCudaDriverVersion returns the CUDA driver version, e.g. 12040.
func (l *library) SystemGetCudaDriverVersion() (int, nvml.Return) {
	return initialised(l, func() int { return l.sim.m.cudaDriver })
}

// SystemGetCudaDriverVersion_v2 returns the CUDA driver version.
func (l *library) SystemGetCudaDriverVersion_v2() (int, nvml.Return) {
	return l.SystemGetCudaDriverVersion()
}

// SystemGetProcessName returns the name of a process the state lists.
func (l *library) SystemGetProcessName(pid int) (string, nvml.Return) {
	name, r := initialised(l, func() string {
		for _, d := range l.sim.devices {
			for _, p := range d.cfg.Processes {
				if int(p.PID) == pid {
					return processName(p)
				}
			}
		}
		return ""
	})
	if r == nvml.SUCCESS && name == "" {
		return "", nvml.ERROR_NOT_FOUND
	}
	return name, r
}

func processName(p Process) string {
	if p.Name == "" {
		return "python3"
	}
	return p.Name
}

// DeviceGetCount returns the number of GPUs, lost ones included.
func (l *library) DeviceGetCount() (int, nvml.Return) {
	return initialised(l, func() int { return len(l.sim.devices) })
}

// handleResult returns a handle as NVML would: ERROR_GPU_IS_LOST for a GPU
// off the bus (the handle is still returned, so a careless caller gets a
// handle whose every call fails rather than a nil one).
func handleResult(d *device) (nvml.Device, nvml.Return) {
	if d.cfg.Lost {
		return d, nvml.ERROR_GPU_IS_LOST
	}
	return d, nvml.SUCCESS
}

// DeviceGetHandleByIndex returns the GPU at an index.
func (l *library) DeviceGetHandleByIndex(i int) (nvml.Device, nvml.Return) {
	defer l.sim.lock()()
	if l.sim.initCount == 0 {
		return nil, nvml.ERROR_UNINITIALIZED
	}
	if i < 0 || i >= len(l.sim.devices) {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	return handleResult(l.sim.devices[i])
}

// DeviceGetHandleByUUID finds a GPU or, as NVML does, a MIG device.
func (l *library) DeviceGetHandleByUUID(uuid string) (nvml.Device, nvml.Return) {
	defer l.sim.lock()()
	if l.sim.initCount == 0 {
		return nil, nvml.ERROR_UNINITIALIZED
	}
	for _, d := range l.sim.devices {
		if d.uuid == uuid {
			return handleResult(d)
		}
		for _, ci := range d.migDevicesLocked() {
			if ci.handle.uuid == uuid {
				if d.cfg.Lost {
					return ci.handle, nvml.ERROR_GPU_IS_LOST
				}
				return ci.handle, nvml.SUCCESS
			}
		}
	}
	if !strings.HasPrefix(uuid, "GPU-") && !strings.HasPrefix(uuid, "MIG-") {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	return nil, nvml.ERROR_NOT_FOUND
}

// DeviceGetHandleByPciBusId finds a GPU by PCI address, in any of the
// forms NVML accepts: 00000000:18:00.0, 0000:18:00.0 or 18:00.0, any case.
func (l *library) DeviceGetHandleByPciBusId(busID string) (nvml.Device, nvml.Return) {
	defer l.sim.lock()()
	if l.sim.initCount == 0 {
		return nil, nvml.ERROR_UNINITIALIZED
	}
	domain, bus, dev, ok := parseBusID(busID)
	if !ok {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	for _, d := range l.sim.devices {
		if d.pci.Domain == domain && d.pci.Bus == bus && d.pci.Device == dev {
			return handleResult(d)
		}
	}
	return nil, nvml.ERROR_NOT_FOUND
}

func parseBusID(s string) (domain, bus, dev uint32, ok bool) {
	parts := strings.Split(strings.ToLower(strings.TrimSpace(s)), ":")
	if len(parts) == 2 {
		parts = append([]string{"0"}, parts...)
	}
	if len(parts) != 3 {
		return 0, 0, 0, false
	}
	devFn := strings.SplitN(parts[2], ".", 2)
	vals := make([]uint64, 3)
	for i, p := range []string{parts[0], parts[1], devFn[0]} {
		v, err := strconv.ParseUint(p, 16, 32)
		if err != nil {
			return 0, 0, 0, false
		}
		vals[i] = v
	}
	return uint32(vals[0]), uint32(vals[1]), uint32(vals[2]), true
}

// EventSetCreate creates an event set.
func (l *library) EventSetCreate() (nvml.EventSet, nvml.Return) {
	defer l.sim.lock()()
	if l.sim.initCount == 0 {
		return nil, nvml.ERROR_UNINITIALIZED
	}
	return l.sim.newEventSetLocked(), nvml.SUCCESS
}

// EventSetWait is set.Wait.
func (l *library) EventSetWait(set nvml.EventSet, timeoutMs uint32) (nvml.EventData, nvml.Return) {
	if set == nil {
		return nvml.EventData{}, nvml.ERROR_INVALID_ARGUMENT
	}
	return set.Wait(timeoutMs)
}

// EventSetFree is set.Free.
func (l *library) EventSetFree(set nvml.EventSet) nvml.Return {
	if set == nil {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	return set.Free()
}
