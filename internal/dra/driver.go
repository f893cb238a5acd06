package dra

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"

	"github.com/gpulet/gpulet/internal/cdi"
	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/nvml"
)

// DefaultDriverName is the driver's name when Options leave it out.
const DefaultDriverName = "gpu.gpulet.dev"

// NVML is what the driver reads and changes the GPUs through;
// *nvml.Adapter is one.
type NVML interface {
	inventory.Source
	// CreateMigDevice creates a MIG device of a profile at a placement
	// start, or returns the one already there.
	CreateMigDevice(parentUUID string, giProfileID, start int) (nvml.MigDevice, error)
	// DestroyMigDevice destroys a MIG device; destroying what is gone
	// succeeds.
	DestroyMigDevice(parentUUID string, giID, ciID int) error
}

// CDI writes the per-claim CDI specs; *cdi.Generator is one.
type CDI interface {
	// Update computes the container edits of an inventory's devices (MIG
	// devices created on demand among them).
	Update(ctx context.Context, inv *inventory.Inventory) error
	WriteClaimSpec(ctx context.Context, claimUID string, devices []cdi.ClaimDevice) ([]string, error)
	RemoveClaimSpec(ctx context.Context, claimUID string) error
	ClaimSpecUIDs() ([]string, error)
}

// HealthSource is where device health comes from; *health.Monitor is one.
type HealthSource interface {
	Subscribe() (<-chan health.Update, func())
}

// TimeSlicer sets a GPU's time slice (0 default, 1 short, 2 medium, 3
// long), as `nvidia-smi compute-policy --set-timeslice` does.
type TimeSlicer interface {
	SetTimeSlice(gpuUUID string, level int) error
}

// Options configure a Driver.
type Options struct {
	// DriverName is the DRA driver name; default DefaultDriverName.
	DriverName string
	// NodeName is the node; it is also the name of the driver's pool.
	NodeName string
	// KubeClient reads claims (through the kubeletplugin helper) and
	// publishes ResourceSlices. See NewClient for its rate limits.
	KubeClient kubernetes.Interface
	// KubeletRoot is the kubelet's root directory: the driver registers
	// in <root>/plugins_registry and serves <root>/plugins/<driver>/dra.sock.
	KubeletRoot string
	// NVML, Inventory, Ledger and CDI are the node's, shared with the
	// device plugin. Inventory is what discovery found at start; the driver
	// reads the node again after it creates or destroys MIG devices.
	NVML      NVML
	Inventory *inventory.Inventory
	Ledger    *ledger.Ledger
	CDI       CDI
	// Health feeds WatchHealthStatus and device taints; nil reports none.
	Health HealthSource
	// ConsumableCapacity publishes a shared twin of every GPU.
	ConsumableCapacity bool
	// PCIeRoots gives each GPU's root complex by UUID; nil reads sysfs
	// under SysfsRoot ("/" when empty).
	PCIeRoots map[string]string
	SysfsRoot string
	// TimeSlicer applies time-slicing settings; nil records them only
	// (and hands them to the container in its environment).
	TimeSlicer TimeSlicer
	// OnInventory is called with the new inventory after the driver
	// created or destroyed MIG devices (health follows the new devices).
	OnInventory func(*inventory.Inventory)
	// Observer records prepare and unprepare latencies and the state of
	// slice publication, for metrics and readiness; may be nil.
	Observer Observer
	// HealthResend is how often WatchHealthStatus repeats its report when
	// nothing changed; default 10s (the kubelet forgets after 30s).
	HealthResend time.Duration
	// PublishDelay coalesces bursts of changes (a run of prepares moving
	// the ledger) into one publication; default 200ms.
	PublishDelay time.Duration
	// PluginOptions are appended to the kubeletplugin options (tests give
	// their own socket paths).
	PluginOptions []kubeletplugin.Option
	// CheckpointPath names the ledger's file in error messages.
	CheckpointPath string
	// CheckpointSetAside says the ledger's checkpoint was corrupt and set
	// aside: claim CDI specs without a ledger record may then still serve
	// running containers, so they are kept (until their claim is
	// unprepared) instead of being removed as a crash's leftovers.
	CheckpointSetAside bool
}

