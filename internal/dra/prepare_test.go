package dra

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/gpulet/gpulet/internal/ledger"
)

const (
	uidA = "0b7c9a52-7a4e-4f0e-9d1a-6c1e9f9c0a01"
	uidB = "0b7c9a52-7a4e-4f0e-9d1a-6c1e9f9c0a02"
	uidC = "0b7c9a52-7a4e-4f0e-9d1a-6c1e9f9c0a03"
)

func TestPrepareUnprepare(t *testing.T) {
	type check func(t *testing.T, b *testBed, claim *resourceapi.ResourceClaim, res []string)
	tests := []struct {
		name       string
		state      string
		consumable bool
		// before prepares claims that must succeed first.
		before func(b *testBed) []*resourceapi.ResourceClaim
		claim  func(b *testBed) *resourceapi.ResourceClaim
		// wantErr is a substring of the prepare error; "" means success.
		wantErr []string
		// wantMIG are the simulator's MIG devices after the prepare.
		wantMIG []string
		// afterMIG are the simulator's MIG devices after unprepare.
		afterMIG []string
		check    check
	}{
		{
			name:  "whole GPU",
			state: stateH100,
			claim: func(b *testBed) *resourceapi.ResourceClaim {
				return allocatedClaim(uidA, "one-gpu", []result{{request: "gpu", device: b.gpu(2).Name}})
			},
			check: func(t *testing.T, b *testBed, c *resourceapi.ResourceClaim, cdiIDs []string) {
				want := "gpulet.dev/gpu=" + uidA + "-" + b.gpu(2).Name
				if !slices.Equal(cdiIDs, []string{want}) {
					t.Errorf("CDI devices %v, want [%s]", cdiIDs, want)
				}
				spec := b.readSpec(uidA)
				for _, s := range []string{"NVIDIA_VISIBLE_DEVICES=" + b.gpu(2).UUID, fmt.Sprintf("/dev/nvidia%d", b.gpu(2).Minor), "GPULET_SHARING_STRATEGY=Exclusive"} {
					if !strings.Contains(spec, s) {
						t.Errorf("claim spec lacks %q:\n%s", s, spec)
					}
				}
			},
		},
		{
			name:     "MIG placement created on prepare, destroyed on unprepare",
			state:    stateA100MIG,
			claim:    func(b *testBed) *resourceapi.ResourceClaim { return migClaim(b, uidA, 0, "1g10gb", 3) },
			wantMIG:  []string{"0:1g.10gb@3", "1:3g.40gb@4"},
			afterMIG: []string{"1:3g.40gb@4"},
			check: func(t *testing.T, b *testBed, c *resourceapi.ResourceClaim, cdiIDs []string) {
				spec := b.readSpec(uidA)
				if !strings.Contains(spec, "NVIDIA_VISIBLE_DEVICES=MIG-") {
					t.Errorf("claim spec does not name a MIG device:\n%s", spec)
				}
				if !strings.Contains(spec, "/dev/nvidia-caps/") {
					t.Errorf("claim spec has no MIG capability nodes:\n%s", spec)
				}
			},
		},
		{
			name:     "existing MIG device used as it is and left in place",
			state:    stateA100MIG,
			claim:    func(b *testBed) *resourceapi.ResourceClaim { return migClaim(b, uidA, 1, "3g40gb", 4) },
			wantMIG:  []string{"1:3g.40gb@4"},
			afterMIG: []string{"1:3g.40gb@4"},
		},
		{
			name:  "two MIG claims side by side",
			state: stateA100MIG,
			before: func(b *testBed) []*resourceapi.ResourceClaim {
				return []*resourceapi.ResourceClaim{migClaim(b, uidB, 0, "3g40gb", 0)}
			},
			claim:    func(b *testBed) *resourceapi.ResourceClaim { return migClaim(b, uidA, 0, "3g40gb", 4) },
			wantMIG:  []string{"0:3g.40gb@0", "0:3g.40gb@4", "1:3g.40gb@4"},
			afterMIG: []string{"0:3g.40gb@0", "1:3g.40gb@4"},
		},
		{
			name:  "overlapping MIG placement refused by the ledger",
			state: stateA100MIG,
			before: func(b *testBed) []*resourceapi.ResourceClaim {
				return []*resourceapi.ResourceClaim{migClaim(b, uidB, 0, "3g40gb", 0)}
			},
			claim:    func(b *testBed) *resourceapi.ResourceClaim { return migClaim(b, uidA, 0, "1g10gb", 2) },
			wantErr:  []string{"prepare claim default/mig-" + uidA, "is already held through dra default/mig-" + uidB},
			wantMIG:  []string{"0:3g.40gb@0", "1:3g.40gb@4"},
			afterMIG: []string{"0:3g.40gb@0", "1:3g.40gb@4"},
		},
		{
			name:  "whole GPU while a MIG slice of it is held",
			state: stateA100MIG,
			before: func(b *testBed) []*resourceapi.ResourceClaim {
				return []*resourceapi.ResourceClaim{migClaim(b, uidB, 0, "1g10gb", 6)}
			},
			claim: func(b *testBed) *resourceapi.ResourceClaim {
				return allocatedClaim(uidA, "whole", []result{{request: "gpu", device: b.gpu(0).Name}})
			},
			wantErr:  []string{"already held"},
			wantMIG:  []string{"0:1g.10gb@6", "1:3g.40gb@4"},
			afterMIG: []string{"0:1g.10gb@6", "1:3g.40gb@4"},
		},
		{
			name:  "GPU held by the device plugin",
			state: stateH100,
			before: func(b *testBed) []*resourceapi.ResourceClaim {
				g := b.gpu(0)
				if err := b.ledger.Reserve(ledger.Record{ID: g.UUID, API: ledger.DevicePlugin, Namespace: "ml", Pod: "trainer", Resources: []ledger.Resource{{GPU: g.UUID, Device: g.UUID}}}); err != nil {
					t.Fatal(err)
				}
				return nil
			},
			claim: func(b *testBed) *resourceapi.ResourceClaim {
				return allocatedClaim(uidA, "gpu0", []result{{request: "gpu", device: b.gpu(0).Name}})
			},
			wantErr: []string{"already held through device-plugin", "pod ml/trainer"},
		},
		{
			name:       "two shares of one GPU, a third does not fit",
			state:      stateH100,
			consumable: true,
			before: func(b *testBed) []*resourceapi.ResourceClaim {
				dev := b.gpu(0).Name + sharedSuffix
				return []*resourceapi.ResourceClaim{
					allocatedClaim(uidB, "share-1", []result{{request: "gpu", device: dev, shareID: "11111111-1111-1111-1111-111111111111", memory: "30Gi"}}),
					allocatedClaim(uidC, "share-2", []result{{request: "gpu", device: dev, shareID: "22222222-2222-2222-2222-222222222222", memory: "30Gi"}}),
				}
			},
			claim: func(b *testBed) *resourceapi.ResourceClaim {
				return allocatedClaim(uidA, "share-3", []result{{request: "gpu", device: b.gpu(0).Name + sharedSuffix, shareID: "33333333-3333-3333-3333-333333333333", memory: "30Gi"}})
			},
			wantErr: []string{"would use", "more than its"},
		},
		{
			name:       "a share is time-sliced",
			state:      stateH100,
			consumable: true,
			claim: func(b *testBed) *resourceapi.ResourceClaim {
				return allocatedClaim(uidA, "share", []result{{request: "gpu", device: b.gpu(1).Name + sharedSuffix, shareID: "44444444-4444-4444-4444-444444444444", memory: "8Gi"}},
					config{params: `{"apiVersion":"gpu.gpulet.dev/v1alpha1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Short"}}}`})
			},
			check: func(t *testing.T, b *testBed, c *resourceapi.ResourceClaim, cdiIDs []string) {
				spec := b.readSpec(uidA)
				for _, s := range []string{"GPULET_SHARING_STRATEGY=TimeSlicing", "GPULET_TIME_SLICE_INTERVAL=Short", "GPULET_SHARED_MEMORY_BYTES=8589934592"} {
					if !strings.Contains(spec, s) {
						t.Errorf("claim spec lacks %q:\n%s", s, spec)
					}
				}
			},
		},
		{
			name:       "shares of one GPU must agree on the interval",
			state:      stateH100,
			consumable: true,
			before: func(b *testBed) []*resourceapi.ResourceClaim {
				return []*resourceapi.ResourceClaim{allocatedClaim(uidB, "long", []result{{request: "gpu", device: b.gpu(0).Name + sharedSuffix, shareID: "55555555-5555-5555-5555-555555555555", memory: "1Gi"}},
					config{params: `{"apiVersion":"gpu.gpulet.dev/v1alpha1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Long"}}}`})}
			},
			claim: func(b *testBed) *resourceapi.ResourceClaim {
				return allocatedClaim(uidA, "short", []result{{request: "gpu", device: b.gpu(0).Name + sharedSuffix, shareID: "66666666-6666-6666-6666-666666666666", memory: "1Gi"}},
					config{params: `{"apiVersion":"gpu.gpulet.dev/v1alpha1","kind":"GpuConfig","sharing":{"strategy":"TimeSlicing","timeSlicingConfig":{"interval":"Short"}}}`})
			},
			wantErr: []string{"sharing.timeSlicingConfig.interval", `already shared at "Long" with claim default/long`},
		},
		{
			name:       "Exclusive on a shared GPU",
			state:      stateH100,
			consumable: true,
			claim: func(b *testBed) *resourceapi.ResourceClaim {
				return allocatedClaim(uidA, "x", []result{{request: "gpu", device: b.gpu(0).Name + sharedSuffix, memory: "1Gi"}},
					config{params: `{"apiVersion":"gpu.gpulet.dev/v1alpha1","kind":"GpuConfig","sharing":{"strategy":"Exclusive"}}`})
			},
			wantErr: []string{"spec.devices.config[0].opaque.parameters: sharing.strategy", "consumable capacity"},
		},
		{
			name:  "bad opaque parameters name the field, MIG claim leaves nothing",
			state: stateA100MIG,
			claim: func(b *testBed) *resourceapi.ResourceClaim {
				c := migClaim(b, uidA, 2, "2g20gb", 2)
				return withConfig(c, config{params: `{"apiVersion":"gpu.gpulet.dev/v1alpha1","kind":"MigDeviceConfig","sharing":{"strategy":"Sometimes"}}`})
			},
			wantErr:  []string{`spec.devices.config[0].opaque.parameters: MigDeviceConfig: sharing.strategy: unsupported value "Sometimes"`},
			wantMIG:  []string{"1:3g.40gb@4"},
			afterMIG: []string{"1:3g.40gb@4"},
		},
		{
			name:  "unknown field in a class configuration",
			state: stateH100,
			claim: func(b *testBed) *resourceapi.ResourceClaim {
				return allocatedClaim(uidA, "x", []result{{request: "gpu", device: b.gpu(0).Name}},
					config{fromClass: true, params: `{"apiVersion":"gpu.gpulet.dev/v1alpha1","kind":"GpuConfig","sharng":{}}`})
			},
			wantErr: []string{"DeviceClass config[0].opaque.parameters: GpuConfig: unknown field", "sharng"},
		},
		{
			name:  "MIG configuration named for a GPU request",
			state: stateH100,
			claim: func(b *testBed) *resourceapi.ResourceClaim {
				return allocatedClaim(uidA, "x", []result{{request: "gpu", device: b.gpu(0).Name}},
					config{requests: []string{"gpu"}, params: `{"apiVersion":"gpu.gpulet.dev/v1alpha1","kind":"MigDeviceConfig"}`})
			},
			wantErr: []string{"MigDeviceConfig cannot configure GPU device", "use GpuConfig"},
		},
		{
			name:  "other drivers' configuration is not ours to read",
			state: stateH100,
			claim: func(b *testBed) *resourceapi.ResourceClaim {
				return allocatedClaim(uidA, "x", []result{{request: "gpu", device: b.gpu(0).Name}},
					config{driver: "other.example.com", params: `not even json`})
			},
		},
		{
			name:  "device from another node's pool",
			state: stateH100,
			claim: func(b *testBed) *resourceapi.ResourceClaim {
				return allocatedClaim(uidA, "x", []result{{request: "gpu", device: b.gpu(0).Name, pool: "node-b"}})
			},
			wantErr: []string{`results[0] (request "gpu", device ` + "gpu-", `pool "node-b" is not this node's pool "node-a"`},
		},
		{
			name:  "device the node does not publish",
			state: stateH100,
			claim: func(b *testBed) *resourceapi.ResourceClaim {
				return allocatedClaim(uidA, "x", []result{{request: "gpu", device: "gpu-000000000000"}})
			},
			wantErr: []string{`device "gpu-000000000000" is not one this node publishes`},
		},
		{
			name:  "admin access",
			state: stateH100,
			claim: func(b *testBed) *resourceapi.ResourceClaim {
				return allocatedClaim(uidA, "x", []result{{request: "gpu", device: b.gpu(0).Name, adminAcc: true}})
			},
			wantErr: []string{"adminAccess is not supported"},
		},
		{
			name:  "not allocated",
			state: stateH100,
			claim: func(b *testBed) *resourceapi.ResourceClaim {
				c := allocatedClaim(uidA, "x", nil)
				c.Status.Allocation = nil
				return c
			},
			wantErr: []string{"claim is not allocated"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newTestBed(t, tt.state, func(o *Options) { o.ConsumableCapacity = tt.consumable })
			var before []*resourceapi.ResourceClaim
			if tt.before != nil {
				before = tt.before(b)
				for uid, r := range b.prepare(before...) {
					if r.Err != nil {
						t.Fatalf("preparing %s first: %v", uid, r.Err)
					}
				}
			}
			claim := tt.claim(b)
			res := b.prepare(claim)[claim.UID]
			if len(tt.wantErr) > 0 {
				if res.Err == nil {
					t.Fatalf("prepare succeeded, want an error with %q", tt.wantErr)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(res.Err.Error(), w) {
						t.Errorf("prepare error %q\ndoes not contain %q", res.Err, w)
					}
				}
				// Nothing is left behind.
				if _, ok := b.ledger.Get(string(claim.UID)); ok {
					t.Error("the failed claim has a ledger record")
				}
				if slices.Contains(b.claimSpecs(), string(claim.UID)) {
					t.Error("the failed claim has a CDI spec")
				}
			} else if res.Err != nil {
				t.Fatalf("prepare: %v", res.Err)
			}
			if tt.wantMIG != nil {
				if got := b.migDevices(); !slices.Equal(got, tt.wantMIG) {
					t.Errorf("MIG devices after prepare %v, want %v", got, tt.wantMIG)
				}
			}
			var ids []string
			for _, d := range res.Devices {
				ids = append(ids, d.CDIDeviceIDs...)
			}
			if tt.check != nil && res.Err == nil {
				tt.check(t, b, claim, ids)
			}
			if res.Err == nil {
				// Idempotent: the same answer again, also from a new process.
				again := b.prepare(claim)[claim.UID]
				if again.Err != nil || !equalDevices(again.Devices, res.Devices) {
					t.Errorf("second prepare = %+v, %v; want %+v", again.Devices, again.Err, res.Devices)
				}
				b.restart()
				again = b.prepare(claim)[claim.UID]
				if again.Err != nil || !equalDevices(again.Devices, res.Devices) {
					t.Errorf("prepare after restart = %+v, %v; want %+v", again.Devices, again.Err, res.Devices)
				}
			}

			for uid, err := range b.unprepare(claim) {
				if err != nil {
					t.Errorf("unprepare %s: %v", uid, err)
				}
			}
			if err := b.unprepare(claim)[claim.UID]; err != nil {
				t.Errorf("second unprepare: %v", err)
			}
			if tt.afterMIG != nil {
				if got := b.migDevices(); !slices.Equal(got, tt.afterMIG) {
					t.Errorf("MIG devices after unprepare %v, want %v", got, tt.afterMIG)
				}
			}
			var want []string
			for _, c := range before {
				want = append(want, string(c.UID))
			}
			slices.Sort(want)
			if got := b.draRecords(); !slices.Equal(got, want) {
				t.Errorf("DRA ledger records after unprepare %v, want %v", got, want)
			}
			if got := b.claimSpecs(); !slices.Equal(got, want) {
				t.Errorf("claim CDI specs after unprepare %v, want %v", got, want)
			}
		})
	}
}

