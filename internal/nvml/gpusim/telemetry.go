package gpusim

import (
	"encoding/binary"
	"math"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// The readings below come from the device's settings in the state at the
// simulator's clock. Callers hold sim.mu.

func valueOr(v *Value, def float64) Value {
	if v == nil {
		return Value{Constant: def}
	}
	return *v
}

func (d *device) gpuUtil() Value {
	if d.cfg.Utilization == nil {
		return Value{}
	}
	return valueOr(d.cfg.Utilization.GPU, 0)
}

func (d *device) memUtil() Value {
	if d.cfg.Utilization == nil {
		return Value{}
	}
	return valueOr(d.cfg.Utilization.Memory, 0)
}

func (d *device) power() Value       { return valueOr(d.cfg.PowerW, d.sim.m.idlePowerW) }
func (d *device) temperature() Value { return valueOr(d.cfg.TemperatureC, d.sim.m.idleTempC) }
func (d *device) smClock() Value     { return valueOr(d.cfg.SMClockMHz, d.sim.m.maxSMClockMHz) }

func (d *device) powerLimitW() float64 {
	if d.cfg.PowerLimitW != nil {
		return *d.cfg.PowerLimitW
	}
	return d.sim.m.powerLimitW
}

// clampRound rounds v into [lo, hi].
func clampRound(v, lo, hi float64) uint64 {
	return uint64(math.Round(math.Max(lo, math.Min(hi, v))))
}

// memoryUsedMiB is the memory processes (or the state) use, not counting
// what the driver reserves.
func (d *device) memoryUsedMiB(t time.Time) uint64 {
	limit := float64(d.sim.m.memoryMiB() - d.sim.m.reservedMiB)
	if d.cfg.MemoryUsedMiB != nil {
		return clampRound(d.cfg.MemoryUsedMiB.At(t), 0, limit)
	}
	var sum uint64
	for _, p := range d.cfg.Processes {
		sum += p.UsedMemoryMiB
	}
	return clampRound(float64(sum), 0, limit)
}

// GetUtilizationRates returns GPU and memory busy percentages. With MIG on
// NVML cannot attribute them and returns ERROR_NOT_SUPPORTED; so does this.
func (d *device) GetUtilizationRates() (nvml.Utilization, nvml.Return) {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return nvml.Utilization{}, r
	}
	if d.migEnabled {
		return nvml.Utilization{}, nvml.ERROR_NOT_SUPPORTED
	}
	now := d.sim.clock()
	return nvml.Utilization{
		Gpu:    uint32(clampRound(d.gpuUtil().At(now), 0, 100)),
		Memory: uint32(clampRound(d.memUtil().At(now), 0, 100)),
	}, nvml.SUCCESS
}

// samplePeriodMicros is the spacing of GetSamples' samples: one per 1/6 s,
// in microseconds, as NVML keeps them for utilization.
const samplePeriodMicros = 166667

// sampleBuffer is how many samples NVML keeps (20 s worth).
const sampleBuffer = 120