// Driver is gpulet's DRA driver: a kubeletplugin.DRAPlugin that publishes
// the node's GPUs and prepares claims for them. The helper does not
// serialise calls (the kubelet prepares the claims of pods that start
// together at once): the driver decides under mu, and does the I/O of a
// claim without MIG devices with mu released, the claim marked busy so
// that other calls for it wait.
type Driver struct {
	opts Options
	pool string

	// mu serialises the decisions of prepare, unprepare and recovery, and
	// guards what follows.
	mu  sync.Mutex
	inv *inventory.Inventory
	cat *catalog
	// prepared caches the answer for prepared claims, by UID, so a
	// repeated prepare does no I/O.
	prepared map[string][]kubeletplugin.Device
	// busy holds the claims whose I/O runs with mu released; the channel
	// is closed when it ends.
	busy map[string]chan struct{}
	// crash, set by tests, is called between the steps of a prepare; an
	// error from it ends the prepare as a crash would (nothing undone).
	crash func(step string) error
	// order, set by tests, makes the checkpoint and the CDI spec of a claim
	// without MIG devices be written one after the other, in this order,
	// instead of at once, so a crash between them can be placed.
	order writeOrder

	// changed wakes the publisher after an inventory change.
	changed chan struct{}
	// fatal carries a background error the helper says is not recoverable.
	fatal chan error
}

var _ kubeletplugin.DRAPlugin = (*Driver)(nil)

// writeOrder is how a claim's checkpoint and CDI spec are written.
type writeOrder int

const (
	writeConcurrently writeOrder = iota
	writeCheckpointFirst
	writeCDIFirst
)

// New returns a driver for the node and recovers what its checkpoint
// (the ledger's DRA records) says was prepared: each claim is completed
// (MIG devices exist, CDI spec written), so that after New every claim
// the ledger holds is prepared. A claim that cannot be completed keeps its
// holding, and its error is logged, so nothing it may still use is given
// to another claim.
func New(ctx context.Context, opts Options) (*Driver, error) {
	if opts.DriverName == "" {
		opts.DriverName = DefaultDriverName
	}
	switch {
	case opts.NodeName == "":
		return nil, errors.New("dra: no node name")
	case opts.NVML == nil || opts.Inventory == nil || opts.Ledger == nil || opts.CDI == nil:
		return nil, errors.New("dra: NVML, inventory, ledger and CDI are all required")
	}
	if opts.HealthResend <= 0 {
		opts.HealthResend = 10 * time.Second
	}
	if opts.PublishDelay <= 0 {
		opts.PublishDelay = 200 * time.Millisecond
	}
	if opts.PCIeRoots == nil {
		opts.PCIeRoots = sysfsRoots(ctx, opts.Inventory, opts.SysfsRoot)
	}
	d := &Driver{
		opts:     opts,
		pool:     opts.NodeName,
		inv:      opts.Inventory,
		cat:      newCatalog(opts.Inventory, opts.ConsumableCapacity),
		prepared: map[string][]kubeletplugin.Device{},
		busy:     map[string]chan struct{}{},
		changed:  make(chan struct{}, 1),
		fatal:    make(chan error, 1),
	}
	d.recover(ctx)
	return d, nil
}

// sysfsRoots reads every GPU's PCIe root complex from sysfs; a GPU sysfs
// does not know is left out (and the attribute with it).
func sysfsRoots(ctx context.Context, inv *inventory.Inventory, root string) map[string]string {
	if root == "" {
		root = "/"
	}
	find := SysfsPCIeRoot(root)
	roots := map[string]string{}
	for _, g := range inv.GPUs {
		r, err := find(g.PCIBusID)
		if err != nil {
			klog.FromContext(ctx).V(2).Info("No PCIe root for GPU; leaving the attribute out", "gpu", g.UUID, "err", err)
			continue
		}
		roots[g.UUID] = r
	}
	return roots
}

// Run serves the kubelet and publishes ResourceSlices until ctx ends. It
// returns an error when the helper cannot start or reports a fatal error.
func (d *Driver) Run(ctx context.Context) error {
	helper, err := d.startPlugin(ctx)
	if err != nil {
		return err
	}
	defer helper.Stop()
	return d.publishLoop(ctx, helper)
}

