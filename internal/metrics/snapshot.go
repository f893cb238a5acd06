package metrics

import (
	"time"

	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/nvml"
)

// Snapshot is what the sampler read at one moment. It is immutable once
// published: collectors read it at scrape time without locks, and any
// number of scrapers read the same one.
type Snapshot struct {
	// Time is when the sampler took it.
	Time time.Time
	// DriverVersion is the node's driver version.
	DriverVersion string
	// Devices are the GPUs in index order, each followed by its MIG devices.
	Devices []DeviceSample
	// Allocations say who holds which device, sorted.
	Allocations []Allocation
	// PodMemory is device memory used by each pod's processes, sorted.
	PodMemory []PodMemory
	// Idle is how long each device allocated to a pod has stayed idle.
	Idle []IdleSample
}

// DeviceSample is one GPU or MIG device and what was read from it.
type DeviceSample struct {
	// Name is the stable device name (inventory's).
	Name string
	UUID string
	// Model is the product name (the parent's for a MIG device).
	Model string
	// Parent and ParentUUID name a MIG device's GPU; empty for a GPU.
	Parent     string
	ParentUUID string
	// Profile is a MIG device's profile ("1g.10gb"); empty for a GPU.
	Profile string
	// MIGEnabled is true for a GPU in MIG mode (its MIG devices carry the
	// processes and memory).
	MIGEnabled bool
	// OK is false when the device did not answer this time (lost, or no
	// answer within the read timeout): only its identity is known.
	OK        bool
	Telemetry nvml.Telemetry
	// ProcessesOK is true when Processes was read.
	ProcessesOK bool
	Processes   []nvml.Process
}

// Allocation is one holder of a device, as the ledger and the kubelet
// report it.
type Allocation struct {
	Device string
	UUID   string
	API    ledger.API
	// Namespace is the pod's (or, before the kubelet reports a pod, the
	// claim's).
	Namespace string
	Pod       string
	Container string
	// Claim is the DRA claim's name; empty for the device plugin.
	Claim string
}

// PodMemory is the device memory the processes of one container use on
// one device.
type PodMemory struct {
	Device string
	UUID   string
	// Namespace, Pod and Container are empty when the pod could not be
	// named; PodUID always comes from the process's cgroup.
	Namespace string
	Pod       string
	PodUID    string
	Container string
	Bytes     uint64
}

// IdleSample is how long a device allocated to a pod has stayed idle.
type IdleSample struct {
	Device    string
	UUID      string
	Namespace string
	Pod       string
	Seconds   float64
}
