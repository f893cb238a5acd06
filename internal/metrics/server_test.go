package metrics

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"
)

// selfSigned writes a certificate for 127.0.0.1 and its key into dir and
// returns a pool that trusts it.
func selfSigned(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "gpulet-test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("tls.crt", "CERTIFICATE", der)
	write("tls.key", "EC PRIVATE KEY", keyDER)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}

// startServer runs a server until the test ends.
func startServer(t *testing.T, opts ServerOptions) string {
	t.Helper()
	opts.Address = "127.0.0.1:0"
	srv, err := NewServer(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	return srv.Addr().String()
}

func TestServerTLSAndBasicAuth(t *testing.T) {
	dir := t.TempDir()
	pool := selfSigned(t, dir)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webConfig := filepath.Join(dir, "web-config.yml")
	if err := os.WriteFile(webConfig, fmt.Appendf(nil, `tls_server_config:
  cert_file: tls.crt
  key_file: tls.key
basic_auth_users:
  prometheus: %s
`, hash), 0o600); err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	ops := NewOps(reg)
	ops.ObserveConfigReload(nil)
	ready := NewReadiness(CheckNVML)
	addr := startServer(t, ServerOptions{WebConfigFile: webConfig, Gatherer: reg, Registerer: reg, Readiness: ready})
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}

	get := func(scheme, path, user, pass string) (int, string, error) {
		req, err := http.NewRequest(http.MethodGet, scheme+"://"+addr+path, nil)
		if err != nil {
			return 0, "", err
		}
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer func() { _ = resp.Body.Close() }()
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), err
	}

	tests := []struct {
		name       string
		scheme     string
		path       string
		user, pass string
		before     func()
		wantCode   int
		wantBody   string
		wantErr    bool
	}{
		{name: "metrics", scheme: "https", path: "/metrics", user: "prometheus", pass: "s3cret", wantCode: http.StatusOK, wantBody: `gpulet_config_reloads_total{result="ok"} 1`},
		{name: "wrong password", scheme: "https", path: "/metrics", user: "prometheus", pass: "guess", wantCode: http.StatusUnauthorized},
		{name: "unknown user", scheme: "https", path: "/metrics", user: "mallory", pass: "s3cret", wantCode: http.StatusUnauthorized},
		{name: "no credentials", scheme: "https", path: "/metrics", wantCode: http.StatusUnauthorized},
		{name: "plain http is refused", scheme: "http", path: "/metrics", user: "prometheus", pass: "s3cret", wantCode: http.StatusBadRequest},
		{name: "healthz", scheme: "https", path: "/healthz", user: "prometheus", pass: "s3cret", wantCode: http.StatusOK, wantBody: "ok"},
		{name: "not ready", scheme: "https", path: "/readyz", user: "prometheus", pass: "s3cret", wantCode: http.StatusServiceUnavailable, wantBody: "[-]nvml failed: not yet"},
		{name: "ready", scheme: "https", path: "/readyz", user: "prometheus", pass: "s3cret", before: func() { ready.Set(CheckNVML, nil) }, wantCode: http.StatusOK, wantBody: "[+]nvml ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.before != nil {
				tt.before()
			}
			code, body, err := get(tt.scheme, tt.path, tt.user, tt.pass)
			if err != nil {
				t.Fatal(err)
			}
			if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Errorf("GET %s = %d %q, want %d containing %q", tt.path, code, body, tt.wantCode, tt.wantBody)
			}
		})
	}
}

func TestServerStartErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "no-such-web-config.yml")
	badYAML := filepath.Join(dir, "bad.yml")
	if err := os.WriteFile(badYAML, []byte("basic_auth_users:\n  prometheus: not-a-bcrypt-hash\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = taken.Close() }()

	tests := []struct {
		name string
		opts ServerOptions
		want []string
	}{
		{name: "missing web config file", opts: ServerOptions{Address: "127.0.0.1:0", WebConfigFile: missing}, want: []string{missing, "no such file"}},
		{name: "bad password hash", opts: ServerOptions{Address: "127.0.0.1:0", WebConfigFile: badYAML}, want: []string{badYAML}},
		{name: "address taken", opts: ServerOptions{Address: taken.Addr().String()}, want: []string{taken.Addr().String()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Gatherer = prometheus.NewRegistry()
			_, err := NewServer(context.Background(), tt.opts)
			if err == nil {
				t.Fatal("NewServer succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v, want it to name %q", err, w)
				}
			}
		})
	}
}

func TestServerPlainHTTPWithoutWebConfig(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewOps(reg)
	addr := startServer(t, ServerOptions{Gatherer: reg})
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "gpulet_allocations_total") {
		t.Errorf("GET /metrics = %d %.200q", resp.StatusCode, body)
	}
}

func TestReadinessFuncsAndNil(t *testing.T) {
	var nilReady *Readiness
	nilReady.Set(CheckNVML, errors.New("ignored"))
	if _, ok := nilReady.Check(); !ok {
		t.Error("a nil Readiness is ready")
	}
	r := NewReadiness()
	registered := false
	r.AddFunc(CheckKubelet, func() error {
		if !registered {
			return errors.New("device plugin not registered")
		}
		return nil
	})
	if report, ok := r.Check(); ok || !strings.Contains(report, "device plugin not registered") {
		t.Errorf("Check = %q, %v; want not ready, saying why", report, ok)
	}
	registered = true
	if report, ok := r.Check(); !ok {
		t.Errorf("Check = %q, not ready", report)
	}
}
