package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	"k8s.io/klog/v2"
)

// DefaultAddress is where the endpoint listens by default: 9400 is
// dcgm-exporter's, and both may run on one node.
const DefaultAddress = ":9402"

// ServerOptions configure the HTTP endpoint.
type ServerOptions struct {
	// Address is the listen address. Default DefaultAddress.
	Address string
	// WebConfigFile is an exporter-toolkit web config file (TLS, basic
	// auth, headers, rate limit), re-read on every request as the toolkit
	// does. Empty serves plain HTTP without auth.
	WebConfigFile string
	// Devices are the device metrics, served from a cache renewed with
	// each snapshot (nil: none).
	Devices *Collector
	// Gatherer is everything else /metrics serves.
	Gatherer prometheus.Gatherer
	// MaxAge is how long a rendered /metrics body is reused when Devices
	// is set (Gatherer's metrics may be that much old; the device metrics
	// change only with a snapshot anyway). Default 1s: set it to the
	// sampler's interval.
	MaxAge time.Duration
	// Registerer gets the handler's own request metrics (optional).
	Registerer prometheus.Registerer
	// Readiness answers /readyz (nil: always ready).
	Readiness *Readiness
	// Version is shown on the landing page.
	Version string
}

// Server is the Prometheus endpoint: /metrics, /healthz (the process
// answers), /readyz (Readiness), and a landing page at /. With a web
// config file, every path is behind its TLS and basic auth: give the
// kubelet's probes the Authorization header, or probe over TCP.
type Server struct {
	opts     ServerOptions
	listener net.Listener
	srv      *http.Server
}

// NewServer checks the web config file and listens, so that a bad file or
// a taken port is an error at start, naming the file or address.
func NewServer(ctx context.Context, opts ServerOptions) (*Server, error) {
	if opts.Address == "" {
		opts.Address = DefaultAddress
	}
	if opts.Gatherer == nil {
		return nil, errors.New("metrics server: no gatherer")
	}
	if opts.WebConfigFile != "" {
		if err := web.Validate(opts.WebConfigFile); err != nil {
			return nil, fmt.Errorf("web config file %s: %w", opts.WebConfigFile, err)
		}
	}
	mux := http.NewServeMux()
	metrics := promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	if opts.Devices != nil {
		devices := prometheus.NewRegistry()
		if err := devices.Register(opts.Devices); err != nil {
			return nil, fmt.Errorf("metrics server: %w", err)
		}
		maxAge := opts.MaxAge
		if maxAge <= 0 {
			maxAge = time.Second
		}
		metrics = newMetricsHandler(klog.FromContext(ctx).WithName("metrics"), devices,
			deviceVersion(opts.Devices.snaps, opts.Devices.health), opts.Gatherer, maxAge)
	}
	if opts.Registerer != nil {
		metrics = promhttp.InstrumentMetricHandler(opts.Registerer, metrics)
	}
	mux.Handle("/metrics", metrics)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, "ok\n")
	})
	mux.Handle("/readyz", opts.Readiness)
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "gpulet",
		Description: "Kubernetes GPU node agent: device telemetry, health and who holds which GPU",
		Version:     opts.Version,
		Links: []web.LandingLinks{
			{Address: "/metrics", Text: "Metrics"},
			{Address: "/healthz", Text: "Liveness"},
			{Address: "/readyz", Text: "Readiness"},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("metrics server: landing page: %w", err)
	}
	mux.Handle("/", landing)

	l, err := net.Listen("tcp", opts.Address)
	if err != nil {
		return nil, fmt.Errorf("metrics server: listen on %s: %w", opts.Address, err)
	}
	return &Server{
		opts:     opts,
		listener: l,
		srv:      &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
	}, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.listener.Addr() }

// Run serves until ctx ends, then shuts down, letting scrapes in flight
// finish for up to five seconds.
func (s *Server) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithName("metrics")
	webConfig := s.opts.WebConfigFile
	flags := &web.FlagConfig{WebConfigFile: &webConfig}
	handler := logr.ToSlogHandler(logger)
	// Failed handshakes and the like are the client's problem: debug level.
	s.srv.ErrorLog = slog.NewLogLogger(handler, slog.LevelDebug)
	errc := make(chan error, 1)
	go func() {
		errc <- web.Serve(s.listener, s.srv, flags, slog.New(handler))
	}()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("metrics server on %s: %w", s.Addr(), err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(shutdown)
	if serveErr := <-errc; !errors.Is(serveErr, http.ErrServerClosed) && err == nil {
		err = serveErr
	}
	return err
}
