package v1

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Sharing holds NVIDIA's GPU sharing settings. gpulet implements time-slicing;
// MPS is read and ignored with a warning.
type Sharing struct {
	// TimeSlicing advertises each listed resource as several replicas that
	// share the device through CUDA time-slicing. Nil means no time-slicing.
	TimeSlicing *ReplicatedResources `json:"timeSlicing,omitempty"`
	// MPS shares devices through CUDA MPS. Not implemented by gpulet.
	MPS *ReplicatedResources `json:"mps,omitempty"`
}

// ReplicatedResources lists the resources to advertise as replicas, with the
// naming and request rules that apply to all of them.
type ReplicatedResources struct {
	// RenameByDefault advertises each replicated resource as "<name>.shared"
	// unless the resource has its own rename.
	RenameByDefault bool `json:"renameByDefault,omitempty"`
	// FailRequestsGreaterThanOne makes the plugin refuse a container that
	// asks for more than one replica: two replicas of one GPU are not twice
	// the GPU. Nil means false, NVIDIA's default for time-slicing.
	FailRequestsGreaterThanOne *bool `json:"failRequestsGreaterThanOne,omitempty"`
	// Resources lists the resources to replicate.
	Resources []ReplicatedResource `json:"resources,omitempty"`
}

// ReplicatedResource says how many replicas to advertise for one resource.
type ReplicatedResource struct {
	// Name is the resource to replicate, for example nvidia.com/gpu or
	// nvidia.com/mig-1g.10gb ("gpu" alone means nvidia.com/gpu).
	Name ResourceName `json:"name"`
	// Rename, when set, is the name the replicas are advertised under.
	Rename ResourceName `json:"rename,omitempty"`
	// Devices selects which devices of the resource to replicate; unset means
	// all. Selecting fewer is read but not implemented (nor is it by NVIDIA's
	// plugin): all devices are replicated.
	Devices ReplicatedDevices `json:"devices,omitzero"`
	// Replicas is how many replicas each device is advertised as.
	Replicas int `json:"replicas"`
}

// ReplicatedDevices selects devices: all of them, the first Count, or the
// ones in List. At most one of the three is set; none set means all.
type ReplicatedDevices struct {
	// All selects every device; written as "all".
	All bool
	// Count selects the first Count devices; written as a number.
	Count int
	// List selects devices by GPU index ("0"), MIG index ("0:1") or UUID;
	// written as a list.
	List []string
}

// IsAll reports whether every device is selected.
func (d ReplicatedDevices) IsAll() bool {
	return d.All || (d.Count == 0 && d.List == nil)
}

// MarshalJSON writes "all", a count or a list, the forms the file accepts.
func (d ReplicatedDevices) MarshalJSON() ([]byte, error) {
	switch {
	case d.Count > 0:
		return json.Marshal(d.Count)
	case d.List != nil:
		return json.Marshal(d.List)
	default:
		return json.Marshal("all")
	}
}

// UnmarshalJSON reads "all", a positive count, or a list of GPU indexes
// (numbers or strings), MIG indexes and UUIDs.
func (d *ReplicatedDevices) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if string(b) == "null" {
		return nil
	}
	*d = ReplicatedDevices{}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		if s != "all" {
			return fmt.Errorf("must be \"all\", a count or a list of devices, got %q", truncate(s))
		}
		d.All = true
		return nil
	}
	if len(b) > 0 && b[0] == '[' {
		var raw []json.RawMessage
		if err := json.Unmarshal(b, &raw); err != nil {
			return err
		}
		d.List = make([]string, 0, len(raw))
		for i, r := range raw {
			ref, err := deviceRef(r)
			if err != nil {
				return fmt.Errorf("[%d]: %w", i, err)
			}
			d.List = append(d.List, ref)
		}
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("must be \"all\", a count or a list of devices, got %s", truncate(string(b)))
	}
	count, err := strconv.Atoi(n.String())
	if err != nil || count <= 0 {
		return fmt.Errorf("a count of devices must be an integer > 0, got %s", truncate(n.String()))
	}
	d.Count = count
	return nil
}

// deviceRef reads one entry of a devices list: a GPU index as a number, or a
// string naming a device.
func deviceRef(r json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(r, &s); err != nil {
		var n json.Number
		if err := json.Unmarshal(r, &n); err != nil {
			return "", fmt.Errorf("must be a GPU index, MIG index or UUID, got %s", truncate(string(r)))
		}
		s = n.String()
		if !isUint(s) {
			return "", fmt.Errorf("a GPU index must be an integer >= 0, got %s", truncate(s))
		}
		return s, nil
	}
	if !isDeviceRef(s) {
		return "", fmt.Errorf("must be a GPU index (\"0\"), MIG index (\"0:1\"), GPU UUID (\"GPU-<uuid>\") or MIG UUID (\"MIG-<uuid>\"), got %q", truncate(s))
	}
	return s, nil
}

