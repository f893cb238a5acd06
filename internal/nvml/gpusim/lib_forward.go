package gpusim

import "github.com/NVIDIA/go-nvml/pkg/nvml"

// The library-level forms of the device calls gpulet makes most (each is
// the device's method, as in go-nvml). Written out so that these calls do
// not go through go-nvml's mock, which records every call it sees; the
// rest are forwarded by fillForwarders.

// DeviceGetUUID is d.GetUUID.
func (l *library) DeviceGetUUID(d nvml.Device) (string, nvml.Return) {
	if d == nil {
		return "", nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetUUID()
}

// DeviceGetName is d.GetName.
func (l *library) DeviceGetName(d nvml.Device) (string, nvml.Return) {
	if d == nil {
		return "", nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetName()
}

// DeviceGetIndex is d.GetIndex.
func (l *library) DeviceGetIndex(d nvml.Device) (int, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetIndex()
}

// DeviceGetMinorNumber is d.GetMinorNumber.
func (l *library) DeviceGetMinorNumber(d nvml.Device) (int, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetMinorNumber()
}

// DeviceGetSerial is d.GetSerial.
func (l *library) DeviceGetSerial(d nvml.Device) (string, nvml.Return) {
	if d == nil {
		return "", nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetSerial()
}

// DeviceGetPciInfo is d.GetPciInfo.
func (l *library) DeviceGetPciInfo(d nvml.Device) (nvml.PciInfo, nvml.Return) {
	if d == nil {
		return nvml.PciInfo{}, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetPciInfo()
}

// DeviceGetMemoryInfo is d.GetMemoryInfo.
func (l *library) DeviceGetMemoryInfo(d nvml.Device) (nvml.Memory, nvml.Return) {
	if d == nil {
		return nvml.Memory{}, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetMemoryInfo()
}

// DeviceGetMemoryInfo_v2 is d.GetMemoryInfo_v2.
func (l *library) DeviceGetMemoryInfo_v2(d nvml.Device) (nvml.Memory_v2, nvml.Return) {
	if d == nil {
		return nvml.Memory_v2{}, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetMemoryInfo_v2()
}

// DeviceGetUtilizationRates is d.GetUtilizationRates.
func (l *library) DeviceGetUtilizationRates(d nvml.Device) (nvml.Utilization, nvml.Return) {
	if d == nil {
		return nvml.Utilization{}, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetUtilizationRates()
}

// DeviceGetPowerUsage is d.GetPowerUsage.
func (l *library) DeviceGetPowerUsage(d nvml.Device) (uint32, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetPowerUsage()
}

// DeviceGetEnforcedPowerLimit is d.GetEnforcedPowerLimit.
func (l *library) DeviceGetEnforcedPowerLimit(d nvml.Device) (uint32, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetEnforcedPowerLimit()
}

// DeviceGetPowerManagementLimit is d.GetPowerManagementLimit.
func (l *library) DeviceGetPowerManagementLimit(d nvml.Device) (uint32, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetPowerManagementLimit()
}

// DeviceGetTotalEnergyConsumption is d.GetTotalEnergyConsumption.
func (l *library) DeviceGetTotalEnergyConsumption(d nvml.Device) (uint64, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetTotalEnergyConsumption()
}

// DeviceGetTemperature is d.GetTemperature.
func (l *library) DeviceGetTemperature(d nvml.Device, s nvml.TemperatureSensors) (uint32, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetTemperature(s)
}

// DeviceGetClockInfo is d.GetClockInfo.
func (l *library) DeviceGetClockInfo(d nvml.Device, c nvml.ClockType) (uint32, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetClockInfo(c)
}

// DeviceGetMaxClockInfo is d.GetMaxClockInfo.
func (l *library) DeviceGetMaxClockInfo(d nvml.Device, c nvml.ClockType) (uint32, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetMaxClockInfo(c)
}

// DeviceGetTotalEccErrors is d.GetTotalEccErrors.
func (l *library) DeviceGetTotalEccErrors(d nvml.Device, t nvml.MemoryErrorType, c nvml.EccCounterType) (uint64, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetTotalEccErrors(t, c)
}

// DeviceGetComputeRunningProcesses is d.GetComputeRunningProcesses.
func (l *library) DeviceGetComputeRunningProcesses(d nvml.Device) ([]nvml.ProcessInfo, nvml.Return) {
	if d == nil {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetComputeRunningProcesses()
}

// DeviceGetGraphicsRunningProcesses is d.GetGraphicsRunningProcesses.
func (l *library) DeviceGetGraphicsRunningProcesses(d nvml.Device) ([]nvml.ProcessInfo, nvml.Return) {
	if d == nil {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetGraphicsRunningProcesses()
}

// DeviceGetMaxMigDeviceCount is d.GetMaxMigDeviceCount.
func (l *library) DeviceGetMaxMigDeviceCount(d nvml.Device) (int, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetMaxMigDeviceCount()
}

// DeviceGetMigDeviceHandleByIndex is d.GetMigDeviceHandleByIndex.
func (l *library) DeviceGetMigDeviceHandleByIndex(d nvml.Device, i int) (nvml.Device, nvml.Return) {
	if d == nil {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetMigDeviceHandleByIndex(i)
}

// DeviceIsMigDeviceHandle is d.IsMigDeviceHandle.
func (l *library) DeviceIsMigDeviceHandle(d nvml.Device) (bool, nvml.Return) {
	if d == nil {
		return false, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.IsMigDeviceHandle()
}

// DeviceGetGpuInstanceId is d.GetGpuInstanceId.
func (l *library) DeviceGetGpuInstanceId(d nvml.Device) (int, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetGpuInstanceId()
}

// DeviceGetComputeInstanceId is d.GetComputeInstanceId.
func (l *library) DeviceGetComputeInstanceId(d nvml.Device) (int, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetComputeInstanceId()
}

// DeviceGetDeviceHandleFromMigDeviceHandle is d.GetDeviceHandleFromMigDeviceHandle.
func (l *library) DeviceGetDeviceHandleFromMigDeviceHandle(d nvml.Device) (nvml.Device, nvml.Return) {
	if d == nil {
		return nil, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetDeviceHandleFromMigDeviceHandle()
}

// DeviceGetAttributes is d.GetAttributes.
func (l *library) DeviceGetAttributes(d nvml.Device) (nvml.DeviceAttributes, nvml.Return) {
	if d == nil {
		return nvml.DeviceAttributes{}, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetAttributes()
}

// DeviceGetSupportedEventTypes is d.GetSupportedEventTypes.
func (l *library) DeviceGetSupportedEventTypes(d nvml.Device) (uint64, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetSupportedEventTypes()
}

// DeviceGetTopologyCommonAncestor is d.GetTopologyCommonAncestor.
func (l *library) DeviceGetTopologyCommonAncestor(d nvml.Device, o nvml.Device) (nvml.GpuTopologyLevel, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetTopologyCommonAncestor(o)
}

// DeviceGetNvLinkState is d.GetNvLinkState.
func (l *library) DeviceGetNvLinkState(d nvml.Device, link int) (nvml.EnableState, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetNvLinkState(link)
}

// DeviceGetNvLinkRemotePciInfo is d.GetNvLinkRemotePciInfo.
func (l *library) DeviceGetNvLinkRemotePciInfo(d nvml.Device, link int) (nvml.PciInfo, nvml.Return) {
	if d == nil {
		return nvml.PciInfo{}, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetNvLinkRemotePciInfo(link)
}

// DeviceGetMigMode is d.GetMigMode.
func (l *library) DeviceGetMigMode(d nvml.Device) (int, int, nvml.Return) {
	if d == nil {
		return 0, 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetMigMode()
}

// DeviceGetRemappedRows is d.GetRemappedRows.
func (l *library) DeviceGetRemappedRows(d nvml.Device) (int, int, bool, bool, nvml.Return) {
	if d == nil {
		return 0, 0, false, false, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetRemappedRows()
}

// DeviceGetSamples is d.GetSamples.
func (l *library) DeviceGetSamples(d nvml.Device, kind nvml.SamplingType, last uint64) (nvml.ValueType, []nvml.Sample, nvml.Return) {
	if d == nil {
		return 0, nil, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetSamples(kind, last)
}

// DeviceGetMemoryErrorCounter is d.GetMemoryErrorCounter.
func (l *library) DeviceGetMemoryErrorCounter(d nvml.Device, t nvml.MemoryErrorType, c nvml.EccCounterType, loc nvml.MemoryLocation) (uint64, nvml.Return) {
	if d == nil {
		return 0, nvml.ERROR_INVALID_ARGUMENT
	}
	return d.GetMemoryErrorCounter(t, c, loc)
}

// DeviceRegisterEvents is d.RegisterEvents.
func (l *library) DeviceRegisterEvents(d nvml.Device, types uint64, set nvml.EventSet) nvml.Return {
	if d == nil {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	return d.RegisterEvents(types, set)
}
