package gpusim

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

func TestProcTree(t *testing.T) {
	root := filepath.Join(t.TempDir(), "proc")
	st := mustParse(t, `
machine: dgx-h100
gpus: 2
devices:
- index: 0
  processes:
  - {pid: 100, name: train.py, usedMemoryMiB: 1000, cgroup: /kubepods/besteffort/pod1234/cri-containerd-abcd}
  - {pid: 101, type: graphics, usedMemoryMiB: 24}
- index: 1
  processes:
  - {pid: 100, name: train.py, usedMemoryMiB: 3000, cgroup: /kubepods/besteffort/pod1234/cri-containerd-abcd}
`)
	sim, lib := startSim(t, st, WithProcRoot(root))
	read := func(p string) string {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	if got := read("100/cgroup"); got != "0::/kubepods/besteffort/pod1234/cri-containerd-abcd\n" {
		t.Errorf("100/cgroup = %q", got)
	}
	if got := read("100/comm"); got != "train.py\n" {
		t.Errorf("100/comm = %q", got)
	}
	if got := read("101/cgroup"); got != "0::/\n" {
		t.Errorf("101/cgroup = %q", got)
	}
	if name, r := lib.SystemGetProcessName(101); r != nvml.SUCCESS || name != "python3" {
		t.Errorf("SystemGetProcessName(101) = %q, %v", name, r)
	}
	if _, r := lib.SystemGetProcessName(999); r != nvml.ERROR_NOT_FOUND {
		t.Errorf("SystemGetProcessName(999): %v", r)
	}

	d := handle(t, lib, 0)
	compute, _ := d.GetComputeRunningProcesses()
	graphics, _ := d.GetGraphicsRunningProcesses()
	if len(compute) != 1 || compute[0].Pid != 100 || compute[0].UsedGpuMemory != 1000<<20 || compute[0].GpuInstanceId != 0xFFFFFFFF {
		t.Errorf("compute processes %+v", compute)
	}
	if len(graphics) != 1 || graphics[0].Pid != 101 {
		t.Errorf("graphics processes %+v", graphics)
	}
	if mem, _ := d.GetMemoryInfo_v2(); mem.Used != 1024<<20 {
		t.Errorf("memory used %d, want the processes' 1024 MiB", mem.Used)
	}

	// A process that ends leaves the tree.
	next := sim.State()
	next.Devices[0].Processes = next.Devices[0].Processes[:1]
	if err := sim.Apply(next); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "101")); !os.IsNotExist(err) {
		t.Errorf("pid 101 still in the tree: %v", err)
	}
	if err := sim.WriteProcTree("/proc"); err == nil {
		t.Error("WriteProcTree(/proc) was not refused")
	}
}

func TestXIDOnMIGInstance(t *testing.T) {
	base := "machine: dgx-h100\ngpus: 1\ndevices:\n- index: 0\n  migEnabled: true\n  mig: [{profile: 4g.40gb}]\n"
	sim, lib := startSim(t, mustParse(t, base))
	set := register(t, lib, nvml.EventTypeXidCriticalError, 0)
	if err := sim.Apply(mustParse(t, base+"  xids: [{id: m1, xid: 43, gpuInstance: 1, computeInstance: 0}]\n")); err != nil {
		t.Fatal(err)
	}
	ev := expectEvent(t, lib, set, 0, nvml.EventTypeXidCriticalError, 43)
	if ev.GpuInstanceId != 1 || ev.ComputeInstanceId != 0 {
		t.Errorf("event instance ids %d/%d, want 1/0", ev.GpuInstanceId, ev.ComputeInstanceId)
	}
}