// SharedResource is how the device plugin advertises one resource.
type SharedResource struct {
	// Name is the resource name to advertise, the original or a rename.
	Name string
	// Replicas is how many replicas of each device to advertise; 1 means the
	// device is not shared.
	Replicas int
	// FailRequestsGreaterThanOne says to refuse requests for more than one
	// replica.
	FailRequestsGreaterThanOne bool
}

// ReplicasFor answers, for the resource named resource (for example
// "nvidia.com/gpu"; the prefix may be left out), how many replicas of each
// device to advertise and under which name. ok is false when the resource is
// not replicated; the answer is then the resource itself with one replica. A
// nil receiver replicates nothing.
func (r *ReplicatedResources) ReplicasFor(resource string) (shared SharedResource, ok bool) {
	name := ResourceName(resource).Qualified()
	shared = SharedResource{Name: string(name), Replicas: 1}
	if r == nil {
		return shared, false
	}
	for _, res := range r.Resources {
		if res.Name.Qualified() != name {
			continue
		}
		shared.Replicas = res.Replicas
		shared.FailRequestsGreaterThanOne = r.FailRequestsGreaterThanOne != nil && *r.FailRequestsGreaterThanOne
		shared.Name = string(r.advertisedName(res))
		return shared, true
	}
	return shared, false
}

// advertisedName is the qualified name a replicated resource is advertised
// under: its rename, else "<name>.shared" with renameByDefault, else its name.
func (r *ReplicatedResources) advertisedName(res ReplicatedResource) ResourceName {
	switch {
	case res.Rename != "":
		return res.Rename.Qualified()
	case r.RenameByDefault:
		return res.Name.Qualified() + SharedSuffix
	default:
		return res.Name.Qualified()
	}
}

// setDefaults qualifies resource names so that readers of the config see
// "nvidia.com/gpu" however the file spelled it.
func (r *ReplicatedResources) setDefaults() {
	if r == nil {
		return
	}
	r.Resources = nilIfEmpty(r.Resources)
	for i := range r.Resources {
		res := &r.Resources[i]
		if res.Name != "" {
			res.Name = res.Name.Qualified()
		}
		if res.Rename != "" {
			res.Rename = res.Rename.Qualified()
		}
	}
}

// validate checks the replicated resources found at path. For a sharing
// strategy gpulet implements (checkNames), it also checks that no two
// entries replicate the same resource or advertise the same name.
func (r *ReplicatedResources) validate(path string, checkNames bool) error {
	if r == nil {
		return nil
	}
	var errs []error
	seen := map[ResourceName]int{}
	advertised := map[ResourceName]int{}
	for i, res := range r.Resources {
		p := fmt.Sprintf("%s.resources[%d]", path, i)
		nameErr := res.Name.Validate()
		if nameErr != nil {
			errs = append(errs, fmt.Errorf("%s.name: %w", p, nameErr))
		}
		renameErr := error(nil)
		if res.Rename != "" {
			if renameErr = res.Rename.Validate(); renameErr != nil {
				errs = append(errs, fmt.Errorf("%s.rename: %w", p, renameErr))
			}
		}
		if res.Replicas < 1 {
			errs = append(errs, fmt.Errorf("%s.replicas: must be >= 1, got %d", p, res.Replicas))
		}
		if res.Devices.Count < 0 {
			errs = append(errs, fmt.Errorf("%s.devices: a count of devices must be > 0, got %d", p, res.Devices.Count))
		}
		for j, ref := range res.Devices.List {
			if !isDeviceRef(ref) {
				errs = append(errs, fmt.Errorf("%s.devices[%d]: must be a GPU index, MIG index or UUID, got %q", p, j, truncate(ref)))
			}
		}
		if !checkNames || nameErr != nil || renameErr != nil {
			continue
		}
		name := res.Name.Qualified()
		if first, dup := seen[name]; dup {
			errs = append(errs, fmt.Errorf("%s.name: %q is already replicated by %s.resources[%d]", p, name, path, first))
			continue
		}
		seen[name] = i
		adv := r.advertisedName(res)
		if first, dup := advertised[adv]; dup {
			errs = append(errs, fmt.Errorf("%s: advertises %q, as %s.resources[%d] does", p, adv, path, first))
			continue
		}
		advertised[adv] = i
	}
	return errors.Join(errs...)
}

// warnings lists what gpulet ignores in a time-slicing setting at path.
func (r *ReplicatedResources) warnings(path string) []string {
	if r == nil {
		return nil
	}
	var w []string
	for i, res := range r.Resources {
		if !res.Devices.IsAll() {
			w = append(w, fmt.Sprintf("%s.resources[%d].devices: selecting devices is not implemented by gpulet, ignored: all devices of %q are replicated",
				path, i, res.Name.Qualified()))
		}
	}
	return w
}
