package nvml

import (
	"encoding/binary"
	"errors"
	"math"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Telemetry reads a GPU or MIG device's current values. lastSample is the
// LastSample of the previous reading (0 the first time): utilization is
// then averaged over NVML's samples taken since, not read at one instant.
// Values the device does not report are left nil; a lost GPU returns an
// error wrapping ErrGPULost.
func (a *Adapter) Telemetry(uuid string, lastSample uint64) (Telemetry, error) {
	t := Telemetry{Time: time.Now(), LastSample: lastSample}
	h, err := a.handle(uuid)
	if err != nil {
		return t, err
	}
	mem, ret := h.GetMemoryInfo()
	if ret == gonvml.ERROR_GPU_IS_LOST {
		return t, check(ret, "get memory info", uuid)
	}
	if ret == gonvml.SUCCESS {
		t.MemoryUsedBytes, t.MemoryTotalBytes = &mem.Used, &mem.Total
	}

	t.GPUUtilization, t.LastSample = utilization(h, gonvml.GPU_UTILIZATION_SAMPLES, lastSample)
	t.MemoryUtilization, _ = utilization(h, gonvml.MEMORY_UTILIZATION_SAMPLES, lastSample)
	if t.GPUUtilization == nil || t.MemoryUtilization == nil {
		if u, ret := h.GetUtilizationRates(); ret == gonvml.SUCCESS {
			if t.GPUUtilization == nil {
				t.GPUUtilization = ptr(float64(u.Gpu) / 100)
			}
			if t.MemoryUtilization == nil {
				t.MemoryUtilization = ptr(float64(u.Memory) / 100)
			}
		}
	}
	if mw, ret := h.GetPowerUsage(); ret == gonvml.SUCCESS {
		t.PowerWatts = ptr(float64(mw) / 1000)
	}
	if mw, ret := h.GetEnforcedPowerLimit(); ret == gonvml.SUCCESS {
		t.PowerLimitWatts = ptr(float64(mw) / 1000)
	}
	if mj, ret := h.GetTotalEnergyConsumption(); ret == gonvml.SUCCESS {
		t.EnergyJoules = ptr(float64(mj) / 1000)
	}
	if c, ret := h.GetTemperature(gonvml.TEMPERATURE_GPU); ret == gonvml.SUCCESS {
		t.TemperatureCelsius = ptr(float64(c))
	}
	if mhz, ret := h.GetClockInfo(gonvml.CLOCK_SM); ret == gonvml.SUCCESS {
		t.SMClockHz = ptr(float64(mhz) * 1e6)
	}
	if n, ret := h.GetTotalEccErrors(gonvml.MEMORY_ERROR_TYPE_CORRECTED, gonvml.VOLATILE_ECC); ret == gonvml.SUCCESS {
		t.ECCCorrected = &n
	}
	if n, ret := h.GetTotalEccErrors(gonvml.MEMORY_ERROR_TYPE_UNCORRECTED, gonvml.VOLATILE_ECC); ret == gonvml.SUCCESS {
		t.ECCUncorrected = &n
	}
	return t, nil
}

// utilization averages NVML's samples newer than last, as a ratio. It
// returns nil when NVML has no samples for the device (MIG devices, or
// nothing new since last), along with the newest timestamp seen.
func utilization(h gonvml.Device, kind gonvml.SamplingType, last uint64) (*float64, uint64) {
	vt, samples, ret := h.GetSamples(kind, last)
	if ret != gonvml.SUCCESS || len(samples) == 0 {
		return nil, last
	}
	var sum float64
	var n int
	newest := last
	for _, s := range samples {
		if s.TimeStamp <= last {
			continue
		}
		v, ok := sampleValue(vt, s.SampleValue)
		if !ok {
			return nil, last
		}
		sum += v
		n++
		newest = max(newest, s.TimeStamp)
	}
	if n == 0 {
		return nil, last
	}
	return ptr(sum / float64(n) / 100), newest
}

// sampleValue decodes NVML's value union (little-endian on every
// platform go-nvml supports).
func sampleValue(vt gonvml.ValueType, b [8]byte) (float64, bool) {
	switch vt {
	case gonvml.VALUE_TYPE_DOUBLE:
		return math.Float64frombits(binary.LittleEndian.Uint64(b[:])), true
	case gonvml.VALUE_TYPE_UNSIGNED_INT:
		return float64(binary.LittleEndian.Uint32(b[:4])), true
	case gonvml.VALUE_TYPE_UNSIGNED_LONG, gonvml.VALUE_TYPE_UNSIGNED_LONG_LONG:
		return float64(binary.LittleEndian.Uint64(b[:])), true
	case gonvml.VALUE_TYPE_SIGNED_LONG_LONG:
		return float64(int64(binary.LittleEndian.Uint64(b[:]))), true
	case gonvml.VALUE_TYPE_SIGNED_INT:
		return float64(int32(binary.LittleEndian.Uint32(b[:4]))), true
	case gonvml.VALUE_TYPE_UNSIGNED_SHORT:
		return float64(binary.LittleEndian.Uint16(b[:2])), true
	}
	return 0, false
}

// Processes lists the compute and graphics processes on a GPU or MIG
// device, once each.
func (a *Adapter) Processes(uuid string) ([]Process, error) {
	h, err := a.handle(uuid)
	if err != nil {
		return nil, err
	}
	var out []Process
	seen := make(map[uint32]bool)
	for _, get := range []func() ([]gonvml.ProcessInfo, gonvml.Return){h.GetComputeRunningProcesses, h.GetGraphicsRunningProcesses} {
		procs, ret := get()
		if ret == gonvml.ERROR_NOT_SUPPORTED {
			continue
		}
		if ret != gonvml.SUCCESS {
			return nil, check(ret, "get running processes", uuid)
		}
		for _, p := range procs {
			if seen[p.Pid] {
				continue
			}
			seen[p.Pid] = true
			out = append(out, Process{PID: p.Pid, UsedMemoryBytes: p.UsedGpuMemory, GIID: p.GpuInstanceId, CIID: p.ComputeInstanceId})
		}
	}
	return out, nil
}

// Probe reads what decides a GPU's health: whether it answers at all, and
// the memory conditions that need a reset. It looks the GPU up by UUID
// afresh, so a GPU that came back after being lost is seen again.
func (a *Adapter) Probe(uuid string) (Probe, error) {
	var p Probe
	h, err := a.handle(uuid)
	if errors.Is(err, ErrGPULost) || errors.Is(err, ErrNotFound) {
		p.Lost = true
		return p, nil
	}
	if err != nil {
		return p, err
	}
	if _, ret := h.GetMemoryInfo(); ret == gonvml.ERROR_GPU_IS_LOST {
		p.Lost = true
		return p, nil
	}
	if n, ret := h.GetTotalEccErrors(gonvml.MEMORY_ERROR_TYPE_UNCORRECTED, gonvml.VOLATILE_ECC); ret == gonvml.SUCCESS {
		p.ECCUncorrectedVolatile = &n
	}
	if s, ret := h.GetRetiredPagesPendingStatus(); ret == gonvml.SUCCESS {
		p.RetiredPagesPending = ptr(s == gonvml.FEATURE_ENABLED)
	}
	if _, _, pending, failed, ret := h.GetRemappedRows(); ret == gonvml.SUCCESS {
		p.RowRemapPending, p.RowRemapFailed = &pending, &failed
	}
	return p, nil
}

func ptr[T any](v T) *T { return &v }
