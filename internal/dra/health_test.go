package dra

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"

	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/ledger"
)

// fakeHealth is a health source the test drives.
type fakeHealth struct {
	mu   sync.Mutex
	subs []chan health.Update
	last health.Update
}

func (f *fakeHealth) Subscribe() (<-chan health.Update, func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan health.Update, 1)
	ch <- f.last
	f.subs = append(f.subs, ch)
	return ch, func() {}
}

func (f *fakeHealth) set(states map[string]health.State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = health.Update{States: states}
	for _, ch := range f.subs {
		select {
		case <-ch:
		default:
		}
		ch <- f.last
	}
}

// fakePublisher records what the driver publishes.
type fakePublisher struct {
	mu  sync.Mutex
	got []resourceslice.DriverResources
}

func (p *fakePublisher) PublishResources(_ context.Context, res resourceslice.DriverResources) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got = append(p.got, res)
	return nil
}

func (p *fakePublisher) latest() (resourceslice.DriverResources, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.got) == 0 {
		return resourceslice.DriverResources{}, 0
	}
	return p.got[len(p.got)-1], len(p.got)
}

// taintsOf finds a device's taints in a publication.
func taintsOf(res resourceslice.DriverResources, name string) []resourceapi.DeviceTaint {
	for _, pool := range res.Pools {
		for _, s := range pool.Slices {
			for _, d := range s.Devices {
				if d.Name == name {
					return d.Taints
				}
			}
		}
	}
	return nil
}