func TestUnprepareUnknownClaim(t *testing.T) {
	b := newTestBed(t, stateH100, nil)
	for _, uid := range []string{uidA, "", "../../etc/passwd", "not a uid"} {
		c := allocatedClaim(uid, "gone", nil)
		if err := b.unprepare(c)[types.UID(uid)]; err != nil {
			t.Errorf("unprepare of unknown claim %q: %v", uid, err)
		}
	}
}

// TestUnprepareNamesClaimAndDevice makes a MIG device impossible to
// destroy and checks that the error says which claim and device.
func TestUnprepareNamesClaimAndDevice(t *testing.T) {
	b := newTestBed(t, stateA100MIG, nil)
	claim := migClaim(b, uidA, 0, "1g10gb", 0)
	if r := b.prepare(claim)[claim.UID]; r.Err != nil {
		t.Fatal(r.Err)
	}
	b.driver.opts.NVML = failingDestroy{NVML: b.driver.opts.NVML}
	err := b.unprepare(claim)[claim.UID]
	if err == nil {
		t.Fatal("unprepare succeeded with a MIG device that cannot be destroyed")
	}
	for _, w := range []string{"unprepare claim default/mig-" + uidA, uidA, "device " + b.gpu(0).Name + "-mig-1g10gb-0", "destroy MIG device", "device busy"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
	// The claim still holds its device, so a retry can finish.
	if _, ok := b.ledger.Get(uidA); !ok {
		t.Error("a failed unprepare released the claim's holding")
	}
	b.driver.opts.NVML = b.node.Adapter
	if err := b.unprepare(claim)[claim.UID]; err != nil {
		t.Fatalf("retried unprepare: %v", err)
	}
	if got := b.migDevices(); !slices.Equal(got, []string{"1:3g.40gb@4"}) {
		t.Errorf("MIG devices %v after the retried unprepare", got)
	}
}

type failingDestroy struct{ NVML }

func (failingDestroy) DestroyMigDevice(string, int, int) error { return errors.New("device busy") }

// migClaim is a claim for a MIG placement of a GPU.
func migClaim(b *testBed, uid string, gpu int, profile string, start int) *resourceapi.ResourceClaim {
	name := fmt.Sprintf("%s-mig-%s-%d", b.gpu(gpu).Name, profile, start)
	return allocatedClaim(uid, "mig-"+uid, []result{{request: "mig", device: name}})
}

func withConfig(c *resourceapi.ResourceClaim, cfgs ...config) *resourceapi.ResourceClaim {
	tmp := allocatedClaim("x", "x", nil, cfgs...)
	c.Status.Allocation.Devices.Config = append(c.Status.Allocation.Devices.Config, tmp.Status.Allocation.Devices.Config...)
	return c
}

func equalDevices(a, b []kubeletplugin.Device) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].DeviceName != b[i].DeviceName || a[i].PoolName != b[i].PoolName ||
			!slices.Equal(a[i].CDIDeviceIDs, b[i].CDIDeviceIDs) || !slices.Equal(a[i].Requests, b[i].Requests) {
			return false
		}
	}
	return true
}
