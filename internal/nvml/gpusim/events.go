package gpusim

import (
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// maxQueuedEvents bounds an event set's queue; past it the oldest events
// are dropped, as a kernel event buffer overflows.
const maxQueuedEvents = 4096

// eventSet is a simulated NVML event set. Events are queued per set, only
// for the devices and types registered on it. Waiting needs no goroutine:
// Wait sleeps on a channel that each delivery (and Free) closes, so a
// freed set leaves nothing running.
type eventSet struct {
	mock.EventSet
	sim *Simulator

	// Guarded by sim.mu.
	registered map[int]uint64 // device index -> event types
	queue      []nvml.EventData
	freed      bool
	wake       chan struct{} // closed and replaced on every delivery and on Free
}

var _ nvml.EventSet = (*eventSet)(nil)

func (s *Simulator) newEventSetLocked() *eventSet {
	es := &eventSet{sim: s, registered: map[int]uint64{}, wake: make(chan struct{})}
	fillStubs(&es.EventSet, func() nvml.Return {
		defer s.lock()()
		if s.initCount == 0 {
			return nvml.ERROR_UNINITIALIZED
		}
		return nvml.ERROR_NOT_SUPPORTED
	})
	s.sets[es] = struct{}{}
	return es
}

// deliverLocked queues an event on every set registered for it. Callers
// hold s.mu.
func (s *Simulator) deliverLocked(d *device, typ, data uint64, gi, ci uint32) {
	for es := range s.sets {
		if es.registered[d.index]&typ == 0 {
			continue
		}
		if len(es.queue) >= maxQueuedEvents {
			es.queue = es.queue[1:]
		}
		es.queue = append(es.queue, nvml.EventData{
			Device:            d,
			EventType:         typ,
			EventData:         data,
			GpuInstanceId:     gi,
			ComputeInstanceId: ci,
		})
		close(es.wake)
		es.wake = make(chan struct{})
	}
}

// Wait returns the oldest queued event, waiting up to timeoutMs
// milliseconds of real time for one: ERROR_TIMEOUT if none comes. A set
// freed while Wait blocks makes it return ERROR_INVALID_ARGUMENT at once.
func (es *eventSet) Wait(timeoutMs uint32) (nvml.EventData, nvml.Return) {
	var timer *time.Timer
	deadline := time.Now().Add(time.Duration(timeoutMs) * time.Millisecond)
	for {
		es.sim.mu.Lock()
		switch {
		case es.freed:
			es.sim.mu.Unlock()
			return nvml.EventData{}, nvml.ERROR_INVALID_ARGUMENT
		case es.sim.initCount == 0:
			es.sim.mu.Unlock()
			return nvml.EventData{}, nvml.ERROR_UNINITIALIZED
		case len(es.queue) > 0:
			ev := es.queue[0]
			es.queue[0] = nvml.EventData{}
			es.queue = es.queue[1:]
			es.sim.mu.Unlock()
			return ev, nvml.SUCCESS
		}
		wake := es.wake
		es.sim.mu.Unlock()

		remaining := time.Until(deadline)
		if remaining <= 0 {
			return nvml.EventData{}, nvml.ERROR_TIMEOUT
		}
		if timer == nil {
			timer = time.NewTimer(remaining)
			defer timer.Stop()
		}
		select {
		case <-wake:
		case <-timer.C:
			return nvml.EventData{}, nvml.ERROR_TIMEOUT
		}
	}
}

// Free releases the set and wakes its waiters. After NVML's last Shutdown
// it still releases the set but reports ERROR_UNINITIALIZED, as NVML
// would.
func (es *eventSet) Free() nvml.Return {
	defer es.sim.lock()()
	if es.freed {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	es.freed = true
	es.queue = nil
	delete(es.sim.sets, es)
	close(es.wake)
	if es.sim.initCount == 0 {
		return nvml.ERROR_UNINITIALIZED
	}
	return nvml.SUCCESS
}
