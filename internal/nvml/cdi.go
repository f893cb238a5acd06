package nvml

import (
	"fmt"

	"github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi"
)

// NewCDILib returns NVIDIA's CDI edit generator (nvcdi, mode nvml) over
// this adapter's NVML library, so that CDI specs describe exactly the
// devices the adapter sees (the simulator's under the mock). opts add to
// or override the defaults (driver root, hook path, vendor, class,
// logger). nvsandboxutils is turned off: it would query the host's driver
// library directly, around the adapter.
//
// nvcdi initialises and shuts down the library around each query; NVML
// counts those calls, so the adapter's own initialisation is unaffected.
func (a *Adapter) NewCDILib(opts ...nvcdi.Option) (nvcdi.Interface, error) {
	all := append([]nvcdi.Option{
		nvcdi.WithNvmlLib(a.lib),
		nvcdi.WithDeviceLib(a.devlib),
		nvcdi.WithMode(nvcdi.ModeNvml),
		nvcdi.WithFeatureFlags(nvcdi.FeatureDisableNvsandboxUtils),
	}, opts...)
	lib, err := nvcdi.New(all...)
	if err != nil {
		return nil, fmt.Errorf("create nvcdi library: %w", err)
	}
	return lib, nil
}
