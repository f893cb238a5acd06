package dra

import (
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"

	"github.com/gpulet/gpulet/internal/ledger"
)

var errTestCrash = errors.New("test crash")

// TestCrashBetweenPrepareSteps stops a prepare between each of its steps,
// as a killed process would stop (nothing undone, nothing in memory kept),
// starts a fresh driver over the same state directory, CDI directory and
// (simulated) hardware, and checks that every claim is then prepared or
// cleanly unprepared: no CDI spec without a ledger record, no MIG device
// without one, no device held twice. Then the kubelet's next call, a
// retried prepare or an unprepare, must finish the job.
func TestCrashBetweenPrepareSteps(t *testing.T) {
	steps := []string{StepPlanned, StepCheckpointed, StepMIGCreated, StepCDIWritten}
	claims := map[string]func(b *testBed) *resourceapi.ResourceClaim{
		"whole GPU": func(b *testBed) *resourceapi.ResourceClaim {
			return allocatedClaim(uidA, "gpu", []result{{request: "gpu", device: b.gpu(3).Name}})
		},
		"MIG placement": func(b *testBed) *resourceapi.ResourceClaim {
			return allocatedClaim(uidA, "mig", []result{
				{request: "small", device: b.gpu(0).Name + "-mig-1g10gb-6"},
				{request: "large", device: b.gpu(0).Name + "-mig-3g40gb-0"},
			})
		},
	}
	orders := map[string]writeOrder{"checkpoint-first": writeCheckpointFirst, "cdi-first": writeCDIFirst}
	for _, next := range []string{"prepare", "unprepare"} {
		for name, mk := range claims {
			for orderName, order := range orders {
				if name == "MIG placement" && order == writeCDIFirst {
					continue // a MIG claim is always checkpointed first
				}
				for _, step := range steps {
					t.Run(next+"/"+name+"/"+orderName+"/"+step, func(t *testing.T) {
						b := newTestBed(t, stateA100MIG, nil)
						b.driver.order = order
						// A claim prepared before the crash must come through it.
						bystander := allocatedClaim(uidB, "bystander", []result{{request: "mig", device: b.gpu(2).Name + "-mig-2g20gb-4"}})
						if r := b.prepare(bystander)[bystander.UID]; r.Err != nil {
							t.Fatal(r.Err)
						}
						claim := mk(b)
						reached := false
						b.driver.crash = func(s string) error {
							if s == step {
								reached = true
								return errTestCrash
							}
							return nil
						}
						r := b.prepare(claim)[claim.UID]
						if !reached {
							if step == StepMIGCreated && name == "whole GPU" {
								// No MIG step for a whole GPU: it has to succeed.
								if r.Err != nil {
									t.Fatal(r.Err)
								}
							} else {
								t.Fatalf("the prepare never reached step %s: %v", step, r.Err)
							}
						} else if !errors.Is(r.Err, errCrashed) {
							t.Fatalf("prepare stopped at %s returned %v", step, r.Err)
						}

						b.restart()
						checkConsistent(t, b, claim)
						checkConsistent(t, b, bystander)

						switch next {
						case "prepare":
							if r := b.prepare(claim)[claim.UID]; r.Err != nil {
								t.Fatalf("retried prepare: %v", r.Err)
							}
							if _, ok := b.ledger.Get(string(claim.UID)); !ok {
								t.Error("the retried prepare left no ledger record")
							}
							checkConsistent(t, b, claim)
						case "unprepare":
							if err := b.unprepare(claim)[claim.UID]; err != nil {
								t.Fatalf("unprepare after the crash: %v", err)
							}
							if _, ok := b.ledger.Get(string(claim.UID)); ok {
								t.Error("the claim is still held after unprepare")
							}
						}
						for uid, err := range b.unprepare(claim, bystander) {
							if err != nil {
								t.Errorf("unprepare %s: %v", uid, err)
							}
						}
						if got := b.migDevices(); !slices.Equal(got, []string{"1:3g.40gb@4"}) {
							t.Errorf("MIG devices at the end %v, want only the static one", got)
						}
						if got := b.claimSpecs(); len(got) != 0 {
							t.Errorf("claim CDI specs at the end: %v", got)
						}
						if got := b.draRecords(); len(got) != 0 {
							t.Errorf("DRA records at the end: %v", got)
						}
					})
				}
			}
		}
	}
}

