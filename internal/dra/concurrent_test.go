package dra

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
)

// TestConcurrentPrepare prepares and unprepares claims from many
// goroutines at once, as the kubelet does for pods that start together
// (the helper does not serialise calls): every claim gets its own GPU, a
// claim asked for twice at once is prepared once, and afterwards nothing
// is held and no spec is left.
func TestConcurrentPrepare(t *testing.T) {
	b := newTestBed(t, stateH100, nil)
	var claims []*resourceapi.ResourceClaim
	for i := range b.node.Inventory.GPUs {
		claims = append(claims, allocatedClaim(fmt.Sprintf("c0c0c0c0-0000-0000-0000-%012d", i), fmt.Sprintf("gpu-%d", i), []result{{request: "gpu", device: b.gpu(i).Name}}))
	}
	twice := append(claims, claims[0]) // the same claim from two pods

	var wg sync.WaitGroup
	cdiIDs := make([]string, len(twice))
	for i, c := range twice {
		wg.Go(func() {
			r := b.prepare(c)[c.UID]
			if r.Err != nil {
				t.Errorf("prepare %s: %v", c.Name, r.Err)
				return
			}
			if len(r.Devices) != 1 || len(r.Devices[0].CDIDeviceIDs) != 1 {
				t.Errorf("prepare %s: devices %+v", c.Name, r.Devices)
				return
			}
			cdiIDs[i] = r.Devices[0].CDIDeviceIDs[0]
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if cdiIDs[0] != cdiIDs[len(cdiIDs)-1] {
		t.Errorf("the claim prepared twice at once got %s and %s", cdiIDs[0], cdiIDs[len(cdiIDs)-1])
	}
	if got := len(b.ledger.Records()); got != len(claims) {
		t.Errorf("%d ledger records, want %d", got, len(claims))
	}
	if got := len(b.claimSpecs()); got != len(claims) {
		t.Errorf("%d claim specs, want %d", got, len(claims))
	}

	// Unprepare every claim while a new claim for GPU 0 waits its turn:
	// it may only succeed once the first claim's release is on disk.
	late := allocatedClaim("1a7e1a7e-0000-0000-0000-000000000000", "late", []result{{request: "gpu", device: b.gpu(0).Name}})
	for _, c := range twice {
		wg.Go(func() {
			if err := b.unprepare(c)[c.UID]; err != nil {
				t.Errorf("unprepare %s: %v", c.Name, err)
			}
		})
	}
	lateErr := make(chan error, 1)
	wg.Go(func() { lateErr <- b.prepare(late)[late.UID].Err })
	wg.Wait()
	if err := <-lateErr; err != nil && !strings.Contains(err.Error(), "already held") {
		t.Errorf("prepare of a claim for a GPU being released: %v, want success or a conflict", err)
	}
	if err := b.unprepare(late)[late.UID]; err != nil {
		t.Fatal(err)
	}
	if recs := b.ledger.Records(); len(recs) != 0 {
		t.Errorf("ledger after unprepare: %v", recs)
	}
	if specs := b.claimSpecs(); len(specs) != 0 {
		t.Errorf("claim specs after unprepare: %v", specs)
	}
	b.restart()
	if recs := b.ledger.Records(); len(recs) != 0 {
		t.Errorf("ledger on disk after unprepare: %v", recs)
	}
}

// TestConcurrentSharesNeverOvercommit prepares shares of one GPU at once
// whose memory adds up to more than it has: the driver's last check
// behind the scheduler sees the reservations still waiting for their
// sync, so the shares that succeed fit.
func TestConcurrentSharesNeverOvercommit(t *testing.T) {
	b := newTestBed(t, stateH100, func(o *Options) { o.ConsumableCapacity = true })
	dev := b.gpu(0).Name + sharedSuffix
	const shares = 6 // of 30Gi each on an 80Gi GPU: two fit
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for i := range shares {
		c := allocatedClaim(fmt.Sprintf("5a5a5a5a-0000-0000-0000-%012d", i), fmt.Sprintf("share-%d", i),
			[]result{{request: "gpu", device: dev, shareID: fmt.Sprintf("5b5b5b5b-0000-0000-0000-%012d", i), memory: "30Gi"}})
		wg.Go(func() {
			switch err := b.prepare(c)[c.UID].Err; {
			case err == nil:
				mu.Lock()
				ok++
				mu.Unlock()
			case !strings.Contains(err.Error(), "more than its"):
				t.Errorf("share %d: %v, want success or too little memory", i, err)
			}
		})
	}
	wg.Wait()
	if ok != 2 {
		t.Errorf("%d shares of 30Gi prepared on an 80Gi GPU, want 2", ok)
	}
}
