package gpusim

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

// WriteProcTree writes a fake proc tree for the processes the state lists
// on any GPU: <root>/<pid>/cgroup in cgroup v2 form ("0::<path>\n", empty
// path "/" when the state gives none) and <root>/<pid>/comm. Numeric
// directories under root for processes no longer listed are removed, so
// root must be a directory of its own (never /proc).
func (s *Simulator) WriteProcTree(root string) error {
	defer s.lock()()
	return s.writeProcTreeLocked(root)
}

// writeProcTreeLocked writes the tree under s.mu, so that writers of
// successive states do not interleave.
func (s *Simulator) writeProcTreeLocked(root string) error {
	if root == "" {
		return nil
	}
	procs := map[uint32]Process{}
	for _, d := range s.devices {
		for _, p := range d.cfg.Processes {
			procs[p.PID] = p
		}
	}
	return writeProcTree(root, procs)
}

func writeProcTree(root string, procs map[uint32]Process) error {
	clean := filepath.Clean(root)
	if clean == "/" || clean == "/proc" {
		return fmt.Errorf("write proc tree: refusing to write into %q; give a directory of its own", root)
	}
	if err := os.MkdirAll(clean, 0o755); err != nil {
		return fmt.Errorf("write proc tree: %w", err)
	}
	pids := make([]uint32, 0, len(procs))
	for pid := range procs {
		pids = append(pids, pid)
	}
	sort.Slice(pids, func(i, j int) bool { return pids[i] < pids[j] })
	for _, pid := range pids {
		p := procs[pid]
		dir := filepath.Join(clean, strconv.FormatUint(uint64(pid), 10))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("write proc tree: %w", err)
		}
		cg := p.Cgroup
		if cg == "" {
			cg = "/"
		}
		if err := writeFileAtomic(filepath.Join(dir, "cgroup"), []byte("0::"+cg+"\n"), 0o644); err != nil {
			return fmt.Errorf("write proc tree for pid %d: %w", pid, err)
		}
		if err := writeFileAtomic(filepath.Join(dir, "comm"), []byte(processName(p)+"\n"), 0o644); err != nil {
			return fmt.Errorf("write proc tree for pid %d: %w", pid, err)
		}
	}
	entries, err := os.ReadDir(clean)
	if err != nil {
		return fmt.Errorf("write proc tree: %w", err)
	}
	for _, e := range entries {
		pid, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil || !e.IsDir() {
			continue
		}
		if _, ok := procs[uint32(pid)]; !ok {
			if err := os.RemoveAll(filepath.Join(clean, e.Name())); err != nil {
				return fmt.Errorf("write proc tree: %w", err)
			}
		}
	}
	return nil
}
