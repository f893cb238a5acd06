package bed

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// etcd is the bed's single-member etcd, on loopback, data in the bed's dir.
type etcd struct {
	proc      *process
	clientURL string
}

func startEtcd(ctx context.Context, bin, dir string) (*etcd, error) {
	clientPort, err := freePort()
	if err != nil {
		return nil, err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, err
	}
	dataDir := filepath.Join(dir, "etcd-data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	e := &etcd{clientURL: "http://127.0.0.1:" + strconv.Itoa(clientPort)}
	e.proc, err = startProcess(procSpec{
		name: "etcd",
		path: bin,
		args: []string{
			"--data-dir=" + dataDir,
			"--listen-client-url=" + e.clientURL,
			"--listen-peer-url=http://127.0.0.1:" + strconv.Itoa(peerPort),
		},
		dir:     dir,
		logPath: filepath.Join(dir, "etcd.log"),
	})
	if err != nil {
		return nil, err
	}
	err = poll(ctx, 30*time.Second, "etcd healthy", func(ctx context.Context) (bool, error) {
		if err := e.proc.checkAlive(); err != nil {
			return false, err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.clientURL+"/health", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, nil
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK && strings.Contains(string(body), `"health":"true"`), nil
	})
	if err != nil {
		e.proc.kill()
		return nil, fmt.Errorf("etcd: %w", err)
	}
	return e, nil
}
