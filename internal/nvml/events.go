package nvml

import (
	"errors"
	"reflect"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
)

// watchedEvents are the event types health watching asks for; each GPU is
// registered for the subset it supports.
const watchedEvents = gonvml.EventTypeXidCriticalError | gonvml.EventTypeDoubleBitEccError |
	gonvml.EventTypeSingleBitEccError | gonvml.EventTypeGpuUnavailableError

// EventWatcher receives NVML events for a set of GPUs through one NVML
// event set. Its Wait is meant for one goroutine; Close may be called from
// another to end it.
type EventWatcher struct {
	set gonvml.EventSet
	// uuids maps registered handles to their UUID for events whose device
	// no longer answers GetUUID (a lost GPU).
	uuids map[gonvml.Device]string
	now   func() time.Time
}

// WatchEvents registers the given GPUs for XID, ECC and GPU-unavailable
// events. GPUs that cannot be registered (lost, or no event support) are
// named in the returned error; the watcher still serves the others and is
// nil only when no GPU could be registered.
func (a *Adapter) WatchEvents(uuids []string) (*EventWatcher, error) {
	set, ret := a.lib.EventSetCreate()
	if ret != gonvml.SUCCESS {
		return nil, check(ret, "create event set", "")
	}
	w := &EventWatcher{set: set, uuids: make(map[gonvml.Device]string), now: time.Now}
	var errs []error
	for _, uuid := range uuids {
		h, err := a.handle(uuid)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		supported, ret := h.GetSupportedEventTypes()
		if ret != gonvml.SUCCESS {
			errs = append(errs, check(ret, "get supported event types", uuid))
			continue
		}
		if ret := h.RegisterEvents(supported&watchedEvents, set); ret != gonvml.SUCCESS {
			errs = append(errs, check(ret, "register events", uuid))
			continue
		}
		if reflect.TypeOf(h).Comparable() {
			w.uuids[h] = uuid
		}
	}
	if len(uuids) > 0 && len(errs) == len(uuids) {
		_ = set.Free()
		return nil, errors.Join(errs...)
	}
	return w, errors.Join(errs...)
}

// Wait blocks for up to timeout for the next event. It returns an error
// wrapping ErrTimeout when none came.
func (w *EventWatcher) Wait(timeout time.Duration) (Event, error) {
	ms := uint32(min(timeout.Milliseconds(), int64(^uint32(0)>>1)))
	data, ret := w.set.Wait(ms)
	if ret != gonvml.SUCCESS {
		return Event{}, check(ret, "wait for events", "")
	}
	ev := Event{
		Time: w.now(),
		GIID: data.GpuInstanceId,
		CIID: data.ComputeInstanceId,
		Kind: eventKind(data.EventType),
	}
	if ev.Kind == EventXID {
		ev.XID = data.EventData
	}
	if data.Device != nil {
		if uuid, ret := data.Device.GetUUID(); ret == gonvml.SUCCESS {
			ev.UUID = uuid
		} else if reflect.TypeOf(data.Device).Comparable() {
			ev.UUID = w.uuids[data.Device]
		}
	}
	return ev, nil
}

// Close frees the event set.
func (w *EventWatcher) Close() error {
	return check(w.set.Free(), "free event set", "")
}

func eventKind(t uint64) EventKind {
	switch {
	case t&gonvml.EventTypeXidCriticalError != 0:
		return EventXID
	case t&gonvml.EventTypeDoubleBitEccError != 0:
		return EventDoubleBitECC
	case t&gonvml.EventTypeSingleBitEccError != 0:
		return EventSingleBitECC
	case t&gonvml.EventTypeGpuUnavailableError != 0:
		return EventGPUUnavailable
	}
	return EventOther
}