// GetSamples returns the samples of one kind taken after lastSeen (a
// timestamp in microseconds since the epoch, 0 for all buffered), oldest
// first, as unsigned ints: percent for utilization, mW for power, MHz for
// clocks. Samples are computed from the current settings, so a pattern
// changed by Apply also rewrites the buffered past. ERROR_NOT_FOUND when
// there is nothing newer than lastSeen.
func (d *device) GetSamples(kind nvml.SamplingType, lastSeen uint64) (nvml.ValueType, []nvml.Sample, nvml.Return) {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return 0, nil, r
	}
	var at func(time.Time) float64
	switch kind {
	case nvml.GPU_UTILIZATION_SAMPLES, nvml.MEMORY_UTILIZATION_SAMPLES:
		if d.migEnabled {
			return 0, nil, nvml.ERROR_NOT_SUPPORTED
		}
		v := d.gpuUtil()
		if kind == nvml.MEMORY_UTILIZATION_SAMPLES {
			v = d.memUtil()
		}
		at = func(t time.Time) float64 { return math.Max(0, math.Min(100, v.At(t))) }
	case nvml.TOTAL_POWER_SAMPLES:
		v := d.power()
		at = func(t time.Time) float64 { return 1000 * v.At(t) }
	case nvml.PROCESSOR_CLK_SAMPLES:
		v := d.smClock()
		at = v.At
	case nvml.MEMORY_CLK_SAMPLES:
		at = func(time.Time) float64 { return d.sim.m.maxMemClockMHz }
	case nvml.ENC_UTILIZATION_SAMPLES, nvml.DEC_UTILIZATION_SAMPLES,
		nvml.JPG_UTILIZATION_SAMPLES, nvml.OFA_UTILIZATION_SAMPLES:
		at = func(time.Time) float64 { return 0 }
	case nvml.MODULE_POWER_SAMPLES:
		return 0, nil, nvml.ERROR_NOT_SUPPORTED
	default:
		return 0, nil, nvml.ERROR_INVALID_ARGUMENT
	}
	newest := uint64(d.sim.clock().UnixMicro()) / samplePeriodMicros
	first := lastSeen/samplePeriodMicros + 1
	if newest >= sampleBuffer {
		first = max(first, newest-sampleBuffer+1)
	}
	if first > newest {
		return nvml.VALUE_TYPE_UNSIGNED_INT, nil, nvml.ERROR_NOT_FOUND
	}
	samples := make([]nvml.Sample, 0, newest-first+1)
	for k := first; k <= newest; k++ {
		ts := k * samplePeriodMicros
		s := nvml.Sample{TimeStamp: ts}
		v := at(time.UnixMicro(int64(ts)))
		binary.LittleEndian.PutUint32(s.SampleValue[:4], uint32(clampRound(v, 0, math.MaxUint32)))
		samples = append(samples, s)
	}
	return nvml.VALUE_TYPE_UNSIGNED_INT, samples, nvml.SUCCESS
}

// GetMemoryInfo returns framebuffer memory; Used includes what the driver
// reserves, as NVML's v1 call does.
func (d *device) GetMemoryInfo() (nvml.Memory, nvml.Return) {
	return answer(d, func() nvml.Memory {
		m := d.sim.m
		used := (m.reservedMiB + d.memoryUsedMiB(d.sim.clock())) << 20
		return nvml.Memory{Total: m.memoryBytes(), Used: used, Free: m.memoryBytes() - used}
	})
}

// GetMemoryInfo_v2 returns framebuffer memory with the driver's reserve
// apart from Used.
func (d *device) GetMemoryInfo_v2() (nvml.Memory_v2, nvml.Return) {
	return answer(d, func() nvml.Memory_v2 {
		m := d.sim.m
		reserved := m.reservedMiB << 20
		used := d.memoryUsedMiB(d.sim.clock()) << 20
		return nvml.Memory_v2{
			Version:  nvml.STRUCT_VERSION(nvml.Memory_v2{}, 2),
			Total:    m.memoryBytes(),
			Reserved: reserved,
			Used:     used,
			Free:     m.memoryBytes() - reserved - used,
		}
	})
}

// GetPowerUsage returns the power draw in milliwatts.
func (d *device) GetPowerUsage() (uint32, nvml.Return) {
	return answer(d, func() uint32 {
		return uint32(clampRound(1000*d.power().At(d.sim.clock()), 0, math.MaxUint32))
	})
}

// GetEnforcedPowerLimit returns the power limit in milliwatts.
func (d *device) GetEnforcedPowerLimit() (uint32, nvml.Return) {
	return answer(d, func() uint32 { return uint32(1000 * d.powerLimitW()) })
}

// GetPowerManagementLimit returns the power limit in milliwatts.
func (d *device) GetPowerManagementLimit() (uint32, nvml.Return) {
	return answer(d, func() uint32 { return uint32(1000 * d.powerLimitW()) })
}

// GetPowerManagementDefaultLimit returns the board's default limit in mW.
func (d *device) GetPowerManagementDefaultLimit() (uint32, nvml.Return) {
	return answer(d, func() uint32 { return uint32(1000 * d.sim.m.powerLimitW) })
}

