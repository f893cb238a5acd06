package metrics

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// PodContainer is the pod and container a process runs in, as its cgroup
// names them.
type PodContainer struct {
	// PodUID is the pod's UID with dashes ("8f1c2c1e-2a1b-...").
	PodUID string
	// ContainerID is the runtime's container ID, without a runtime prefix.
	ContainerID string
}

// ParseCgroup finds the kubelet pod and container in the contents of a
// /proc/<pid>/cgroup file. It knows the kubelet's cgroup layouts:
//
//	cgroupfs driver:  /kubepods/besteffort/pod<uid>/<container id>
//	                  /kubepods/pod<uid>/<container id>  (guaranteed QoS)
//	systemd driver:   /kubepods.slice/kubepods-burstable.slice/
//	                  kubepods-burstable-pod<uid_with_underscores>.slice/
//	                  cri-containerd-<id>.scope  (or crio-, docker-)
//
// under any parent (kind and nested nodes put them deeper). The cgroup v2
// line ("0::") is preferred; on v1 the first line naming a pod wins.
func ParseCgroup(data []byte) (PodContainer, bool) {
	var fallback PodContainer
	found := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path; the path may hold colons.
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		pc, ok := parseCgroupPath(parts[2])
		if !ok {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			return pc, true
		}
		if !found {
			fallback, found = pc, true
		}
	}
	return fallback, found
}

// parseCgroupPath finds the pod segment of a cgroup path and the container
// segment below it.
func parseCgroupPath(path string) (PodContainer, bool) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for i, seg := range segs {
		uid, ok := podUID(seg)
		if !ok {
			continue
		}
		pc := PodContainer{PodUID: uid}
		if i+1 < len(segs) {
			pc.ContainerID = containerID(segs[i+1])
		}
		return pc, true
	}
	return PodContainer{}, false
}

// podUID recognises "pod<uid>" (cgroupfs) and "<prefix>-pod<uid>.slice"
// (systemd, dashes of the UID turned into underscores).
func podUID(seg string) (string, bool) {
	var raw string
	switch {
	case strings.HasSuffix(seg, ".slice"):
		i := strings.LastIndex(seg, "-pod")
		if i < 0 {
			return "", false
		}
		raw = strings.TrimSuffix(seg[i+len("-pod"):], ".slice")
	case strings.HasPrefix(seg, "pod"):
		raw = seg[len("pod"):]
	default:
		return "", false
	}
	uid := strings.ReplaceAll(raw, "_", "-")
	// A UID is 32 hex digits, with dashes for API pods; a static pod's is
	// a bare hash.
	digits := 0
	for _, r := range uid {
		switch {
		case r >= '0' && r <= '9', r >= 'a' && r <= 'f', r >= 'A' && r <= 'F':
			digits++
		case r == '-':
		default:
			return "", false
		}
	}
	if digits != 32 {
		return "", false
	}
	return uid, true
}

// containerID strips the runtime's decoration from a container segment:
// "cri-containerd-<id>.scope", "crio-<id>.scope", "docker-<id>.scope", or
// the bare id of the cgroupfs driver.
func containerID(seg string) string {
	if s, ok := strings.CutSuffix(seg, ".scope"); ok {
		if i := strings.LastIndexByte(s, '-'); i >= 0 {
			return s[i+1:]
		}
		return s
	}
	return seg
}

// procReader reads processes' cgroups under a proc root, remembering each
// PID's answer while the PID stays in use (a process does not change pods).
type procReader struct {
	root  string
	cache map[uint32]procEntry
}

type procEntry struct {
	pc PodContainer
	ok bool
}

func newProcReader(root string) *procReader {
	return &procReader{root: root, cache: make(map[uint32]procEntry)}
}

// lookup returns the pod and container of a process; false for a process
// outside any pod, or one that has exited.
func (r *procReader) lookup(pid uint32) (PodContainer, bool) {
	if e, ok := r.cache[pid]; ok {
		return e.pc, e.ok
	}
	data, err := os.ReadFile(filepath.Join(r.root, strconv.FormatUint(uint64(pid), 10), "cgroup"))
	if err != nil {
		// Gone, or not visible: try again next time it is listed.
		return PodContainer{}, false
	}
	pc, ok := ParseCgroup(data)
	r.cache[pid] = procEntry{pc: pc, ok: ok}
	return pc, ok
}

// retain forgets PIDs no longer running, so a reused PID is read afresh.
func (r *procReader) retain(live map[uint32]bool) {
	for pid := range r.cache {
		if !live[pid] {
			delete(r.cache, pid)
		}
	}
}
