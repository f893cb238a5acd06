package dra

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"

	gpuv1alpha1 "github.com/gpulet/gpulet/api/gpu/v1alpha1"
	"github.com/gpulet/gpulet/internal/cdi"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/ledger"
)

// The steps of a prepare, where tests stop it as a crash would.
const (
	// StepPlanned: the claim is understood; nothing is written yet.
	StepPlanned = "planned"
	// StepCheckpointed: the claim's ledger record is on disk.
	StepCheckpointed = "checkpointed"
	// StepMIGCreated: the claim's MIG devices exist.
	StepMIGCreated = "mig-created"
	// StepCDIWritten: the claim's CDI spec is on disk.
	StepCDIWritten = "cdi-written"
)

// errCrashed marks a prepare a test stopped: nothing is undone.
var errCrashed = errors.New("stopped as by a crash")

// Environment variables a claim's containers get with each device.
const (
	envSharingStrategy = "GPULET_SHARING_STRATEGY"
	envTimeSlice       = "GPULET_TIME_SLICE_INTERVAL"
	envSharedMemory    = "GPULET_SHARED_MEMORY_BYTES"
)

// Observer records what the driver does, for metrics and readiness.
type Observer interface {
	ObservePrepare(took time.Duration, err error)
	ObserveUnprepare(took time.Duration, err error)
	// ObservePublished is told after each attempt to publish slices.
	ObservePublished(err error)
}

// PrepareResourceClaims implements kubeletplugin.DRAPlugin. Each claim is
// prepared on its own: one claim's failure does not fail the others.
func (d *Driver) PrepareResourceClaims(ctx context.Context, claims []*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	logger := klog.FromContext(ctx)
	out := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	for _, c := range claims {
		start := time.Now()
		devs, err := d.prepareClaim(ctx, c)
		if d.opts.Observer != nil {
			d.opts.Observer.ObservePrepare(time.Since(start), err)
		}
		if err != nil {
			err = fmt.Errorf("prepare claim %s/%s (%s): %w", c.Namespace, c.Name, c.UID, err)
			logger.Error(err, "Prepare failed", "claim", klog.KObj(c))
		} else {
			logger.V(2).Info("Prepared claim", "claim", klog.KObj(c), "uid", c.UID, "devices", len(devs))
		}
		out[c.UID] = kubeletplugin.PrepareResult{Devices: devs, Err: err}
	}
	return out, nil
}

// UnprepareResourceClaims implements kubeletplugin.DRAPlugin. A claim this
// driver does not know succeeds.
func (d *Driver) UnprepareResourceClaims(ctx context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	logger := klog.FromContext(ctx)
	out := make(map[types.UID]error, len(claims))
	for _, c := range claims {
		start := time.Now()
		err := d.unprepareClaim(ctx, c)
		if d.opts.Observer != nil {
			d.opts.Observer.ObserveUnprepare(time.Since(start), err)
		}
		if err != nil {
			err = fmt.Errorf("unprepare claim %s/%s (%s): %w", c.Namespace, c.Name, c.UID, err)
			logger.Error(err, "Unprepare failed", "claim", c.NamespacedName)
		} else {
			logger.V(2).Info("Unprepared claim", "claim", c.NamespacedName, "uid", c.UID)
		}
		out[c.UID] = err
	}
	return out, nil
}