// GetPowerManagementLimitConstraints returns the settable limit range in mW.
func (d *device) GetPowerManagementLimitConstraints() (uint32, uint32, nvml.Return) {
	lim, r := answer(d, func() [2]uint32 {
		return [2]uint32{uint32(250 * d.sim.m.powerLimitW), uint32(1000 * d.sim.m.powerLimitW)}
	})
	return lim[0], lim[1], r
}

// GetPowerManagementMode reports power management on.
func (d *device) GetPowerManagementMode() (nvml.EnableState, nvml.Return) {
	return answer(d, func() nvml.EnableState { return nvml.FEATURE_ENABLED })
}

// accumulateEnergy folds the energy used up to now under the current power
// setting into the total. Callers hold sim.mu; Apply calls it before a new
// power setting takes over.
func (d *device) accumulateEnergy(now time.Time) {
	if d.energyAt.IsZero() {
		d.energyAt = now
		return
	}
	if now.After(d.energyAt) {
		d.energyMJ += 1000 * d.power().Integral(d.energyAt, now)
		d.energyAt = now
	}
}

// GetTotalEnergyConsumption returns the energy used since the simulator
// started in millijoules: the power setting integrated over time, never
// decreasing.
func (d *device) GetTotalEnergyConsumption() (uint64, nvml.Return) {
	return answer(d, func() uint64 {
		e := d.energyMJ
		if now := d.sim.clock(); now.After(d.energyAt) {
			e += 1000 * d.power().Integral(d.energyAt, now)
		}
		d.energyLast = max(d.energyLast, uint64(e))
		return d.energyLast
	})
}

// GetTemperature returns the GPU temperature in degrees Celsius.
func (d *device) GetTemperature(sensor nvml.TemperatureSensors) (uint32, nvml.Return) {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return 0, r
	}
	if sensor != nvml.TEMPERATURE_GPU {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return uint32(clampRound(d.temperature().At(d.sim.clock()), 0, 200)), nvml.SUCCESS
}

// GetTemperatureThreshold returns the slowdown, shutdown and maximum
// operating temperatures.
func (d *device) GetTemperatureThreshold(t nvml.TemperatureThresholds) (uint32, nvml.Return) {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return 0, r
	}
	switch t {
	case nvml.TEMPERATURE_THRESHOLD_SHUTDOWN:
		return 92, nvml.SUCCESS
	case nvml.TEMPERATURE_THRESHOLD_SLOWDOWN:
		return 89, nvml.SUCCESS
	case nvml.TEMPERATURE_THRESHOLD_MEM_MAX:
		return 95, nvml.SUCCESS
	case nvml.TEMPERATURE_THRESHOLD_GPU_MAX:
		return 87, nvml.SUCCESS
	}
	return 0, nvml.ERROR_NOT_SUPPORTED
}

// GetClockInfo returns the current clock of a domain in MHz.
func (d *device) GetClockInfo(c nvml.ClockType) (uint32, nvml.Return) {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return 0, r
	}
	m := d.sim.m
	switch c {
	case nvml.CLOCK_GRAPHICS, nvml.CLOCK_SM:
		return uint32(clampRound(d.smClock().At(d.sim.clock()), 0, m.maxSMClockMHz)), nvml.SUCCESS
	case nvml.CLOCK_MEM:
		return uint32(m.maxMemClockMHz), nvml.SUCCESS
	case nvml.CLOCK_VIDEO:
		return uint32(m.videoClockMHz), nvml.SUCCESS
	}
	return 0, nvml.ERROR_INVALID_ARGUMENT
}

// GetMaxClockInfo returns the maximum clock of a domain in MHz.
func (d *device) GetMaxClockInfo(c nvml.ClockType) (uint32, nvml.Return) {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return 0, r
	}
	m := d.sim.m
	switch c {
	case nvml.CLOCK_GRAPHICS, nvml.CLOCK_SM:
		return uint32(m.maxSMClockMHz), nvml.SUCCESS
	case nvml.CLOCK_MEM:
		return uint32(m.maxMemClockMHz), nvml.SUCCESS
	case nvml.CLOCK_VIDEO:
		return uint32(m.videoClockMHz), nvml.SUCCESS
	}
	return 0, nvml.ERROR_INVALID_ARGUMENT
}
