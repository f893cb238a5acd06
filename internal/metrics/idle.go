package metrics

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
)

// IdleOptions say when a device allocated to a pod counts as idle, and
// when that is worth an Event on the pod.
type IdleOptions struct {
	// Threshold is the utilization (0..1) under which a GPU is idle.
	// Default 0.05. A MIG device, for which NVML reports no utilization,
	// is idle while no process runs on it.
	Threshold float64
	// EventAfter is how long a device must stay idle before the pod gets
	// an Event, once each time it crosses; 0 sends none.
	EventAfter time.Duration
	// Recorder sends the Events; nil sends none.
	Recorder events.EventRecorder
}

// DefaultIdleThreshold is IdleOptions.Threshold's default.
const DefaultIdleThreshold = 0.05

// Event reason and action of the idle Event, for people filtering
// `kubectl get events`.
const (
	IdleEventReason = "GPUAllocatedIdle"
	IdleEventAction = "Observe"
)

// StartEventRecorder returns a recorder that sends Events through
// client's events.k8s.io/v1 API as reportingController, and a function
// that stops it. A second crossing on the same pod within the
// broadcaster's window becomes a count on the first Event, as kubectl
// describe shows it ("x2 over ...").
func StartEventRecorder(ctx context.Context, client kubernetes.Interface, reportingController string) (events.EventRecorder, func(), error) {
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	if err := b.StartRecordingToSinkWithContext(ctx); err != nil {
		return nil, nil, fmt.Errorf("start event recorder: %w", err)
	}
	return b.NewRecorder(scheme.Scheme, reportingController), b.Shutdown, nil
}

// idleKey is one pod's holding of one device.
type idleKey struct {
	uuid, namespace, pod string
}

// idleTracker remembers, for each pod holding a device, since when the
// device has been idle. Only the sampler's goroutine uses it.
type idleTracker struct {
	opts     IdleOptions
	since    map[idleKey]time.Time
	notified map[idleKey]bool
}

func newIdleTracker(opts IdleOptions) *idleTracker {
	t := &idleTracker{since: map[idleKey]time.Time{}, notified: map[idleKey]bool{}}
	t.setOptions(opts)
	return t
}

// setOptions replaces the options; idle times and who was told stay.
func (t *idleTracker) setOptions(opts IdleOptions) {
	if opts.Threshold == 0 {
		opts.Threshold = DefaultIdleThreshold
	}
	t.opts = opts
}

// idle says whether a device is idle now. A device that could not be read
// is not: a lost GPU is broken, not forgotten.
func (t *idleTracker) idle(d DeviceSample) bool {
	switch {
	case !d.OK:
		return false
	case d.Telemetry.GPUUtilization != nil:
		return *d.Telemetry.GPUUtilization < t.opts.Threshold
	case d.ProcessesOK:
		return len(d.Processes) == 0
	}
	return false
}

// update advances every pod's idle time to now and sends the Events due.
func (t *idleTracker) update(ctx context.Context, now time.Time, devices []DeviceSample, allocs []Allocation) []IdleSample {
	byUUID := make(map[string]*DeviceSample, len(devices))
	for i := range devices {
		byUUID[devices[i].UUID] = &devices[i]
	}
	var out []IdleSample
	seen := map[idleKey]bool{}
	for _, a := range allocs {
		k := idleKey{a.UUID, a.Namespace, a.Pod}
		if a.Pod == "" || seen[k] {
			continue
		}
		seen[k] = true
		d, ok := byUUID[a.UUID]
		if !ok {
			continue
		}
		s := IdleSample{Device: a.Device, UUID: a.UUID, Namespace: a.Namespace, Pod: a.Pod}
		if !t.idle(*d) {
			delete(t.since, k)
			delete(t.notified, k)
			out = append(out, s)
			continue
		}
		since, ok := t.since[k]
		if !ok {
			since = now
			t.since[k] = now
		}
		s.Seconds = now.Sub(since).Seconds()
		out = append(out, s)
		if t.opts.EventAfter > 0 && now.Sub(since) >= t.opts.EventAfter && !t.notified[k] {
			t.notified[k] = true
			t.notify(ctx, *d, a, now.Sub(since))
		}
	}
	for k := range t.since {
		if !seen[k] {
			delete(t.since, k)
			delete(t.notified, k)
		}
	}
	slices.SortFunc(out, func(a, b IdleSample) int {
		return cmp.Or(cmp.Compare(a.Device, b.Device), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Pod, b.Pod))
	})
	return out
}

// notify puts an Event on the pod.
func (t *idleTracker) notify(ctx context.Context, d DeviceSample, a Allocation, idleFor time.Duration) {
	why := fmt.Sprintf("below %g%% utilization", 100*t.opts.Threshold)
	if d.Telemetry.GPUUtilization == nil {
		why = "without a process on it"
	}
	klog.FromContext(ctx).Info("Allocated GPU is idle", "pod", klog.KRef(a.Namespace, a.Pod), "device", a.Device, "uuid", a.UUID, "idleFor", idleFor.Round(time.Second))
	if t.opts.Recorder == nil {
		return
	}
	ref := &corev1.ObjectReference{APIVersion: "v1", Kind: "Pod", Namespace: a.Namespace, Name: a.Pod}
	t.opts.Recorder.Eventf(ref, nil, corev1.EventTypeWarning, IdleEventReason, IdleEventAction,
		"GPU device %s (%s) allocated to this pod has been idle (%s) for %s",
		a.Device, a.UUID, why, idleFor.Round(time.Second))
}
