package gpusim

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

func TestTelemetryFollowsClock(t *testing.T) {
	clock := newFakeClock()
	// Patterns are anchored at the epoch; the fake clock starts on a whole
	// minute, so a 60 s sine starts there at its midpoint.
	_, lib := startSim(t, mustParse(t, `
machine: dgx-h100
gpus: 1
devices:
- index: 0
  utilization: {gpu: {pattern: sine, min: 0, max: 100, period: 60s}, memory: {pattern: square, min: 10, max: 30, period: 20s}}
  powerW: {pattern: ramp, min: 100, max: 700, period: 60s}
  temperatureC: 65
  smClockMHz: {pattern: square, min: 1000, max: 1980, period: 10s}
  memoryUsedMiB: 2048
  powerLimitW: 650
`), WithClock(clock.Now))
	d := handle(t, lib, 0)
	type reading struct{ gpu, mem, powerMW, tempC, smMHz uint32 }
	read := func() reading {
		t.Helper()
		u, r1 := d.GetUtilizationRates()
		p, r2 := d.GetPowerUsage()
		c, r3 := d.GetTemperature(nvml.TEMPERATURE_GPU)
		sm, r4 := d.GetClockInfo(nvml.CLOCK_SM)
		for _, r := range []nvml.Return{r1, r2, r3, r4} {
			wantRet(t, "telemetry", r, nvml.SUCCESS)
		}
		return reading{u.Gpu, u.Memory, p, c, sm}
	}
	steps := []struct {
		after time.Duration
		want  reading
	}{
		{0, reading{gpu: 50, mem: 30, powerMW: 100_000, tempC: 65, smMHz: 1980}},
		{15 * time.Second, reading{gpu: 100, mem: 10, powerMW: 250_000, tempC: 65, smMHz: 1000}},
		{15 * time.Second, reading{gpu: 50, mem: 10, powerMW: 400_000, tempC: 65, smMHz: 1980}},
		{15 * time.Second, reading{gpu: 0, mem: 30, powerMW: 550_000, tempC: 65, smMHz: 1000}},
	}
	for i, s := range steps {
		clock.Add(s.after)
		if got := read(); got != s.want {
			t.Errorf("step %d: %+v, want %+v", i, got, s.want)
		}
	}
	if lim, _ := d.GetEnforcedPowerLimit(); lim != 650_000 {
		t.Errorf("power limit %d mW", lim)
	}
	if mhz, _ := d.GetMaxClockInfo(nvml.CLOCK_SM); mhz != 1980 {
		t.Errorf("max SM clock %d", mhz)
	}
	if mem, _ := d.GetMemoryInfo_v2(); mem.Used != 2048<<20 {
		t.Errorf("memory used %d", mem.Used)
	}
}

func TestSamples(t *testing.T) {
	clock := newFakeClock()
	sim, lib := startSim(t, mustParse(t, "machine: dgx-a100\ngpus: 1\ndevices: [{index: 0, utilization: {gpu: {pattern: ramp, min: 0, max: 60, period: 60s}}}]"), WithClock(clock.Now))
	d := handle(t, lib, 0)
	vt, samples, r := d.GetSamples(nvml.GPU_UTILIZATION_SAMPLES, 0)
	wantRet(t, "GetSamples", r, nvml.SUCCESS)
	if vt != nvml.VALUE_TYPE_UNSIGNED_INT || len(samples) != sampleBuffer {
		t.Fatalf("value type %v, %d samples; want unsigned int, %d", vt, len(samples), sampleBuffer)
	}
	now := uint64(clock.Now().UnixMicro())
	util := sim.State().Devices[0].Utilization.GPU
	for i, s := range samples {
		if i > 0 && s.TimeStamp-samples[i-1].TimeStamp != samplePeriodMicros {
			t.Fatalf("samples %d and %d are %d µs apart", i-1, i, s.TimeStamp-samples[i-1].TimeStamp)
		}
		want := uint32(clampRound(util.At(time.UnixMicro(int64(s.TimeStamp))), 0, 100))
		if got := binary.LittleEndian.Uint32(s.SampleValue[:4]); got != want {
			t.Fatalf("sample %d = %d, want %d", i, got, want)
		}
	}
	last := samples[len(samples)-1].TimeStamp
	if last > now || now-last >= samplePeriodMicros {
		t.Errorf("newest sample at %d, now %d", last, now)
	}
	if _, _, r := d.GetSamples(nvml.GPU_UTILIZATION_SAMPLES, last); r != nvml.ERROR_NOT_FOUND {
		t.Errorf("nothing new since the last sample: %v, want ERROR_NOT_FOUND", r)
	}
	clock.Add(time.Second)
	_, fresh, r := d.GetSamples(nvml.GPU_UTILIZATION_SAMPLES, last)
	wantRet(t, "GetSamples after 1s", r, nvml.SUCCESS)
	if len(fresh) < 5 || len(fresh) > 7 || fresh[0].TimeStamp <= last {
		t.Errorf("%d samples for one second after %d (first %d)", len(fresh), last, fresh[0].TimeStamp)
	}
	_, power, r := d.GetSamples(nvml.TOTAL_POWER_SAMPLES, 0)
	wantRet(t, "power samples", r, nvml.SUCCESS)
	if mw := binary.LittleEndian.Uint32(power[0].SampleValue[:4]); mw != 60_000 {
		t.Errorf("idle A100 power sample %d mW", mw)
	}
	if _, _, r := d.GetSamples(nvml.SamplingType(99), 0); r != nvml.ERROR_INVALID_ARGUMENT {
		t.Errorf("unknown sample type: %v", r)
	}
}

func TestEnergyMonotonic(t *testing.T) {
	clock := newFakeClock()
	sim, lib := startSim(t, mustParse(t, "machine: dgx-h100\ngpus: 1\ndevices: [{index: 0, powerW: 300}]"), WithClock(clock.Now))
	d := handle(t, lib, 0)
	energy := func() uint64 {
		t.Helper()
		e, r := d.GetTotalEnergyConsumption()
		wantRet(t, "GetTotalEnergyConsumption", r, nvml.SUCCESS)
		return e
	}
	if e := energy(); e != 0 {
		t.Fatalf("energy at start %d", e)
	}
	clock.Add(10 * time.Second)
	if e := energy(); e != 3_000_000 {
		t.Fatalf("300 W for 10 s = %d mJ, want 3000000", e)
	}
	// A new power setting takes over from now; what was used stays.
	st := sim.State()
	st.Devices[0].PowerW = &Value{Pattern: PatternSine, Min: 100, Max: 500, Period: Duration{time.Minute}}
	if err := sim.Apply(st); err != nil {
		t.Fatal(err)
	}
	prev := energy()
	for range 120 {
		clock.Add(time.Second)
		e := energy()
		if e < prev+100_000 || e > prev+500_000 {
			t.Fatalf("energy went %d -> %d in a second at 100..500 W", prev, e)
		}
		prev = e
	}
	// Over whole periods the sine averages 300 W: 3000000 + 120 s * 300 W.
	if want := uint64(3_000_000 + 36_000_000); prev < want-1000 || prev > want+1000 {
		t.Errorf("energy %d mJ, want about %d", prev, want)
	}
	clock.Add(-time.Hour) // a clock going back never makes energy go back
	if e := energy(); e != prev {
		t.Errorf("energy %d after the clock went back, was %d", e, prev)
	}
}
