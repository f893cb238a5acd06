package gpusim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Character-device majors of the simulated driver. nvidia is fixed at 195;
// the kernel hands nvidia-uvm and nvidia-caps dynamic majors, these are
// typical values.
const (
	uvmMajor  = 510
	capsMajor = 511
)

// MIG capability minors follow the driver's mig-minors numbering: config
// 1, monitor 2, then for each GPU 15 GPU instances of 1 + 8 entries (the
// instance's access cap and its 8 compute instances').
const (
	migGIsPerGPU = 15
	migCIsPerGI  = 8
)

func giCapMinor(gpu, gi int) int     { return 3 + gpu*migGIsPerGPU*(1+migCIsPerGI) + gi*(1+migCIsPerGI) }
func ciCapMinor(gpu, gi, ci int) int { return giCapMinor(gpu, gi) + 1 + ci }

// driverLibraries are the driver's user-space libraries as stand-ins:
// name (without the .so.<version> suffix) and SONAME ("" for the versioned
// file name itself).
var driverLibraries = []struct{ name, soname string }{
	{"libcuda", "libcuda.so.1"},
	{"libcudadebugger", "libcudadebugger.so.1"},
	{"libnvidia-ml", "libnvidia-ml.so.1"},
	{"libnvidia-ptxjitcompiler", "libnvidia-ptxjitcompiler.so.1"},
	{"libnvidia-nvvm", "libnvidia-nvvm.so.4"},
	{"libnvidia-opencl", "libnvidia-opencl.so.1"},
	{"libnvidia-allocator", "libnvidia-allocator.so.1"},
	{"libnvidia-cfg", "libnvidia-cfg.so.1"},
	{"libnvidia-encode", "libnvidia-encode.so.1"},
	{"libnvcuvid", "libnvcuvid.so.1"},
	{"libnvidia-gpucomp", ""},
	{"libnvidia-pkcs11-openssl3", ""},
}

// driverBinaries are stand-ins for the driver's tools.
var driverBinaries = []string{
	"nvidia-smi", "nvidia-debugdump", "nvidia-persistenced",
	"nvidia-cuda-mps-control", "nvidia-cuda-mps-server",
}

// DriverRoot describes a mock driver root.
type DriverRoot struct {
	// Dir is the root; paths below are inside it.
	Dir string
	// DriverVersion is the version suffix of the libraries.
	DriverVersion string
	// LibDir holds the libraries, e.g. /usr/lib/x86_64-linux-gnu.
	LibDir string
	// DeviceNodes lists the device nodes, e.g. /dev/nvidia0.
	DeviceNodes []string
	// CharDevices is true when the device nodes are real character
	// devices. Creating those needs CAP_MKNOD; without it they are plain
	// files, which nvcdi ignores (its specs then lack device nodes).
	CharDevices bool
}

// WriteDriverRoot writes a mock driver root for the state's node to dir
// (see MakeDriverRoot) and logs when device nodes had to be plain files.
func WriteDriverRoot(dir string, st *State) error {
	root, err := MakeDriverRoot(dir, st)
	if err != nil {
		return err
	}
	if !root.CharDevices {
		klog.Background().Info("Mock driver root has plain files for device nodes: creating character devices was not permitted; CDI specs from it will lack device nodes", "dir", dir)
	}
	return nil
}

