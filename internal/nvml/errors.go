package nvml

import (
	"errors"
	"fmt"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Sentinel errors that callers match with errors.Is. Every error the adapter
// returns for a failed NVML call wraps one of these where the return code
// has a meaning callers act on, and always wraps an *Error.
var (
	// ErrLibraryNotFound means libnvidia-ml.so.1 could not be loaded.
	ErrLibraryNotFound = errors.New("NVML library not found")
	// ErrDriverNotLoaded means the library loaded but the kernel driver is absent.
	ErrDriverNotLoaded = errors.New("NVIDIA driver not loaded")
	// ErrGPULost means the GPU fell off the bus (NVML_ERROR_GPU_IS_LOST).
	ErrGPULost = errors.New("GPU is lost")
	// ErrNotSupported means the device does not support the query.
	ErrNotSupported = errors.New("not supported")
	// ErrNotFound means the named object does not exist.
	ErrNotFound = errors.New("not found")
	// ErrTimeout means a wait ended without an event.
	ErrTimeout = errors.New("timeout")
	// ErrInsufficientResources means a MIG placement overlaps or exceeds capacity.
	ErrInsufficientResources = errors.New("insufficient resources")
	// ErrInUse means the object is busy (e.g. a GPU instance still holds compute instances).
	ErrInUse = errors.New("in use")
)

// Error is a failed NVML call: the operation, the device it was made on (if
// any) and NVML's return code.
type Error struct {
	Op     string
	Device string
	Ret    gonvml.Return
}

func (e *Error) Error() string {
	if e.Device != "" {
		return fmt.Sprintf("nvml %s on %s: %s", e.Op, e.Device, gonvml.ErrorString(e.Ret))
	}
	return fmt.Sprintf("nvml %s: %s", e.Op, gonvml.ErrorString(e.Ret))
}

// Is maps NVML return codes onto the package's sentinel errors.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrLibraryNotFound:
		return e.Ret == gonvml.ERROR_LIBRARY_NOT_FOUND
	case ErrDriverNotLoaded:
		return e.Ret == gonvml.ERROR_DRIVER_NOT_LOADED
	case ErrGPULost:
		return e.Ret == gonvml.ERROR_GPU_IS_LOST
	case ErrNotSupported:
		return e.Ret == gonvml.ERROR_NOT_SUPPORTED || e.Ret == gonvml.ERROR_FUNCTION_NOT_FOUND
	case ErrNotFound:
		return e.Ret == gonvml.ERROR_NOT_FOUND
	case ErrTimeout:
		return e.Ret == gonvml.ERROR_TIMEOUT
	case ErrInsufficientResources:
		return e.Ret == gonvml.ERROR_INSUFFICIENT_RESOURCES
	case ErrInUse:
		return e.Ret == gonvml.ERROR_IN_USE
	}
	return false
}

// check turns an NVML return code into nil or an *Error.
func check(ret gonvml.Return, op, device string) error {
	if ret == gonvml.SUCCESS {
		return nil
	}
	return &Error{Op: op, Device: device, Ret: ret}
}
