package cdi

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"tags.cncf.io/container-device-interface/specs-go"
)

// nvidiaMajor is the character-device major of the NVIDIA driver's GPU and
// control nodes, fixed by the driver (nvidia-uvm and nvidia-caps get
// dynamic majors).
const nvidiaMajor = 195

// migMinorsFile lists the MIG capability nodes' minors, in the driver's
// /proc.
const migMinorsFile = "proc/driver/nvidia-caps/mig-minors"

// fallbackCommon builds the common edits without nvcdi: the control nodes
// CUDA needs. No libraries: a runtime hook that reads
// NVIDIA_VISIBLE_DEVICES brings those.
func (g *Generator) fallbackCommon() *specs.ContainerEdits {
	e := &specs.ContainerEdits{}
	for _, p := range []string{"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"} {
		if n, ok := g.fallbackNode(p); ok {
			e.DeviceNodes = append(e.DeviceNodes, n)
		}
	}
	return e
}

// fallbackNode describes the device node path, found under the dev root.
// A character device there gives its numbers; a missing node is still
// named (the runtime resolves it when the container is created; nvidia-uvm
// appears on first use), with the driver's fixed numbers where they are
// known. A plain file (a mock driver root written without mknod) is no
// device: ok is false unless the numbers are known.
func (g *Generator) fallbackNode(path string) (*specs.DeviceNode, bool) {
	n := &specs.DeviceNode{Path: path, HostPath: filepath.Join(g.opts.DevRoot, path)}
	var st unix.Stat_t
	err := unix.Stat(n.HostPath, &st)
	major, minor, known := knownNumbers(path)
	switch {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR:
		dev := uint64(st.Rdev) //nolint:unconvert // Rdev is uint32 on some platforms.
		n.Type, n.Major, n.Minor = "c", int64(unix.Major(dev)), int64(unix.Minor(dev))
	case known:
		n.Type, n.Major, n.Minor = "c", major, minor
	case err == nil:
		return nil, false
	}
	return n, true
}

// knownNumbers returns the fixed device numbers of the driver's GPU and
// control nodes.
func knownNumbers(path string) (major, minor int64, ok bool) {
	if m, ok := gpuMinor(path); ok {
		return nvidiaMajor, int64(m), true
	}
	switch path {
	case "/dev/nvidiactl":
		return nvidiaMajor, 255, true
	case "/dev/nvidia-modeset":
		return nvidiaMajor, 254, true
	}
	return 0, 0, false
}

// migMinors maps MIG capabilities ("gpu0/gi2/access",
// "gpu0/gi2/ci0/access") to the minors of their /dev/nvidia-caps nodes.
type migMinors struct {
	caps map[string]int
	// path is the file read; err says why none could be.
	path string
	err  error
}

// readMigMinors reads the driver root's MIG minors (the simulator writes
// one there), else the host's.
func (g *Generator) readMigMinors() *migMinors {
	var errs []error
	for _, p := range []string{filepath.Join(g.opts.DriverRoot, migMinorsFile), "/" + migMinorsFile} {
		data, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		caps, err := parseMigMinors(data)
		if err != nil {
			return &migMinors{path: p, err: fmt.Errorf("%s: %w", p, err)}
		}
		return &migMinors{caps: caps, path: p}
	}
	return &migMinors{err: fmt.Errorf("no MIG capability minors: %w", errors.Join(errs...))}
}

// parseMigMinors parses lines such as "gpu0/gi2/ci0/access 21".
func parseMigMinors(data []byte) (map[string]int, error) {
	caps := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 2 {
			return nil, fmt.Errorf("line %d: %q: want \"<capability> <minor>\"", line, sc.Text())
		}
		minor, err := strconv.Atoi(fields[1])
		if err != nil || minor < 0 {
			return nil, fmt.Errorf("line %d: minor %q is not a number", line, fields[1])
		}
		caps[fields[0]] = minor
	}
	return caps, sc.Err()
}
