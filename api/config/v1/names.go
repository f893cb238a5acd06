package v1

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Resource naming, as NVIDIA's plugin defines it: a name without a domain is
// taken to be under nvidia.com, and the fully qualified name is at most 63
// characters.
const (
	// ResourceNamePrefix is the domain of every device plugin resource name.
	ResourceNamePrefix = "nvidia.com"
	// SharedSuffix is appended to a time-sliced resource's name when
	// renameByDefault is set: nvidia.com/gpu becomes nvidia.com/gpu.shared.
	SharedSuffix = ".shared"
	// MaxResourceNameLength is the longest fully qualified resource name.
	MaxResourceNameLength = 63
)

// ResourceName is a device plugin resource name such as "nvidia.com/gpu" or
// "nvidia.com/mig-1g.10gb". The config file may leave out the "nvidia.com/"
// prefix; [ResourceName.Qualified] adds it.
type ResourceName string

// Qualified returns the name with the "nvidia.com/" prefix, adding it when
// the name has none.
func (n ResourceName) Qualified() ResourceName {
	if strings.HasPrefix(string(n), ResourceNamePrefix+"/") {
		return n
	}
	return ResourceName(ResourceNamePrefix + "/" + string(n))
}

// Validate reports whether the name, once qualified, is a resource name
// NVIDIA's plugin and the kubelet accept.
func (n ResourceName) Validate() error {
	if n == "" {
		return fmt.Errorf("must not be empty")
	}
	q := string(n.Qualified())
	if len(q) > MaxResourceNameLength {
		return fmt.Errorf("%q: must be at most %d characters with the %q prefix, got %d",
			truncate(string(n)), MaxResourceNameLength, ResourceNamePrefix+"/", len(q))
	}
	short := strings.TrimPrefix(q, ResourceNamePrefix+"/")
	if strings.Contains(short, "/") {
		return fmt.Errorf("%q: must be %q or a name under it, such as %q",
			string(n), ResourceNamePrefix+"/<name>", ResourceNamePrefix+"/gpu")
	}
	if errs := validation.IsDNS1123Subdomain(short); len(errs) > 0 {
		return fmt.Errorf("%q: %s", string(n), strings.Join(errs, "; "))
	}
	return nil
}

// isDeviceRef reports whether s names a device the way NVIDIA's config does:
// a GPU index ("0"), a MIG index ("0:1"), a GPU UUID ("GPU-<uuid>") or a MIG
// UUID ("MIG-<uuid>" or the older "MIG-GPU-<uuid>/<gi>/<ci>").
func isDeviceRef(s string) bool {
	switch {
	case isUint(s):
		return true
	case strings.HasPrefix(s, "GPU-"):
		return isUUID(strings.TrimPrefix(s, "GPU-"))
	case strings.HasPrefix(s, "MIG-GPU-"):
		parts := strings.Split(strings.TrimPrefix(s, "MIG-GPU-"), "/")
		return len(parts) == 3 && isUUID(parts[0]) && isUint(parts[1]) && isUint(parts[2])
	case strings.HasPrefix(s, "MIG-"):
		return isUUID(strings.TrimPrefix(s, "MIG-"))
	}
	gpu, mig, ok := strings.Cut(s, ":")
	return ok && isUint(gpu) && isUint(mig)
}

// isUint reports whether s is a non-negative decimal integer.
func isUint(s string) bool {
	_, err := strconv.ParseUint(s, 10, 32)
	return err == nil
}

// isUUID reports whether s has the 8-4-4-4-12 hexadecimal form of a UUID.
func isUUID(s string) bool {
	groups := strings.Split(s, "-")
	want := []int{8, 4, 4, 4, 12}
	if len(groups) != len(want) {
		return false
	}
	for i, g := range groups {
		if len(g) != want[i] {
			return false
		}
		for _, c := range g {
			if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
				return false
			}
		}
	}
	return true
}
