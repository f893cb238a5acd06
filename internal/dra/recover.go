package dra

import (
	"context"
	"errors"

	"k8s.io/klog/v2"

	"github.com/gpulet/gpulet/internal/ledger"
)

// recover brings the node to what the ledger's DRA records describe, after
// a restart or a crash at any step of a prepare or an unprepare:
//
//   - a record is written before anything is done for a claim and removed
//     only after everything is undone, so every MIG device this driver
//     created and every claim CDI spec it wrote belongs to a record;
//
//   - each record is completed: its MIG devices are created if missing
//     (an existing one at the placement is used), its CDI spec written
//     again. The claim is then prepared, and the kubelet's retried prepare
//     gets the same answer, or its unprepare undoes it all;
//
//   - a record that cannot be completed (its GPU is gone, say) keeps its
//     holding and is logged: nothing it may still use goes to another
//     claim until the kubelet unprepares it;
//
//   - a record whose state cannot be read is logged with the checkpoint's
//     file and the problem, and kept the same way. A checkpoint that is
//     corrupt as a whole is the agent's to set aside before the ledger
//     opens (gpulet then starts empty rather than crash-looping).
//
//   - a claim CDI spec no record holds is what a crash left between
//     writing a claim's spec and its record (the two are written at once
//     for claims without MIG devices), or between removing them: the
//     kubelet never got an answer for it, and the spec is removed. Not so
//     when the checkpoint was set aside as corrupt: then such specs may
//     still serve running containers, and they stay until their claims are
//     unprepared (unprepare of an unknown claim removes its spec).
func (d *Driver) recover(ctx context.Context) {
	logger := klog.FromContext(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.opts.CDI.Update(ctx, d.inv); err != nil {
		logger.Error(err, "Computing CDI edits")
	}
	for _, rec := range d.opts.Ledger.Records() {
		if rec.API != ledger.DRA {
			continue
		}
		st, err := decodeState(rec)
		if err != nil {
			logger.Error(err, "Keeping the claim's holding until it is unprepared", "checkpoint", d.opts.CheckpointPath, "claim", rec.Namespace+"/"+rec.Name)
			continue
		}
		if _, err := d.completeLocked(ctx, rec, st); err != nil {
			if errors.Is(err, errCrashed) {
				return
			}
			logger.Error(err, "Cannot complete a prepared claim; keeping its holding until it is unprepared", "claim", rec.Namespace+"/"+rec.Name, "uid", rec.ID)
			continue
		}
		logger.V(2).Info("Recovered prepared claim", "claim", rec.Namespace+"/"+rec.Name, "uid", rec.ID, "devices", len(st.Devices))
	}
	d.removeOrphanSpecsLocked(ctx)
}

// removeOrphanSpecsLocked removes claim CDI specs no ledger record holds,
// unless the checkpoint was set aside.
func (d *Driver) removeOrphanSpecsLocked(ctx context.Context) {
	logger := klog.FromContext(ctx)
	uids, err := d.opts.CDI.ClaimSpecUIDs()
	if err != nil {
		logger.Error(err, "Listing claim CDI specs")
		return
	}
	for _, uid := range uids {
		if _, held := d.opts.Ledger.Get(uid); held {
			continue
		}
		if d.opts.CheckpointSetAside {
			logger.Info("Keeping a claim CDI spec without a record: the checkpoint was set aside, and a running container may need it until its claim is unprepared", "claim", uid)
			continue
		}
		if err := d.opts.CDI.RemoveClaimSpec(ctx, uid); err != nil {
			logger.Error(err, "Removing an orphan claim CDI spec", "claim", uid)
			continue
		}
		logger.Info("Removed the CDI spec of a claim no record holds (a crash came between writing or removing the two)", "claim", uid)
	}
}