// TestTaintsFollowHealthAndDevicePlugin runs the publisher and checks
// that taints appear when a GPU turns unhealthy (NoExecute when it is
// lost) or the device plugin takes it, and go when that ends.
func TestTaintsFollowHealthAndDevicePlugin(t *testing.T) {
	h := &fakeHealth{}
	b := newTestBed(t, stateA100MIG, func(o *Options) { o.Health = h; o.PublishDelay = time.Millisecond })
	pub := &fakePublisher{}
	ctx, cancel := context.WithCancel(b.ctx)
	done := make(chan error, 1)
	go func() { done <- b.driver.publishLoop(ctx, pub) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	g0, g3 := b.gpu(0), b.gpu(3)
	mig := g0.Name + "-mig-1g10gb-2"
	wait := func(what string, ok func(res resourceslice.DriverResources) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if res, n := pub.latest(); n > 0 && ok(res) {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		res, _ := pub.latest()
		t.Fatalf("never published %s; last taints of %s: %v, %s: %v", what, g0.Name, taintsOf(res, g0.Name), g3.Name, taintsOf(res, g3.Name))
	}
	has := func(res resourceslice.DriverResources, dev, key string, effect resourceapi.DeviceTaintEffect) bool {
		for _, tt := range taintsOf(res, dev) {
			if tt.Key == key && tt.Effect == effect {
				return true
			}
		}
		return false
	}

	wait("the initial pool", func(res resourceslice.DriverResources) bool { return len(taintsOf(res, g0.Name)) == 0 })

	h.set(map[string]health.State{g0.UUID: {Reason: health.ReasonXID, XID: 79}})
	wait("an XID taint on the GPU and its MIG placements", func(res resourceslice.DriverResources) bool {
		return has(res, g0.Name, "gpu.gpulet.dev/unhealthy", resourceapi.DeviceTaintEffectNoSchedule) &&
			has(res, mig, "gpu.gpulet.dev/unhealthy", resourceapi.DeviceTaintEffectNoSchedule)
	})
	h.set(map[string]health.State{g0.UUID: {Reason: health.ReasonLost}})
	wait("a NoExecute taint for a lost GPU", func(res resourceslice.DriverResources) bool {
		return has(res, g0.Name, "gpu.gpulet.dev/unhealthy", resourceapi.DeviceTaintEffectNoExecute)
	})
	h.set(map[string]health.State{g0.UUID: {Healthy: true}})
	wait("the taint removed on recovery", func(res resourceslice.DriverResources) bool {
		return len(taintsOf(res, g0.Name)) == 0 && len(taintsOf(res, mig)) == 0
	})

	if err := b.ledger.Reserve(ledger.Record{ID: g3.UUID, API: ledger.DevicePlugin, Resources: []ledger.Resource{{GPU: g3.UUID, Device: g3.UUID}}}); err != nil {
		t.Fatal(err)
	}
	wait("the device-plugin taint", func(res resourceslice.DriverResources) bool {
		return has(res, g3.Name, "gpu.gpulet.dev/device-plugin", resourceapi.DeviceTaintEffectNoSchedule) &&
			has(res, g3.Name+"-mig-7g80gb-0", "gpu.gpulet.dev/device-plugin", resourceapi.DeviceTaintEffectNoSchedule)
	})
	if err := b.ledger.Release(g3.UUID); err != nil {
		t.Fatal(err)
	}
	wait("the device-plugin taint removed", func(res resourceslice.DriverResources) bool { return len(taintsOf(res, g3.Name)) == 0 })

	// A DRA claim creating a MIG device does not taint anything: the
	// scheduler already counts it through the counters.
	_, before := pub.latest()
	c := migClaim(b, uidA, 0, "1g10gb", 2)
	if r := b.prepare(c)[c.UID]; r.Err != nil {
		t.Fatal(r.Err)
	}
	time.Sleep(100 * time.Millisecond)
	if res, n := pub.latest(); n != before {
		t.Errorf("a DRA prepare republished the pool (taints of %s: %v)", g0.Name, taintsOf(res, g0.Name))
	}
}

// TestWatchHealthStatus checks the reports the kubelet gets: every device,
// healthy until health says otherwise, a MIG placement following its GPU,
// and repeated before the kubelet's lease runs out.
func TestWatchHealthStatus(t *testing.T) {
	h := &fakeHealth{}
	b := newTestBed(t, stateA100MIG, func(o *Options) { o.Health = h; o.HealthResend = 50 * time.Millisecond })
	ctx, cancel := context.WithCancel(b.ctx)
	reports := make(chan kubeletplugin.DeviceHealthReport)
	done := make(chan error, 1)
	go func() { done <- b.driver.WatchHealthStatus(ctx, reports) }()

	g := b.gpu(5)
	mig := g.Name + "-mig-3g40gb-4"
	find := func(r kubeletplugin.DeviceHealthReport, name string) kubeletplugin.DeviceHealth {
		for _, d := range r.Devices {
			if d.DeviceName == name {
				return d
			}
		}
		t.Fatalf("device %s not in the report", name)
		return kubeletplugin.DeviceHealth{}
	}
	r := <-reports
	if len(r.Devices) != len(b.driver.cat.devices) {
		t.Errorf("report covers %d devices, the driver publishes %d", len(r.Devices), len(b.driver.cat.devices))
	}
	if d := find(r, mig); d.Health != kubeletplugin.HealthStatusHealthy || d.PoolName != testNode || d.HealthCheckTimeout <= 50*time.Millisecond {
		t.Errorf("initial report for %s: %+v", mig, d)
	}
	h.set(map[string]health.State{g.UUID: {Reason: health.ReasonECC, Message: "double-bit ECC error"}})
	for {
		r = <-reports
		if find(r, mig).Health == kubeletplugin.HealthStatusUnhealthy {
			break
		}
	}
	if d := find(r, mig); d.Message != "ecc-double-bit: double-bit ECC error" {
		t.Errorf("message %q", d.Message)
	}
	// With nothing changing, reports keep coming.
	start := time.Now()
	<-reports
	<-reports
	if time.Since(start) > 10*time.Second {
		t.Error("reports were not repeated")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Without a health source the driver says it does not report health.
	b2 := newTestBed(t, stateH100, nil)
	if err := b2.driver.WatchHealthStatus(b2.ctx, reports); !errors.Is(err, kubeletplugin.ErrHealthNotSupported) {
		t.Errorf("without health: %v", err)
	}
}
