package bed

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
)

// ReadKubeletFile reads a file as the node's kubelet sees it, through its
// mount namespace (/proc/<pid>/root): the volumes the kubelet mounts for
// pods, a projected service-account token among them, exist only there.
func (n *Node) ReadKubeletFile(path string) ([]byte, error) {
	if n.kubelet == nil || n.kubelet.cmd == nil || n.kubelet.cmd.Process == nil {
		return nil, errors.New("node " + n.name + ": kubelet not running")
	}
	if done, _ := n.kubelet.exited(); done {
		return nil, errors.New("node " + n.name + ": kubelet has exited")
	}
	return os.ReadFile(filepath.Join("/proc", strconv.Itoa(n.kubelet.cmd.Process.Pid), "root", path))
}
