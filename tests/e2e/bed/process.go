package bed

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// procSpec says how to run one child process of the bed.
type procSpec struct {
	name    string
	path    string
	args    []string
	dir     string // working directory; must exist
	logPath string // stdout and stderr, appended across restarts
	env     []string
	attr    *syscall.SysProcAttr
}

// process is a running child. Its log file is kept open in append mode so a
// restart adds to the same file, after a marker line.
type process struct {
	spec procSpec
	cmd  *exec.Cmd
	done chan struct{}

	mu  sync.Mutex
	err error // exit error, valid once done is closed
}

func startProcess(spec procSpec) (*process, error) {
	logf, err := os.OpenFile(spec.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", spec.name, err)
	}
	fmt.Fprintf(logf, "===== %s: start %s %s\n", time.Now().Format(time.RFC3339Nano), spec.path, strings.Join(spec.args, " "))

	cmd := exec.Command(spec.path, spec.args...)
	cmd.Dir = spec.dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), spec.env...)
	attr := spec.attr
	if attr == nil {
		attr = &syscall.SysProcAttr{}
	}
	// Die with the test process, so a crashed test leaves no component behind.
	attr.Pdeathsig = syscall.SIGKILL
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", spec.name, err)
	}
	p := &process{spec: spec, cmd: cmd, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(logf, "===== %s: exit %v\n", time.Now().Format(time.RFC3339Nano), err)
		logf.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended, and with which error.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs.
func (p *process) stop(grace time.Duration) {
	if done, _ := p.exited(); done {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

// kill sends SIGKILL and waits for the process to be reaped.
func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// errExited says a child ended while the bed waited for it to be ready.
var errExited = errors.New("process exited")

// checkAlive returns errExited (with the exit status) if the process ended.
func (p *process) checkAlive() error {
	if done, err := p.exited(); done {
		return fmt.Errorf("%s: %w (%w); see %s", p.spec.name, errExited, err, p.spec.logPath)
	}
	return nil
}

// FreePort returns a free loopback TCP port, for a test that must tell a
// process where to listen (gpulet's --metrics-address).
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// freePort asks the kernel for a free loopback TCP port. Another process may
// take it before the component binds it; the bed accepts that small race.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tail returns the last n lines of a file, for failure reports.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	data = bytes.TrimRight(data, "\n")
	lines := bytes.Split(data, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
