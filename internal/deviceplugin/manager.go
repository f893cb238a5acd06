package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	configv1 "github.com/gpulet/gpulet/api/config/v1"
	"github.com/gpulet/gpulet/internal/health"
	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/ledger"
	"github.com/gpulet/gpulet/internal/podresources"
)

// HealthSource is where device health comes from; *health.Monitor is one.
type HealthSource interface {
	Subscribe() (<-chan health.Update, func())
}

// Options configure a Manager.
type Options struct {
	// SocketDir is the kubelet's device-plugin directory,
	// <kubelet root>/device-plugins.
	SocketDir string
	Ledger    *ledger.Ledger
	Health    HealthSource
	// CDIName turns a device UUID into its fully qualified CDI name.
	CDIName func(uuid string) string
	// Observer records allocations; may be nil.
	Observer Observer
	// RegisterTimeout bounds one Register call. Default 5s.
	RegisterTimeout time.Duration
}

// Manager owns one server per resource name. Its Run loop is the only
// owner of the servers: plan changes, health changes, ledger changes and
// kubelet restarts all arrive there.
type Manager struct {
	opts Options
	deps *deps

	mu       sync.Mutex
	strategy configv1.DeviceListStrategy
	// next is the latest plan asked for by Update, picked up by Run.
	next    *desired
	updates chan struct{}

	// registered is read by tests and readiness checks.
	regMu      sync.Mutex
	registered map[string]bool
}

type desired struct {
	inv *inventory.Inventory
	cfg Config
}

// NewManager returns a manager; Update gives it something to serve and Run
// serves it.
func NewManager(opts Options) *Manager {
	if opts.RegisterTimeout == 0 {
		opts.RegisterTimeout = 5 * time.Second
	}
	m := &Manager{opts: opts, updates: make(chan struct{}, 1), registered: map[string]bool{}, strategy: configv1.DeviceListStrategyCDICRI}
	m.deps = &deps{ledger: opts.Ledger, cdiName: opts.CDIName, strategy: m.currentStrategy, observe: opts.Observer}
	return m
}

func (m *Manager) currentStrategy() configv1.DeviceListStrategy {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.strategy
}

// Update asks Run to serve inv under cfg. Only resources whose device set
// changed are restarted; the others keep serving, their allocations kept.
func (m *Manager) Update(inv *inventory.Inventory, cfg Config) {
	m.mu.Lock()
	m.next = &desired{inv: inv, cfg: cfg}
	if cfg.DeviceListStrategy != "" {
		m.strategy = cfg.DeviceListStrategy
	}
	m.mu.Unlock()
	select {
	case m.updates <- struct{}{}:
	default:
	}
}

// Registered reports which resources the kubelet has accepted.
func (m *Manager) Registered() map[string]bool {
	m.regMu.Lock()
	defer m.regMu.Unlock()
	out := make(map[string]bool, len(m.registered))
	for k, v := range m.registered {
		out[k] = v
	}
	return out
}

func (m *Manager) setRegistered(name string, ok bool) {
	m.regMu.Lock()
	defer m.regMu.Unlock()
	if ok {
		m.registered[name] = true
	} else {
		delete(m.registered, name)
	}
}

// kubeletSocket is the kubelet's registration socket in the plugin dir.
const kubeletSocket = "kubelet.sock"

// Run serves until ctx ends, then stops every server and removes its
// socket.
func (m *Manager) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithName("deviceplugin")
	ctx = klog.NewContext(ctx, logger)
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", m.opts.SocketDir, err)
	}
	defer func() { _ = watcher.Close() }()
	if err := watcher.Add(m.opts.SocketDir); err != nil {
		return fmt.Errorf("watch the kubelet's device-plugin directory %s: %w", m.opts.SocketDir, err)
	}
	healthCh, cancelHealth := m.opts.Health.Subscribe()
	defer cancelHealth()
	ledgerCh, cancelLedger := m.opts.Ledger.Subscribe()
	defer cancelLedger()

	r := &runner{m: m, servers: map[string]*server{}, states: map[string]health.State{}, backoff: map[string]time.Duration{}}
	defer r.stopAll()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.updates:
			m.mu.Lock()
			next := m.next
			m.mu.Unlock()
			if next != nil {
				r.apply(ctx, next)
			}
		case u := <-healthCh:
			r.states = u.States
			r.publish()
		case <-ledgerCh:
			r.publish()
		case ev, ok := <-watcher.Events:
			if !ok {
				return errors.New("device-plugin directory watch closed")
			}
			r.handleFileEvent(ctx, ev)
		case err, ok := <-watcher.Errors:
			if ok {
				logger.Error(err, "Watching the device-plugin directory")
			}
		case <-retry.C:
		}
		// Registration that failed (kubelet not up yet) is retried with
		// backoff, and at once when kubelet.sock appears.
		if d := r.registerPending(ctx); d > 0 {
			retry.Reset(d)
		}
	}
}