// checkConsistent checks that a claim is either fully prepared (ledger
// record, CDI spec, MIG devices) or fully absent, and that the node as a
// whole has no orphans: every claim spec and every MIG device made for a
// claim belongs to a ledger record, and no two records overlap.
func checkConsistent(t *testing.T, b *testBed, claim *resourceapi.ResourceClaim) {
	t.Helper()
	uid := string(claim.UID)
	rec, held := b.ledger.Get(uid)
	specs := b.claimSpecs()
	hasSpec := slices.Contains(specs, uid)
	if held != hasSpec {
		t.Errorf("claim %s: ledger record %v but CDI spec %v", claim.Name, held, hasSpec)
	}
	mig := b.migDevices()
	if held {
		st, err := decodeState(rec)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range st.Devices {
			if d.MIG == nil {
				continue
			}
			g, _ := b.node.Inventory.GPU(d.GPU)
			if key := migKey(g.Index, d.MIG.Profile, d.MIG.Start); !slices.Contains(mig, key) {
				t.Errorf("claim %s is held but its MIG device %s does not exist (have %v)", claim.Name, key, mig)
			}
		}
	}
	// No orphans: specs and MIG devices all belong to records.
	records := b.draRecords()
	for _, s := range specs {
		if !slices.Contains(records, s) {
			t.Errorf("orphan CDI spec of claim %s", s)
		}
	}
	held2 := map[string]bool{"1:3g.40gb@4": true} // the static one
	for _, r := range b.ledger.Records() {
		st, err := decodeState(r)
		if err != nil {
			continue
		}
		for _, d := range st.Devices {
			if d.MIG != nil {
				g, _ := b.node.Inventory.GPU(d.GPU)
				held2[migKey(g.Index, d.MIG.Profile, d.MIG.Start)] = true
			}
		}
	}
	for _, m := range mig {
		if !held2[m] {
			t.Errorf("orphan MIG device %s (records %v)", m, records)
		}
	}
	// No double allocation: every record could be reserved against the
	// others.
	all := b.ledger.Records()
	for i, r := range all {
		for _, o := range all[i+1:] {
			for _, x := range r.Resources {
				for _, y := range o.Resources {
					if overlaps(x, y) && (!x.Shared || !y.Shared || x.Device != y.Device) {
						t.Errorf("%s and %s both hold %s", r.ID, o.ID, x.Device)
					}
				}
			}
		}
	}
}