// prepareClaim prepares one claim, step by step:
//
//  1. plan: read the allocation and the opaque configuration; any
//     problem fails here with nothing written;
//  2. checkpoint: reserve the devices in the ledger with the claim's
//     state (what it needs), durable;
//  3. complete: create the MIG devices, apply the configuration, write
//     the CDI spec (each idempotent).
//
// A claim with MIG devices is checkpointed before any is created, so no
// MIG device ever exists without a record. A claim without them changes
// no hardware: its checkpoint and CDI spec are written at once, their
// fsyncs overlapping, and a crash that leaves a spec without a record
// leaves an orphan the next driver removes (recover).
//
// A failure in step 3 undoes what the claim did; a crash in or after step
// 2 is completed by the next driver (recover) or undone by unprepare.
func (d *Driver) prepareClaim(ctx context.Context, claim *resourceapi.ResourceClaim) ([]kubeletplugin.Device, error) {
	uid := string(claim.UID)
	if err := cdi.ValidateClaimUID(uid); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitIdleLocked(uid)
	if devs, ok := d.prepared[uid]; ok {
		return devs, nil
	}
	if rec, ok := d.opts.Ledger.Get(uid); ok {
		if rec.API != ledger.DRA {
			return nil, fmt.Errorf("the ledger holds %s under this claim's UID", rec)
		}
		st, err := decodeState(rec)
		if err != nil {
			return nil, err
		}
		return d.completeLocked(ctx, rec, st)
	}

	st, resources, err := d.planLocked(claim)
	if err != nil || len(st.Devices) == 0 {
		return nil, err
	}
	if err := d.step(StepPlanned); err != nil {
		return nil, err
	}
	data, err := st.encode()
	if err != nil {
		return nil, err
	}
	rec := ledger.Record{ID: uid, API: ledger.DRA, Namespace: claim.Namespace, Name: claim.Name, Resources: resources, Data: data}
	if err := d.opts.Ledger.Check(rec); err != nil {
		return nil, err
	}
	var devs []kubeletplugin.Device
	if st.hasMIG() {
		if err = d.opts.Ledger.Reserve(rec); err != nil {
			return nil, err
		}
		if err := d.step(StepCheckpointed); err != nil {
			return nil, err
		}
		devs, err = d.completeLocked(ctx, rec, st)
	} else {
		devs, err = d.checkpointAndWriteLocked(ctx, rec, st)
	}
	if err != nil && !errors.Is(err, errCrashed) {
		if uerr := d.undoLocked(ctx, rec, st); uerr != nil {
			err = errors.Join(err, fmt.Errorf("undoing the failed prepare: %w", uerr))
		}
	}
	return devs, err
}

// checkpointAndWriteLocked reserves a claim without MIG devices in the
// ledger and writes its CDI spec, at once unless a test fixed the order.
// At once, the reservation is queued under d.mu (so every check sees it)
// and the syncs run with d.mu released: claims prepared in parallel share
// the ledger's syncs, and their spec syncs overlap.
func (d *Driver) checkpointAndWriteLocked(ctx context.Context, rec ledger.Record, st *claimState) ([]kubeletplugin.Device, error) {
	devices, err := d.claimDevicesLocked(st)
	if err != nil {
		return nil, err
	}
	var names []string
	reserve := func() error {
		if err := d.opts.Ledger.Reserve(rec); err != nil {
			return err
		}
		return d.step(StepCheckpointed)
	}
	write := func() error {
		var err error
		if names, err = d.opts.CDI.WriteClaimSpec(ctx, rec.ID, devices); err != nil {
			return err
		}
		return d.step(StepCDIWritten)
	}
	var rerr, werr error
	switch d.order {
	case writeCheckpointFirst:
		if rerr = reserve(); rerr == nil {
			werr = write()
		}
	case writeCDIFirst:
		if werr = write(); werr == nil {
			rerr = reserve()
		}
	default:
		commit, err := d.opts.Ledger.ReserveAsync(rec)
		if err != nil {
			return nil, err
		}
		d.unlockedIO(rec.ID, func() {
			done := make(chan struct{})
			go func() {
				defer close(done)
				if rerr = commit(); rerr == nil {
					rerr = d.step(StepCheckpointed)
				}
			}()
			werr = write()
			<-done
		})
	}
	if err := errors.Join(rerr, werr); err != nil {
		return nil, err
	}
	devs := d.kubeletDevices(st, names)
	d.prepared[rec.ID] = devs
	return devs, nil
}

// unlockedIO runs io with d.mu released and the claim marked busy, so
// that other calls for the claim wait for it (waitIdleLocked). Callers
// hold d.mu, and hold it again when unlockedIO returns.
func (d *Driver) unlockedIO(uid string, io func()) {
	done := make(chan struct{})
	d.busy[uid] = done
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.busy, uid)
		close(done)
	}()
	io()
}

// waitIdleLocked waits, with d.mu released meanwhile, until no call for
// the claim is doing I/O.
func (d *Driver) waitIdleLocked(uid string) {
	for ch := d.busy[uid]; ch != nil; ch = d.busy[uid] {
		d.mu.Unlock()
		<-ch
		d.mu.Lock()
	}
}

func (d *Driver) step(name string) error {
	if d.crash == nil {
		return nil
	}
	if err := d.crash(name); err != nil {
		return fmt.Errorf("after step %s: %w: %w", name, errCrashed, err)
	}
	return nil
}