// MakeDriverRoot writes what NVIDIA's nvcdi (mode nvml) needs to build a
// full CDI spec from the simulator: device nodes (/dev/nvidia<minor>,
// nvidiactl, nvidia-uvm, nvidia-uvm-tools, nvidia-modeset and the MIG
// capability nodes under /dev/nvidia-caps), driver library stand-ins
// lib*.so.<driver version> (minimal ELF files carrying their SONAME, with
// the usual SONAME and .so symlinks), tool stand-ins under /usr/bin, GSP
// firmware stand-ins, and the MIG capability files under /proc/driver.
// It is idempotent. Device nodes are character devices when mknod is
// permitted (as root) and plain files otherwise; DriverRoot says which.
//
// Note that nvcdi v1.20.1 reads MIG minors from the host's
// /proc/driver/nvidia-caps/mig-minors, not from the driver root, so MIG
// device specs need that file on the host; the copy here serves nvcdi's
// mig-caps mode and anyone reading the root.
func MakeDriverRoot(dir string, st *State) (*DriverRoot, error) {
	if err := st.Validate(); err != nil {
		return nil, err
	}
	m, err := lookupMachine(st.Machine)
	if err != nil {
		return nil, err
	}
	version := st.DriverVersion
	if version == "" {
		version = m.driverVersion
	}
	root := &DriverRoot{Dir: dir, DriverVersion: version, CharDevices: true}
	w := &rootWriter{root: root}

	nodes := []struct {
		path         string
		major, minor uint32
	}{
		{"/dev/nvidiactl", nvidiaMajor, 255},
		{"/dev/nvidia-modeset", nvidiaMajor, 254},
		{"/dev/nvidia-uvm", uvmMajor, 0},
		{"/dev/nvidia-uvm-tools", uvmMajor, 1},
		{"/dev/nvidia-caps/nvidia-cap1", capsMajor, 1},
		{"/dev/nvidia-caps/nvidia-cap2", capsMajor, 2},
	}
	for i := range st.gpuCount() {
		nodes = append(nodes, struct {
			path         string
			major, minor uint32
		}{fmt.Sprintf("/dev/nvidia%d", i), nvidiaMajor, uint32(i)})
	}
	for _, n := range nodes {
		w.charDevice(n.path, n.major, n.minor)
	}

	var minors strings.Builder
	minors.WriteString("config 1\nmonitor 2\n")
	w.file("/proc/driver/nvidia/capabilities/mig/config", "DeviceFileMinor: 1\nDeviceFileMode: 256\nDeviceFileModify: 1\n", 0o444)
	w.file("/proc/driver/nvidia/capabilities/mig/monitor", "DeviceFileMinor: 2\nDeviceFileMode: 292\nDeviceFileModify: 1\n", 0o444)
	for gpu := range st.gpuCount() {
		for gi := range migGIsPerGPU {
			fmt.Fprintf(&minors, "gpu%d/gi%d/access %d\n", gpu, gi, giCapMinor(gpu, gi))
			w.charDevice(fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", giCapMinor(gpu, gi)), capsMajor, uint32(giCapMinor(gpu, gi)))
			for ci := range migCIsPerGI {
				fmt.Fprintf(&minors, "gpu%d/gi%d/ci%d/access %d\n", gpu, gi, ci, ciCapMinor(gpu, gi, ci))
				w.charDevice(fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", ciCapMinor(gpu, gi, ci)), capsMajor, uint32(ciCapMinor(gpu, gi, ci)))
			}
		}
	}
	w.file("/proc/driver/nvidia-caps/mig-minors", minors.String(), 0o444)
	w.file("/proc/driver/nvidia/version", fmt.Sprintf("NVRM version: NVIDIA UNIX Open Kernel Module for %s  %s  (gpulet GPU simulator)\n", runtime.GOARCH, version), 0o444)

	root.LibDir = "/usr/lib/x86_64-linux-gnu"
	if runtime.GOARCH == "arm64" {
		root.LibDir = "/usr/lib/aarch64-linux-gnu"
	}
	for _, lib := range driverLibraries {
		file := lib.name + ".so." + version
		soname := lib.soname
		if soname == "" {
			soname = file
		}
		w.bytes(filepath.Join(root.LibDir, file), stubSharedObject(soname), 0o755)
		if soname != file {
			w.symlink(filepath.Join(root.LibDir, soname), file)
		}
	}
	w.symlink(filepath.Join(root.LibDir, "libcuda.so"), "libcuda.so.1")
	w.symlink(filepath.Join(root.LibDir, "libnvidia-ml.so"), "libnvidia-ml.so.1")
	for _, bin := range driverBinaries {
		w.file("/usr/bin/"+bin, "#!/bin/sh\necho \""+bin+": stand-in from the gpulet GPU simulator\" >&2\nexit 1\n", 0o755)
	}
	for _, fw := range []string{"gsp_ga10x.bin", "gsp_tu10x.bin"} {
		w.file(filepath.Join("/lib/firmware/nvidia", version, fw), "", 0o444)
	}
	if w.err != nil {
		return nil, fmt.Errorf("write mock driver root %s: %w", dir, w.err)
	}
	return root, nil
}

// rootWriter writes files under a driver root, keeping the first error.
type rootWriter struct {
	root *DriverRoot
	err  error
}

func (w *rootWriter) path(p string) string { return filepath.Join(w.root.Dir, p) }

func (w *rootWriter) mkdir(p string) bool {
	if w.err != nil {
		return false
	}
	if err := os.MkdirAll(filepath.Dir(w.path(p)), 0o755); err != nil {
		w.err = err
		return false
	}
	return true
}

func (w *rootWriter) file(p, content string, mode os.FileMode) { w.bytes(p, []byte(content), mode) }

// bytes writes a file unless it already holds content. No fsync: a driver
// root is scratch that MakeDriverRoot rewrites when in doubt.
func (w *rootWriter) bytes(p string, content []byte, mode os.FileMode) {
	if !w.mkdir(p) {
		return
	}
	full := w.path(p)
	if cur, err := os.ReadFile(full); err == nil && string(cur) == string(content) {
		w.err = os.Chmod(full, mode)
		return
	}
	_ = os.Remove(full) // a read-only file from an earlier run
	if w.err = os.WriteFile(full, content, mode); w.err == nil {
		w.err = os.Chmod(full, mode) // past the umask
	}
}

func (w *rootWriter) symlink(p, target string) {
	if !w.mkdir(p) {
		return
	}
	full := w.path(p)
	if cur, err := os.Readlink(full); err == nil && cur == target {
		return
	}
	_ = os.Remove(full)
	w.err = os.Symlink(target, full)
}

// charDevice creates a character device, or a plain file where mknod is
// not permitted (and from then on, so the root is consistent).
func (w *rootWriter) charDevice(p string, major, minor uint32) {
	if !w.mkdir(p) {
		return
	}
	if strings.HasPrefix(p, "/dev/nvidia") && !strings.HasPrefix(p, "/dev/nvidia-caps/") {
		w.root.DeviceNodes = append(w.root.DeviceNodes, p)
	}
	full := w.path(p)
	dev := unix.Mkdev(major, minor)
	var st unix.Stat_t
	if err := unix.Lstat(full, &st); err == nil {
		if st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == dev {
			return
		}
		if st.Mode&unix.S_IFMT == unix.S_IFREG && !w.root.CharDevices {
			return
		}
		if err := os.Remove(full); err != nil {
			w.err = err
			return
		}
	}
	if w.root.CharDevices {
		err := unix.Mknod(full, unix.S_IFCHR|0o666, int(dev))
		if err == nil {
			w.err = os.Chmod(full, 0o666)
			return
		}
		if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EACCES) {
			w.err = err
			return
		}
		w.root.CharDevices = false
	}
	w.err = os.WriteFile(full, nil, 0o666)
}