// runner is the state Run owns.
type runner struct {
	m       *Manager
	servers map[string]*server
	inv     *inventory.Inventory
	states  map[string]health.State
	// pending are resources to register, with their next backoff.
	backoff map[string]time.Duration
	nextTry time.Time
}

func (r *runner) apply(ctx context.Context, d *desired) {
	logger := klog.FromContext(ctx)
	plan, warnings := Plan(d.inv, d.cfg)
	for _, w := range warnings {
		logger.Info("Device plugin configuration problem", "problem", w)
	}
	r.inv = d.inv
	want := map[string]Resource{}
	for _, res := range plan {
		want[res.Name] = res
	}
	for name, s := range r.servers {
		if res, ok := want[name]; ok && s.res.equal(res) {
			continue
		}
		logger.Info("Stopping resource server", "resource", name)
		s.stop()
		delete(r.servers, name)
		delete(r.backoff, name)
		r.m.setRegistered(name, false)
	}
	for _, res := range plan {
		if _, ok := r.servers[res.Name]; ok {
			continue
		}
		s := newServer(res, filepath.Join(r.m.opts.SocketDir, socketName(res.Name)), r.m.deps, nvlinks(d.inv))
		if err := s.start(); err != nil {
			logger.Error(err, "Starting resource server", "resource", res.Name)
			continue
		}
		logger.Info("Serving resource", "resource", res.Name, "devices", len(res.Devices), "socket", s.socket)
		r.servers[res.Name] = s
		r.backoff[res.Name] = 0
	}
	r.publish()
	r.nextTry = time.Time{}
}

// publish pushes health and DRA holdings to every server.
func (r *runner) publish() {
	healthy := func(uuid string) bool {
		st, ok := r.states[uuid]
		return !ok || st.Healthy
	}
	withdrawn := func(d Device) bool {
		err := r.m.opts.Ledger.Check(ledger.Record{ID: d.ID, API: ledger.DevicePlugin, Resources: []ledger.Resource{d.resource()}})
		var ce *ledger.ConflictError
		return errors.As(err, &ce) && ce.Holder.API != ledger.DevicePlugin
	}
	for _, s := range r.servers {
		s.setDevices(healthy, withdrawn)
	}
}

// handleFileEvent reacts to the kubelet (re)creating its socket, and to
// one of our sockets disappearing (the kubelet removes them on restart).
func (r *runner) handleFileEvent(ctx context.Context, ev fsnotify.Event) {
	logger := klog.FromContext(ctx)
	base := filepath.Base(ev.Name)
	if base == kubeletSocket && ev.Has(fsnotify.Create) {
		logger.Info("Kubelet socket created: registering every resource again")
		for name := range r.servers {
			r.backoff[name] = 0
		}
		r.nextTry = time.Time{}
		return
	}
	if !ev.Has(fsnotify.Remove) && !ev.Has(fsnotify.Rename) {
		return
	}
	for name, s := range r.servers {
		if s.socket != ev.Name {
			continue
		}
		if _, err := os.Stat(s.socket); err == nil {
			// A late event for a socket since replaced by a new server.
			continue
		}
		logger.Info("Socket removed: serving again and re-registering", "resource", name, "socket", s.socket)
		s.stop()
		fresh := newServer(s.res, s.socket, r.m.deps, nil)
		fresh.alloc = s.alloc
		if err := fresh.start(); err != nil {
			logger.Error(err, "Restarting resource server", "resource", name)
			delete(r.servers, name)
			continue
		}
		r.servers[name] = fresh
		r.m.setRegistered(name, false)
		r.backoff[name] = 0
		r.nextTry = time.Time{}
	}
	r.publish()
}

