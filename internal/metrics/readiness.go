package metrics

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
)

// Names of the readiness checks gpulet serve registers.
const (
	// CheckNVML: NVML is initialised and the devices discovered.
	CheckNVML = "nvml"
	// CheckKubelet: the device plugin is registered with the kubelet.
	CheckKubelet = "kubelet-registration"
	// CheckSlices: the DRA driver has published its ResourceSlices.
	CheckSlices = "resource-slices"
)

// errNotYet is a check that was added but never set.
var errNotYet = errors.New("not yet")

// Readiness collects named checks for /readyz: gpulet is ready when every
// check passes. A check is either set by its owner (Set) or asked at
// request time (AddFunc). All methods are safe on a nil *Readiness and
// from any goroutine.
type Readiness struct {
	mu     sync.Mutex
	states map[string]error
	funcs  map[string]func() error
}

// NewReadiness returns a Readiness whose named checks start failing with
// "not yet" until Set.
func NewReadiness(checks ...string) *Readiness {
	r := &Readiness{states: map[string]error{}, funcs: map[string]func() error{}}
	for _, c := range checks {
		r.states[c] = errNotYet
	}
	return r
}

// Set records a check's outcome: nil passes.
func (r *Readiness) Set(check string, err error) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.states[check] = err
}

// AddFunc registers a check asked at every /readyz request; it must be
// quick.
func (r *Readiness) AddFunc(check string, fn func() error) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.funcs[check] = fn
}

// Check runs every check and returns one line per check, sorted, and
// whether all passed.
func (r *Readiness) Check() (string, bool) {
	if r == nil {
		return "", true
	}
	r.mu.Lock()
	results := make(map[string]error, len(r.states)+len(r.funcs))
	for name, err := range r.states {
		results[name] = err
	}
	funcs := make(map[string]func() error, len(r.funcs))
	for name, fn := range r.funcs {
		funcs[name] = fn
	}
	r.mu.Unlock()
	for name, fn := range funcs {
		results[name] = fn()
	}
	names := make([]string, 0, len(results))
	for name := range results {
		names = append(names, name)
	}
	slices.Sort(names)
	var b strings.Builder
	ok := true
	for _, name := range names {
		if err := results[name]; err != nil {
			ok = false
			fmt.Fprintf(&b, "[-]%s failed: %v\n", name, err)
		} else {
			fmt.Fprintf(&b, "[+]%s ok\n", name)
		}
	}
	return b.String(), ok
}

// ServeHTTP answers /readyz: 200 when ready, 503 otherwise, listing the
// checks either way.
func (r *Readiness) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	report, ok := r.Check()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, report, "not ready\n")
		return
	}
	fmt.Fprint(w, report, "ok\n")
}