// planLocked reads what the claim needs on this node: its devices of
// this driver and their effective sharing, and the ledger resources they
// hold. It writes nothing.
func (d *Driver) planLocked(claim *resourceapi.ResourceClaim) (*claimState, []ledger.Resource, error) {
	alloc := claim.Status.Allocation
	if alloc == nil {
		return nil, nil, errors.New("claim is not allocated")
	}
	configs, err := claimConfigs(claim, d.opts.DriverName)
	if err != nil {
		return nil, nil, err
	}
	records := d.opts.Ledger.Records()
	var (
		st        = &claimState{}
		resources []ledger.Resource
		errs      []error
		migInv    *inventory.Inventory
	)
	for i, r := range alloc.Devices.Results {
		if r.Driver != d.opts.DriverName {
			continue
		}
		fail := func(err error) {
			errs = append(errs, fmt.Errorf("status.allocation.devices.results[%d] (request %q, device %s): %w", i, r.Request, r.Device, err))
		}
		if r.Pool != d.pool {
			fail(fmt.Errorf("pool %q is not this node's pool %q", r.Pool, d.pool))
			continue
		}
		dev, err := d.cat.lookup(r.Device)
		if err != nil {
			fail(err)
			continue
		}
		if r.AdminAccess != nil && *r.AdminAccess {
			fail(errors.New("adminAccess is not supported by this driver"))
			continue
		}
		sharing, err := sharingFor(dev, r.Request, configs)
		if err == nil {
			err = checkSharedInterval(dev, sharing, string(claim.UID), records)
		}
		if err != nil {
			fail(err)
			continue
		}
		pd := preparedDevice{Request: r.Request, Device: dev.name, Kind: dev.kind, GPU: dev.gpu.UUID, Sharing: sharing}
		if r.ShareID != nil {
			pd.ShareID = string(*r.ShareID)
		}
		switch dev.kind {
		case KindShared:
			pd.MemoryBytes = sharedMemory(r)
			if err := checkSharedMemory(dev, pd.MemoryBytes, st, records); err != nil {
				fail(err)
				continue
			}
		case KindMIG:
			if migInv == nil {
				if migInv, err = inventory.Discover(d.opts.NVML); migInv == nil {
					fail(fmt.Errorf("read the node: %w", err))
					continue
				}
			}
			p := dev.placement
			_, exists := findMIG(migInv, dev.gpu.UUID, p.Profile.GIProfileID, p.Placement.Start)
			pd.MIG = &migPlacement{Profile: p.Profile.Name, GIProfileID: p.Profile.GIProfileID, Start: p.Placement.Start, Size: p.Placement.Size, Preexisting: exists}
		}
		st.Devices = append(st.Devices, pd)
		resources = append(resources, dev.resource())
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	return st, resources, nil
}

// sharedMemory is the memory a share consumes: what the scheduler
// recorded, or the request policy's default.
func sharedMemory(r resourceapi.DeviceRequestAllocationResult) int64 {
	if q, ok := r.ConsumedCapacity[capMemory]; ok {
		return q.Value()
	}
	return sharedMemoryStep.Value()
}

// checkSharedMemory is the last line of defence behind the scheduler:
// the shares of one GPU never add up to more memory than it has.
func checkSharedMemory(dev *device, want int64, self *claimState, records []ledger.Record) error {
	used := want
	for _, o := range self.Devices {
		if o.Device == dev.name {
			used += o.MemoryBytes
		}
	}
	for _, r := range records {
		if r.API != ledger.DRA {
			continue
		}
		st, err := decodeState(r)
		if err != nil {
			continue
		}
		for _, o := range st.Devices {
			if o.Device == dev.name {
				used += o.MemoryBytes
			}
		}
	}
	if used > int64(dev.gpu.MemoryBytes) {
		return fmt.Errorf("shares of %s would use %d bytes of memory, more than its %d", dev.name, used, dev.gpu.MemoryBytes)
	}
	return nil
}

// findMIG finds the MIG device of a profile at a placement start.
func findMIG(inv *inventory.Inventory, gpu string, giProfileID, start int) (*inventory.MigDevice, bool) {
	g, ok := inv.GPU(gpu)
	if !ok {
		return nil, false
	}
	for i := range g.MigDevices {
		m := &g.MigDevices[i]
		if m.GIProfileID == giProfileID && m.Placement.Start == start {
			return m, true
		}
	}
	return nil, false
}

// completeLocked does what a claim's state describes, idempotently: the
// MIG devices exist, the configuration is applied, the CDI spec is
// written. It returns the devices for the kubelet.
func (d *Driver) completeLocked(ctx context.Context, rec ledger.Record, st *claimState) ([]kubeletplugin.Device, error) {
	// Creating is idempotent (an existing device at the placement is
	// returned), so a completion after a crash creates only what is missing.
	missing := false
	for _, pd := range st.Devices {
		if pd.MIG == nil {
			continue
		}
		m, err := d.opts.NVML.CreateMigDevice(pd.GPU, pd.MIG.GIProfileID, pd.MIG.Start)
		if err != nil {
			return nil, fmt.Errorf("device %s: create MIG device %s at slice %d of GPU %s: %w", pd.Device, pd.MIG.Profile, pd.MIG.Start, pd.GPU, err)
		}
		if _, ok := findMIG(d.inv, pd.GPU, pd.MIG.GIProfileID, pd.MIG.Start); !ok {
			missing = true
			klog.FromContext(ctx).Info("Created MIG device", "claim", rec.Namespace+"/"+rec.Name, "device", pd.Device, "uuid", m.UUID, "profile", pd.MIG.Profile, "gpu", pd.GPU)
		}
	}
	if missing {
		if err := d.step(StepMIGCreated); err != nil {
			return nil, err
		}
		if err := d.refreshLocked(ctx); err != nil {
			return nil, err
		}
	}

	devs, err := d.writeSpecLocked(ctx, rec, st)
	if err != nil {
		return nil, err
	}
	if err := d.step(StepCDIWritten); err != nil {
		return nil, err
	}
	d.prepared[rec.ID] = devs
	return devs, nil
}

// writeSpecLocked applies the claim's configuration and writes its CDI
// spec, and returns the devices for the kubelet.
func (d *Driver) writeSpecLocked(ctx context.Context, rec ledger.Record, st *claimState) ([]kubeletplugin.Device, error) {
	devices, err := d.claimDevicesLocked(st)
	if err != nil {
		return nil, err
	}
	names, err := d.opts.CDI.WriteClaimSpec(ctx, rec.ID, devices)
	if err != nil {
		return nil, err
	}
	return d.kubeletDevices(st, names), nil
}

// claimDevicesLocked applies the claim's configuration and says what its
// CDI spec holds.
func (d *Driver) claimDevicesLocked(st *claimState) ([]cdi.ClaimDevice, error) {
	claimDevices := make([]cdi.ClaimDevice, 0, len(st.Devices))
	seen := map[string]int{}
	for _, pd := range st.Devices {
		uuid := pd.GPU
		if pd.MIG != nil {
			m, ok := findMIG(d.inv, pd.GPU, pd.MIG.GIProfileID, pd.MIG.Start)
			if !ok {
				return nil, fmt.Errorf("device %s: MIG device %s at slice %d of GPU %s is not there", pd.Device, pd.MIG.Profile, pd.MIG.Start, pd.GPU)
			}
			uuid = m.UUID
		}
		if err := d.applySharing(pd); err != nil {
			return nil, fmt.Errorf("device %s: %w", pd.Device, err)
		}
		// Two shares of one device in a claim are two CDI devices.
		name := pd.Device
		if seen[pd.Device]++; seen[pd.Device] > 1 {
			name += "-" + strconv.Itoa(seen[pd.Device])
		}
		claimDevices = append(claimDevices, cdi.ClaimDevice{Name: name, UUID: uuid, Request: pd.Request, Env: deviceEnv(pd)})
	}
	return claimDevices, nil
}

// kubeletDevices is the answer for the kubelet: the claim's devices with
// the CDI device names its spec was written with.
func (d *Driver) kubeletDevices(st *claimState, cdiNames []string) []kubeletplugin.Device {
	devs := make([]kubeletplugin.Device, len(st.Devices))
	for i, pd := range st.Devices {
		devs[i] = kubeletplugin.Device{
			Requests:     []string{pd.Request},
			PoolName:     d.pool,
			DeviceName:   pd.Device,
			CDIDeviceIDs: []string{cdiNames[i]},
		}
		if pd.ShareID != "" {
			devs[i].ShareID = new(types.UID(pd.ShareID))
		}
	}
	return devs
}

// applySharing applies a device's time-slicing setting to its GPU.
func (d *Driver) applySharing(pd preparedDevice) error {
	if d.opts.TimeSlicer == nil || pd.Sharing == nil || pd.Sharing.TimeSlicingConfig == nil || pd.MIG != nil {
		return nil
	}
	level, _ := pd.Sharing.TimeSlicingConfig.Interval.Level()
	if err := d.opts.TimeSlicer.SetTimeSlice(pd.GPU, level); err != nil {
		return fmt.Errorf("set time slice %s on GPU %s: %w", pd.Sharing.TimeSlicingConfig.Interval, pd.GPU, err)
	}
	return nil
}

// deviceEnv tells the container how its device is shared.
func deviceEnv(pd preparedDevice) []string {
	var env []string
	if s := pd.Sharing; s != nil {
		env = append(env, envSharingStrategy+"="+string(s.Strategy))
		if s.Strategy == gpuv1alpha1.TimeSlicingStrategy && s.TimeSlicingConfig != nil {
			env = append(env, envTimeSlice+"="+string(s.TimeSlicingConfig.Interval))
		}
	}
	if pd.Kind == KindShared {
		env = append(env, envSharedMemory+"="+strconv.FormatInt(pd.MemoryBytes, 10))
	}
	return env
}

// unprepareClaim undoes a claim. An unknown claim succeeds (after removing
// a CDI spec a lost checkpoint may have left).
func (d *Driver) unprepareClaim(ctx context.Context, c kubeletplugin.NamespacedObject) error {
	uid := string(c.UID)
	if cdi.ValidateClaimUID(uid) != nil {
		return nil // nothing was ever prepared under such a UID
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waitIdleLocked(uid)
	rec, ok := d.opts.Ledger.Get(uid)
	if !ok || rec.API != ledger.DRA {
		delete(d.prepared, uid)
		return d.opts.CDI.RemoveClaimSpec(ctx, uid)
	}
	st, err := decodeState(rec)
	if err != nil {
		// What to undo cannot be read: free what can be, keep the MIG
		// devices (they may not be ours), and say so.
		klog.FromContext(ctx).Error(err, "Unpreparing a claim whose state cannot be read: its MIG devices, if any, are left in place", "checkpoint", d.opts.CheckpointPath)
		st = &claimState{}
	}
	return d.undoLocked(ctx, rec, st)
}

// undoLocked undoes a claim's state, in the reverse order of prepare: the
// CDI spec goes, then the MIG devices it created (unless another holder
// overlaps them), then the ledger record. A crash in between leaves the
// record, so the next unprepare finishes the job.
func (d *Driver) undoLocked(ctx context.Context, rec ledger.Record, st *claimState) error {
	delete(d.prepared, rec.ID)
	if !st.hasMIG() {
		// Nothing to destroy: the spec goes and the holding is released at
		// once, with d.mu released. A crash between the two leaves a spec
		// without a record, which the next driver removes (recover).
		var rerr, lerr error
		d.unlockedIO(rec.ID, func() {
			done := make(chan struct{})
			go func() {
				defer close(done)
				rerr = d.opts.CDI.RemoveClaimSpec(ctx, rec.ID)
			}()
			lerr = d.opts.Ledger.Release(rec.ID)
			<-done
		})
		return errors.Join(rerr, lerr)
	}
	if err := d.opts.CDI.RemoveClaimSpec(ctx, rec.ID); err != nil {
		return err
	}
	var errs []error
	destroyed := false
	for _, pd := range st.Devices {
		if pd.MIG == nil || pd.MIG.Preexisting {
			continue
		}
		if holder, held := d.otherHolder(rec.ID, pd); held {
			klog.FromContext(ctx).V(2).Info("Leaving MIG device in place: another holder uses it", "device", pd.Device, "holder", holder)
			continue
		}
		m, ok := findMIG(d.inv, pd.GPU, pd.MIG.GIProfileID, pd.MIG.Start)
		if !ok {
			continue
		}
		if err := d.opts.NVML.DestroyMigDevice(pd.GPU, m.GIID, m.CIID); err != nil {
			errs = append(errs, fmt.Errorf("device %s: destroy MIG device %s (%s): %w", pd.Device, m.UUID, pd.MIG.Profile, err))
			continue
		}
		klog.FromContext(ctx).Info("Destroyed MIG device", "claim", rec.Namespace+"/"+rec.Name, "device", pd.Device, "uuid", m.UUID, "profile", pd.MIG.Profile, "gpu", pd.GPU)
		destroyed = true
	}
	if destroyed {
		if err := d.refreshLocked(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return d.opts.Ledger.Release(rec.ID)
}

// otherHolder finds another ledger holder of a MIG device's slices.
func (d *Driver) otherHolder(self string, pd preparedDevice) (string, bool) {
	mine := ledger.Resource{GPU: pd.GPU, Slices: &ledger.Slices{Start: pd.MIG.Start, Size: pd.MIG.Size}}
	for _, r := range d.opts.Ledger.Records() {
		if r.ID == self {
			continue
		}
		if overlapsAny(mine, r.Resources) {
			return r.String(), true
		}
	}
	return "", false
}