// startPlugin starts the kubeletplugin helper: registration with the
// kubelet and the DRA gRPC service, backed by this driver.
func (d *Driver) startPlugin(ctx context.Context) (*kubeletplugin.Helper, error) {
	pluginDir := filepath.Join(d.opts.KubeletRoot, "plugins", d.opts.DriverName)
	registryDir := filepath.Join(d.opts.KubeletRoot, "plugins_registry")
	for _, dir := range []string{pluginDir, registryDir} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("dra: %w", err)
		}
	}
	opts := append([]kubeletplugin.Option{
		kubeletplugin.DriverName(d.opts.DriverName),
		kubeletplugin.NodeName(d.opts.NodeName),
		kubeletplugin.KubeClient(d.opts.KubeClient),
		kubeletplugin.RegistrarDirectoryPath(registryDir),
		kubeletplugin.PluginDataDirectoryPath(pluginDir),
		// The driver serialises per claim itself; the helper's global
		// lock would make pods that start together prepare one by one.
		kubeletplugin.Serialize(false),
	}, d.opts.PluginOptions...)
	helper, err := kubeletplugin.Start(ctx, d, opts...)
	if err != nil {
		return nil, fmt.Errorf("dra: start kubelet plugin: %w", err)
	}
	klog.FromContext(ctx).Info("DRA driver serving", "driver", d.opts.DriverName, "pool", d.pool, "socket", filepath.Join(pluginDir, "dra.sock"))
	return helper, nil
}

// publisher is what publishLoop publishes through; *kubeletplugin.Helper
// is one.
type publisher interface {
	PublishResources(ctx context.Context, res resourceslice.DriverResources) error
}

// publishLoop publishes the pool now and again whenever health, the
// ledger or the inventory changes it.
func (d *Driver) publishLoop(ctx context.Context, pub publisher) error {
	logger := klog.FromContext(ctx)
	var healthCh <-chan health.Update
	if d.opts.Health != nil {
		ch, stop := d.opts.Health.Subscribe()
		defer stop()
		healthCh = ch
	}
	ledgerCh, stopLedger := d.opts.Ledger.Subscribe()
	defer stopLedger()

	var (
		states  map[string]health.State
		last    *resourceslice.DriverResources
		pending = true
		timer   = time.NewTimer(0)
	)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-d.fatal:
			return err
		case u := <-healthCh:
			states = u.States
		case <-ledgerCh:
		case <-d.changed:
		case <-timer.C:
			pending = false
			res := d.resources(states)
			if last != nil && equality.Semantic.DeepEqual(*last, res) {
				continue
			}
			if err := pub.PublishResources(ctx, res); err != nil {
				err = fmt.Errorf("dra: publish: %w", err)
				if d.opts.Observer != nil {
					d.opts.Observer.ObservePublished(err)
				}
				return err
			}
			if d.opts.Observer != nil {
				d.opts.Observer.ObservePublished(nil)
			}
			logger.V(2).Info("Published ResourceSlices", "devices", len(d.cat.devices), "slices", len(res.Pools[d.pool].Slices))
			last = &res
			continue
		}
		if !pending {
			pending = true
			timer.Reset(d.opts.PublishDelay)
		}
	}
}

// resources builds the pool as it should be published now.
func (d *Driver) resources(states map[string]health.State) resourceslice.DriverResources {
	d.mu.Lock()
	cat := d.cat
	d.mu.Unlock()
	return buildResources(publication{
		driver:    d.opts.DriverName,
		pool:      d.pool,
		cat:       cat,
		health:    states,
		records:   d.opts.Ledger.Records(),
		pcieRoots: d.opts.PCIeRoots,
	})
}

// HandleError implements kubeletplugin.DRAPlugin: background errors are
// logged; one the helper does not call recoverable ends Run.
func (d *Driver) HandleError(ctx context.Context, err error, msg string) {
	utilruntime.HandleErrorWithContext(ctx, err, msg)
	if errors.Is(err, kubeletplugin.ErrRecoverable) {
		return
	}
	select {
	case d.fatal <- fmt.Errorf("dra: %s: %w", msg, err):
	default:
	}
}

// refreshLocked reads the node again after a MIG change and tells the CDI
// generator, the publisher and the agent. Callers hold d.mu.
func (d *Driver) refreshLocked(ctx context.Context) error {
	inv, err := inventory.Discover(d.opts.NVML)
	if inv == nil {
		return fmt.Errorf("read the node after a MIG change: %w", err)
	}
	if err != nil {
		klog.FromContext(ctx).Error(err, "Some GPUs could not be read after a MIG change")
	}
	d.inv = inv
	d.cat = newCatalog(inv, d.opts.ConsumableCapacity)
	if err := d.opts.CDI.Update(ctx, inv); err != nil {
		// A device without edits fails only the claims that need it.
		klog.FromContext(ctx).Error(err, "Computing CDI edits after a MIG change")
	}
	if d.opts.OnInventory != nil {
		d.opts.OnInventory(inv)
	}
	select {
	case d.changed <- struct{}{}:
	default:
	}
	return nil
}