// registerPending registers every server not yet registered; it returns
// how long to wait before trying again (0: nothing pending).
func (r *runner) registerPending(ctx context.Context) time.Duration {
	if len(r.backoff) == 0 || time.Now().Before(r.nextTry) {
		if len(r.backoff) == 0 {
			return 0
		}
		return time.Until(r.nextTry)
	}
	logger := klog.FromContext(ctx)
	var wait time.Duration
	for name, b := range r.backoff {
		s := r.servers[name]
		if s == nil {
			delete(r.backoff, name)
			continue
		}
		if err := r.m.register(ctx, s); err != nil {
			b = min(max(2*b, time.Second), 30*time.Second)
			r.backoff[name] = b
			logger.Info("Registering with the kubelet failed; will retry", "resource", name, "retryIn", b, "err", err)
			if wait == 0 || b < wait {
				wait = b
			}
			continue
		}
		logger.Info("Registered with the kubelet", "resource", name)
		delete(r.backoff, name)
		r.m.setRegistered(name, true)
	}
	if wait > 0 {
		r.nextTry = time.Now().Add(wait)
	}
	return wait
}

func (r *runner) stopAll() {
	for name, s := range r.servers {
		s.stop()
		r.m.setRegistered(name, false)
	}
}

// register tells the kubelet about one resource server.
func (m *Manager) register(ctx context.Context, s *server) error {
	ctx, cancel := context.WithTimeout(ctx, m.opts.RegisterTimeout)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+filepath.Join(m.opts.SocketDir, kubeletSocket),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial the kubelet: %w", err)
	}
	defer func() { _ = conn.Close() }()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     filepath.Base(s.socket),
		ResourceName: s.res.Name,
		Options:      &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true},
	})
	if err != nil {
		return fmt.Errorf("register %s: %w", s.res.Name, err)
	}
	return nil
}

var unsafeSocketChars = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// socketName is a resource's socket file: "gpulet-nvidia.com_gpu.sock".
func socketName(resource string) string {
	return "gpulet-" + unsafeSocketChars.ReplaceAllString(resource, "_") + ".sock"
}

// nvlinks returns the NVLink count between GPUs by index, from the
// inventory.
func nvlinks(inv *inventory.Inventory) func(i, j int) int {
	byIndex := map[int]inventory.GPU{}
	index := map[string]int{}
	for _, g := range inv.GPUs {
		byIndex[g.Index] = g
		index[g.UUID] = g.Index
	}
	return func(i, j int) int {
		for _, l := range byIndex[i].Links {
			if idx, ok := index[l.PeerUUID]; ok && idx == j {
				return l.NVLinks
			}
		}
		return 0
	}
}

// Held is the device plugin's holdings as the kubelet reports them: for
// every device ID of a resource this manager serves, the ledger record of
// the pod container using it. The agent feeds it the PodResources API's
// answer and hands the result to Ledger.SyncDevicePlugin, which is how
// holdings survive a gpulet restart and are released when pods end (the
// device-plugin API never says so).
func (m *Manager) Held(pods []podresources.Pod) map[string]ledger.Record {
	m.mu.Lock()
	next := m.next
	m.mu.Unlock()
	out := map[string]ledger.Record{}
	if next == nil {
		return out
	}
	plan, _ := Plan(next.inv, next.cfg)
	devices := map[string]map[string]Device{}
	for _, r := range plan {
		byID := make(map[string]Device, len(r.Devices))
		for _, d := range r.Devices {
			byID[d.ID] = d
		}
		devices[r.Name] = byID
	}
	for _, p := range pods {
		for _, c := range p.Containers {
			for _, ds := range c.Devices {
				byID, ok := devices[ds.ResourceName]
				if !ok {
					continue
				}
				for _, id := range ds.IDs {
					d, ok := byID[id]
					if !ok {
						continue
					}
					out[id] = ledger.Record{
						ID: id, API: ledger.DevicePlugin, Namespace: p.Namespace, Name: p.Name, Pod: p.Name, Container: c.Name,
						Resources: []ledger.Resource{d.resource()},
					}
				}
			}
		}
	}
	return out
}