// TestCorruptCheckpoint covers a checkpoint that cannot be trusted: the
// ledger refuses it naming the file and the problem, the agent sets it
// aside, and the driver starts on an empty ledger instead of crash-looping.
func TestCorruptCheckpoint(t *testing.T) {
	snapshot := func(b *testBed) string {
		// A gpulet that stopped: its journal is folded into the snapshot.
		if err := b.ledger.Close(); err != nil {
			b.t.Fatal(err)
		}
		return b.checkpointPath()
	}
	for name, tc := range map[string]struct {
		file    func(*testBed) string
		corrupt func(data []byte) []byte
	}{
		"truncated":     {snapshot, func(d []byte) []byte { return d[:len(d)/2] }},
		"bit flipped":   {snapshot, func(d []byte) []byte { return []byte(strings.Replace(string(d), "gpu-", "gpv-", 1)) }},
		"empty":         {snapshot, func([]byte) []byte { return nil }},
		"not JSON":      {snapshot, func([]byte) []byte { return []byte("\x00\x01garbage") }},
		"future format": {snapshot, func(d []byte) []byte { return []byte(strings.Replace(string(d), `"version":2`, `"version":9`, 1)) }},
		// A damaged journal line with a sound one after it (the claim's
		// release of an earlier claim follows its reservation).
		"journal bit flipped": {
			func(b *testBed) string {
				other := allocatedClaim(uidB, "other", []result{{request: "gpu", device: b.gpu(1).Name}})
				if r := b.prepare(other)[other.UID]; r.Err != nil {
					b.t.Fatal(r.Err)
				}
				if err := b.unprepare(other)[other.UID]; err != nil {
					b.t.Fatal(err)
				}
				return b.checkpointPath() + ledger.JournalSuffix
			},
			func(d []byte) []byte { return []byte(strings.Replace(string(d), "gpu-", "gpv-", 1)) },
		},
	} {
		t.Run(name, func(t *testing.T) {
			b := newTestBed(t, stateH100, nil)
			c := allocatedClaim(uidA, "gpu", []result{{request: "gpu", device: b.gpu(0).Name}})
			if r := b.prepare(c)[c.UID]; r.Err != nil {
				t.Fatal(r.Err)
			}
			file := tc.file(b)
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, tc.corrupt(data), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err = ledger.Open(b.checkpointPath())
			if !errors.Is(err, ledger.ErrCorrupt) || !strings.Contains(err.Error(), file) {
				t.Fatalf("opening the corrupt checkpoint: %v; want ErrCorrupt naming %s", err, file)
			}
			t.Logf("reported: %v", err)
			// What the agent does: set it aside, start empty.
			aside, err := ledger.SetAside(b.checkpointPath(), time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(aside + strings.TrimPrefix(file, b.checkpointPath())); err != nil {
				t.Fatalf("set-aside checkpoint: %v", err)
			}
			b.opts.CheckpointSetAside = true
			b.restart()
			// The claim's CDI spec outlived its record. A running
			// container may need it, so it stays; unprepare of the now
			// unknown claim removes it.
			if got := b.claimSpecs(); !slices.Equal(got, []string{uidA}) {
				t.Errorf("claim specs after the restart: %v, want the claim's kept", got)
			}
			if err := b.unprepare(c)[c.UID]; err != nil {
				t.Fatal(err)
			}
			if got := b.claimSpecs(); len(got) != 0 {
				t.Errorf("claim specs after unprepare: %v", got)
			}
		})
	}
}

// TestUnreadableClaimState covers a checkpoint that is sound but holds a
// record this driver cannot read (written by a newer gpulet): the driver
// starts, says which file and record, keeps the holding, and unprepare
// releases it.
func TestUnreadableClaimState(t *testing.T) {
	b := newTestBed(t, stateH100, nil)
	g := b.gpu(1)
	data, _ := json.Marshal(map[string]any{"version": 7, "devices": []any{}})
	if err := b.ledger.Reserve(ledger.Record{ID: uidA, API: ledger.DRA, Namespace: "default", Name: "future",
		Resources: []ledger.Resource{{GPU: g.UUID, Device: g.Name}}, Data: data}); err != nil {
		t.Fatal(err)
	}
	b.restart() // logs the problem; must not fail
	if _, ok := b.ledger.Get(uidA); !ok {
		t.Fatal("the unreadable record was dropped at start")
	}
	other := allocatedClaim(uidB, "other", []result{{request: "gpu", device: g.Name}})
	if r := b.prepare(other)[other.UID]; r.Err == nil {
		t.Error("a GPU held by an unreadable record was handed to another claim")
	}
	c := allocatedClaim(uidA, "future", nil)
	if err := b.unprepare(c)[c.UID]; err != nil {
		t.Fatalf("unprepare: %v", err)
	}
	if r := b.prepare(other)[other.UID]; r.Err != nil {
		t.Errorf("after unprepare the GPU is still not free: %v", r.Err)
	}
}
