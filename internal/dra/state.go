package dra

import (
	"encoding/json"
	"errors"
	"fmt"

	gpuv1alpha1 "github.com/gpulet/gpulet/api/gpu/v1alpha1"
	"github.com/gpulet/gpulet/internal/ledger"
)

// stateVersion is the version of claimState this build writes and reads.
// The ledger's checkpoint has a version of its own; this one lets the
// driver's record change without the ledger's format changing.
const stateVersion = 1

// errBadState marks a ledger record whose driver data cannot be read.
var errBadState = errors.New("unreadable prepared state")

// claimState is what the driver keeps about a prepared claim, in the
// claim's ledger record (Record.Data): the holdings and how to undo them
// live in one checkpointed record, so they can never disagree after a
// crash. It is written before anything is done for the claim, and
// everything it describes is done idempotently, so a record says both
// "this claim holds these devices" and "this is what preparing it takes":
// a restarted driver completes what the record describes (see recover).
type claimState struct {
	Version int              `json:"version"`
	Devices []preparedDevice `json:"devices"`
}

// preparedDevice is one allocation result of a claim.
type preparedDevice struct {
	// Request is the request (or "request/subrequest") the device was
	// allocated for.
	Request string `json:"request"`
	// Device is the published device name.
	Device string `json:"device"`
	Kind   Kind   `json:"kind"`
	// GPU is the physical GPU's UUID.
	GPU string `json:"gpu"`
	// MIG is set for a MIG placement.
	MIG *migPlacement `json:"mig,omitempty"`
	// ShareID identifies the share of a shared device.
	ShareID string `json:"shareID,omitempty"`
	// MemoryBytes is the memory a share consumes (consumable capacity).
	MemoryBytes int64 `json:"memoryBytes,omitempty"`
	// Sharing is the effective, normalized sharing configuration.
	Sharing *gpuv1alpha1.Sharing `json:"sharing,omitempty"`
}

// migPlacement is the MIG device a claim needs: a GPU-instance profile at
// a start slice, and whether it was there before the claim (then it is
// used as it is and left in place on unprepare).
type migPlacement struct {
	Profile     string `json:"profile"`
	GIProfileID int    `json:"giProfileID"`
	Start       int    `json:"start"`
	Size        int    `json:"size"`
	Preexisting bool   `json:"preexisting,omitempty"`
}

// hasMIG reports whether the claim has a MIG device.
func (s *claimState) hasMIG() bool {
	for _, d := range s.Devices {
		if d.MIG != nil {
			return true
		}
	}
	return false
}

func (s *claimState) encode() (json.RawMessage, error) {
	s.Version = stateVersion
	return json.Marshal(s)
}

// decodeState reads a record's driver data; a problem is an error naming
// the claim and wrapping errBadState.
func decodeState(rec ledger.Record) (*claimState, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("ledger record of claim %s: %s: %w", rec.ID, fmt.Sprintf(format, args...), errBadState)
	}
	if len(rec.Data) == 0 {
		return nil, bad("no prepared state")
	}
	var s claimState
	if err := json.Unmarshal(rec.Data, &s); err != nil {
		return nil, bad("%v", err)
	}
	if s.Version != stateVersion {
		return nil, bad("version %d, this gpulet reads version %d", s.Version, stateVersion)
	}
	if len(s.Devices) == 0 {
		return nil, bad("no devices")
	}
	for i, d := range s.Devices {
		if d.Device == "" || d.GPU == "" {
			return nil, bad("devices[%d]: missing device or GPU", i)
		}
		if (d.Kind == KindMIG) != (d.MIG != nil) {
			return nil, bad("devices[%d]: kind %q does not match its MIG placement", i, d.Kind)
		}
	}
	return &s, nil
}
