package nvml

import "time"

// System describes the node's driver stack.
type System struct {
	// DriverVersion is the kernel driver version, e.g. "550.54.15".
	DriverVersion string `json:"driverVersion"`
	// CUDADriverVersion is the highest CUDA version the driver supports, e.g. "12.4".
	CUDADriverVersion string `json:"cudaDriverVersion"`
	// NVMLVersion is the NVML library version, e.g. "12.550.54.15".
	NVMLVersion string `json:"nvmlVersion"`
}

// Device is one physical GPU as NVML reports it.
type Device struct {
	Index        int    `json:"index"`
	Minor        int    `json:"minor"`
	UUID         string `json:"uuid"`
	Name         string `json:"name"`
	Brand        string `json:"brand"`
	Architecture string `json:"architecture"`
	// CUDAComputeCapability is "<major>.<minor>", e.g. "9.0".
	CUDAComputeCapability string `json:"cudaComputeCapability"`
	Serial                string `json:"serial,omitempty"`
	// PCIBusID is the canonical bus id, e.g. "0000:18:00.0".
	PCIBusID    string `json:"pciBusID"`
	PCIDeviceID uint32 `json:"pciDeviceID"`
	// NUMANode is nil when NVML cannot report it.
	NUMANode        *int   `json:"numaNode,omitempty"`
	MemoryBytes     uint64 `json:"memoryBytes"`
	Multiprocessors int    `json:"multiprocessors,omitempty"`
	// MIG describes the device's MIG capability and layout; nil when the
	// device is not MIG capable.
	MIG *MIG `json:"mig,omitempty"`
	// Links are this device's connections to the other GPUs of the node.
	Links []Link `json:"links,omitempty"`
}

// MIG is a GPU's MIG state.
type MIG struct {
	// Enabled is the current MIG mode.
	Enabled bool `json:"enabled"`
	// PendingEnabled is the mode after the next GPU reset.
	PendingEnabled bool `json:"pendingEnabled"`
	// MemorySlices is the number of memory slices the GPU divides into
	// (the span GPU-instance placements are expressed in).
	MemorySlices int `json:"memorySlices"`
	// ComputeSlices is the number of compute (GPC) slices.
	ComputeSlices int `json:"computeSlices"`
	// Profiles are the GPU-instance profiles the GPU supports, with the
	// default (full) compute instance of each.
	Profiles []MigProfile `json:"profiles,omitempty"`
	// Devices are the MIG devices that exist now.
	Devices []MigDevice `json:"devices,omitempty"`
}

// MigProfile is one GPU-instance profile, named as NVIDIA names it
// ("1g.10gb", "1g.10gb+me", "7g.80gb").
type MigProfile struct {
	Name            string      `json:"name"`
	GIProfileID     int         `json:"giProfileID"`
	CIProfileID     int         `json:"ciProfileID"`
	ComputeSlices   int         `json:"computeSlices"`
	MemoryBytes     uint64      `json:"memoryBytes"`
	Multiprocessors int         `json:"multiprocessors"`
	CopyEngines     int         `json:"copyEngines"`
	Decoders        int         `json:"decoders"`
	Encoders        int         `json:"encoders"`
	JPEGs           int         `json:"jpegs"`
	OFAs            int         `json:"ofas"`
	MaxInstances    int         `json:"maxInstances"`
	Placements      []Placement `json:"placements"`
}

// Placement is a span of memory slices a GPU instance occupies.
type Placement struct {
	Start int `json:"start"`
	Size  int `json:"size"`
}

// Overlaps reports whether two placements share a memory slice.
func (p Placement) Overlaps(o Placement) bool {
	return p.Start < o.Start+o.Size && o.Start < p.Start+p.Size
}

