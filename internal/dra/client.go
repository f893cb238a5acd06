package dra

import (
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Rate limits of the driver's API client. The kubeletplugin helper reads
// each claim from the API server before it calls PrepareResourceClaims;
// with client-go's defaults (5 QPS, burst 10) a node starting 50 GPU pods
// waits about 200ms per claim on the client's own limiter once ten claims
// have gone. A burst of 100 lets a full node's worth of pods (the kubelet
// runs at most 110) start without waiting, and 50 QPS refills it in two
// seconds; steady state is a handful of requests a minute (slice
// updates), and the API server's priority and fairness still protects it
// from a misbehaving node.
const (
	ClientQPS   = 50
	ClientBurst = 100
)

// NewClient returns the driver's API client: cfg with the driver's rate
// limits and user agent.
func NewClient(cfg *rest.Config) (kubernetes.Interface, error) {
	c := rest.CopyConfig(cfg)
	c.QPS, c.Burst = ClientQPS, ClientBurst
	c.UserAgent = "gpulet-dra"
	cs, err := kubernetes.NewForConfig(c)
	if err != nil {
		return nil, fmt.Errorf("dra: API client: %w", err)
	}
	return cs, nil
}
