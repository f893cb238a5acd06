package gpusim

import (
	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// eccCount returns a volatile or aggregate ECC count. Aggregate counts
// equal volatile ones: the simulated GPUs have no history before the
// simulator started.
func (d *device) eccCount(t nvml.MemoryErrorType, c nvml.EccCounterType) (uint64, nvml.Return) {
	if c != nvml.VOLATILE_ECC && c != nvml.AGGREGATE_ECC {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	ecc := d.cfg.eccCounts()
	switch t {
	case nvml.MEMORY_ERROR_TYPE_CORRECTED:
		return ecc.Corrected, nvml.SUCCESS
	case nvml.MEMORY_ERROR_TYPE_UNCORRECTED:
		return ecc.Uncorrected, nvml.SUCCESS
	}
	return 0, nvml.ERROR_INVALID_ARGUMENT
}

// GetTotalEccErrors returns the ECC error count of a kind.
func (d *device) GetTotalEccErrors(t nvml.MemoryErrorType, c nvml.EccCounterType) (uint64, nvml.Return) {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return 0, r
	}
	return d.eccCount(t, c)
}

// GetMemoryErrorCounter returns ECC errors by location. All errors are in
// device memory (DRAM); SRAM counts are zero; the per-unit locations of
// pre-Ampere GPUs (L1, L2, register file, texture) are not supported on
// these GPUs.
func (d *device) GetMemoryErrorCounter(t nvml.MemoryErrorType, c nvml.EccCounterType, loc nvml.MemoryLocation) (uint64, nvml.Return) {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return 0, r
	}
	n, r := d.eccCount(t, c)
	if r != nvml.SUCCESS {
		return 0, r
	}
	switch loc {
	case nvml.MEMORY_LOCATION_DRAM:
		return n, nvml.SUCCESS
	case nvml.MEMORY_LOCATION_SRAM:
		return 0, nvml.SUCCESS
	case nvml.MEMORY_LOCATION_L1_CACHE, nvml.MEMORY_LOCATION_L2_CACHE, nvml.MEMORY_LOCATION_REGISTER_FILE,
		nvml.MEMORY_LOCATION_TEXTURE_MEMORY, nvml.MEMORY_LOCATION_TEXTURE_SHM, nvml.MEMORY_LOCATION_CBU:
		return 0, nvml.ERROR_NOT_SUPPORTED
	}
	return 0, nvml.ERROR_INVALID_ARGUMENT
}

// GetRemappedRows returns the row-remapping counts and whether a remap is
// pending (a GPU reset will apply it) or has failed.
func (d *device) GetRemappedRows() (int, int, bool, bool, nvml.Return) {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return 0, 0, false, false, r
	}
	rr := d.cfg.RemappedRows
	if rr == nil {
		return 0, 0, false, false, nvml.SUCCESS
	}
	return rr.Corrected, rr.Uncorrected, rr.Pending, rr.Failed, nvml.SUCCESS
}

// retiredPages returns the addresses and retirement times of the pages
// retired for a cause, or ERROR_NOT_SUPPORTED: GPUs since A100 remap rows
// instead of retiring pages, unless the state asks for page retirement.
// Callers hold sim.mu.
func (d *device) retiredPages(cause nvml.PageRetirementCause) ([]uint64, []uint64, nvml.Return) {
	if r := d.ready(); r != nvml.SUCCESS {
		return nil, nil, r
	}
	rp := d.cfg.RetiredPages
	if rp == nil {
		return nil, nil, nvml.ERROR_NOT_SUPPORTED
	}
	n := 0
	switch cause {
	case nvml.PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS:
		n = rp.SingleBit
	case nvml.PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR:
		n = rp.DoubleBit
	default:
		return nil, nil, nvml.ERROR_INVALID_ARGUMENT
	}
	addrs, times := make([]uint64, n), make([]uint64, n)
	start := uint64(d.sim.clock().Unix())
	for i := range n {
		addrs[i] = uint64(d.index+1)<<32 | uint64(cause)<<24 | uint64(i)<<12
		times[i] = start
	}
	return addrs, times, nvml.SUCCESS
}

// GetRetiredPages lists retired page addresses (see retiredPages).
func (d *device) GetRetiredPages(cause nvml.PageRetirementCause) ([]uint64, nvml.Return) {
	defer d.sim.lock()()
	addrs, _, r := d.retiredPages(cause)
	return addrs, r
}

// GetRetiredPages_v2 lists retired page addresses and retirement times.
func (d *device) GetRetiredPages_v2(cause nvml.PageRetirementCause) ([]uint64, []uint64, nvml.Return) {
	defer d.sim.lock()()
	return d.retiredPages(cause)
}

// GetRetiredPagesPendingStatus reports pages waiting for retirement.
func (d *device) GetRetiredPagesPendingStatus() (nvml.EnableState, nvml.Return) {
	defer d.sim.lock()()
	if _, _, r := d.retiredPages(nvml.PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR); r != nvml.SUCCESS {
		return nvml.FEATURE_DISABLED, r
	}
	if d.cfg.RetiredPages.Pending {
		return nvml.FEATURE_ENABLED, nvml.SUCCESS
	}
	return nvml.FEATURE_DISABLED, nvml.SUCCESS
}

// GetSupportedEventTypes returns the event types the GPU can deliver.
func (d *device) GetSupportedEventTypes() (uint64, nvml.Return) {
	return answer(d, func() uint64 { return supportedEvents })
}

// RegisterEvents adds event types of this GPU to an event set. As in
// NVML: types outside EventTypeAll are ERROR_INVALID_ARGUMENT; if any
// requested type is unsupported nothing is registered and the result is
// ERROR_NOT_SUPPORTED; events that happened before registering are not
// delivered.
func (d *device) RegisterEvents(types uint64, set nvml.EventSet) nvml.Return {
	defer d.sim.lock()()
	if r := d.ready(); r != nvml.SUCCESS {
		return r
	}
	es, ok := set.(*eventSet)
	if !ok || es.sim != d.sim || es.freed {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	if types&^uint64(nvml.EventTypeAll) != 0 {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	if types&^supportedEvents != 0 {
		return nvml.ERROR_NOT_SUPPORTED
	}
	es.registered[d.index] |= types
	return nvml.SUCCESS
}

// processInfos lists the GPU's processes of one type, optionally only
// those of one MIG device. Callers hold sim.mu.
func (d *device) processInfos(kind string, mig *computeInstance) []nvml.ProcessInfo {
	out := []nvml.ProcessInfo{}
	for _, p := range d.cfg.Processes {
		t := p.Type
		if t == "" {
			t = ProcessCompute
		}
		if t != kind {
			continue
		}
		gi, ci := ptrOr(p.GPUInstance, noInstance), ptrOr(p.ComputeInstance, noInstance)
		if mig != nil && (gi != uint32(mig.gi.id) || ci != uint32(mig.id)) {
			continue
		}
		out = append(out, nvml.ProcessInfo{
			Pid:               p.PID,
			UsedGpuMemory:     p.UsedMemoryMiB << 20,
			GpuInstanceId:     gi,
			ComputeInstanceId: ci,
		})
	}
	return out
}

// GetComputeRunningProcesses lists compute processes; with MIG on, each
// carries its GPU- and compute-instance ids.
func (d *device) GetComputeRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	return answer(d, func() []nvml.ProcessInfo { return d.processInfos(ProcessCompute, nil) })
}

// GetGraphicsRunningProcesses lists graphics processes.
func (d *device) GetGraphicsRunningProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	return answer(d, func() []nvml.ProcessInfo { return d.processInfos(ProcessGraphics, nil) })
}