// MigDevice is a MIG device: a GPU instance with one compute instance,
// what CUDA sees as a device.
type MigDevice struct {
	UUID       string `json:"uuid"`
	ParentUUID string `json:"parentUUID"`
	// Index is the MIG device's index within its parent.
	Index           int       `json:"index"`
	Profile         string    `json:"profile"`
	GIProfileID     int       `json:"giProfileID"`
	CIProfileID     int       `json:"ciProfileID"`
	GIID            int       `json:"giID"`
	CIID            int       `json:"ciID"`
	Placement       Placement `json:"placement"`
	MemoryBytes     uint64    `json:"memoryBytes"`
	Multiprocessors int       `json:"multiprocessors"`
}

// LinkKind says how two GPUs are connected over PCIe, nearest first, in
// NVML's topology levels.
type LinkKind string

// PCIe topology levels between two GPUs, nearest first.
const (
	PCIeSameBoard   LinkKind = "board"  // on one board (NVML_TOPOLOGY_INTERNAL)
	PCIeSwitch      LinkKind = "switch" // behind one PCIe switch
	PCIeMultiSwitch LinkKind = "multi-switch"
	PCIeHostBridge  LinkKind = "host-bridge"
	PCIeNUMANode    LinkKind = "numa-node" // same CPU socket
	PCIeSystem      LinkKind = "system"    // across sockets
)

// Link is the connection from one GPU to a peer.
type Link struct {
	PeerUUID string `json:"peerUUID"`
	// NVLinks is the number of active NVLinks to the peer (directly, or
	// through NVSwitch).
	NVLinks int `json:"nvlinks"`
	// PCIe is the nearest common PCIe ancestor; empty when unknown.
	PCIe LinkKind `json:"pcie,omitempty"`
}

// Telemetry is one reading of a device. Pointer fields are nil when NVML
// could not report the value on this device.
type Telemetry struct {
	Time time.Time
	// GPUUtilization and MemoryUtilization are ratios in [0,1], averaged
	// over NVML's samples since the previous reading where NVML has them.
	GPUUtilization    *float64
	MemoryUtilization *float64
	MemoryUsedBytes   *uint64
	MemoryTotalBytes  *uint64
	PowerWatts        *float64
	PowerLimitWatts   *float64
	// EnergyJoules is the energy used since the driver loaded.
	EnergyJoules       *float64
	TemperatureCelsius *float64
	SMClockHz          *float64
	// ECC counters since the driver loaded (volatile).
	ECCCorrected   *uint64
	ECCUncorrected *uint64
	// LastSample is NVML's timestamp (µs) of the newest utilization
	// sample read; pass it back to average over the next interval.
	LastSample uint64
}

// Process is a process running on a device.
type Process struct {
	PID             uint32
	UsedMemoryBytes uint64
	// GIID and CIID locate the process on a MIG device; both are
	// 0xFFFFFFFF on a whole GPU.
	GIID uint32
	CIID uint32
}

// Probe is what health checks read from a device: whether it answers and
// the conditions that keep it from being usable.
type Probe struct {
	// Lost is true when the GPU no longer answers (fell off the bus).
	Lost bool
	// ECCUncorrectedVolatile is the volatile double-bit ECC count.
	ECCUncorrectedVolatile *uint64
	// RetiredPagesPending is true while retired pages await a reset.
	RetiredPagesPending *bool
	// RowRemapPending is true while remapped rows await a reset.
	RowRemapPending *bool
	// RowRemapFailed is true when row remapping failed: the GPU needs service.
	RowRemapFailed *bool
}

// EventKind classifies an NVML event.
type EventKind string

// Event kinds the adapter reports.
const (
	EventXID            EventKind = "xid"
	EventDoubleBitECC   EventKind = "ecc-double-bit"
	EventSingleBitECC   EventKind = "ecc-single-bit"
	EventGPUUnavailable EventKind = "gpu-unavailable"
	EventOther          EventKind = "other"
)

// Event is one NVML event.
type Event struct {
	Time time.Time
	// UUID is the GPU the event came from ("" if NVML did not say).
	UUID string
	Kind EventKind
	// XID is the XID code for EventXID.
	XID uint64
	// GIID and CIID name the MIG device the event concerns; both are
	// 0xFFFFFFFF when it concerns the whole GPU.
	GIID uint32
	CIID uint32
}
