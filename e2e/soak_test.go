package e2e

import (
	"flag"
	"os"
	"testing"
	"time"

	"github.com/ingress-acme/ingress-acme/e2e/soak"
)

// The soak itself is package soak; these run it on the suite's testbed.

// soakExclusive reports whether the soak runs alone (make soak, or go test -run
// TestSoak): then it may restart the shared kube-apiserver and watch every
// namespace. Beside other tests it cuts only the controller's own connection to
// the API server and watches one namespace.
func soakExclusive() bool {
	if os.Getenv(soak.ExclusiveEnv) == "1" {
		return true
	}
	if f := flag.Lookup("test.run"); f != nil {
		switch f.Value.String() {
		case "TestSoak", "^TestSoak$", "^TestSoak", "TestSoak$":
			return true
		}
	}
	return false
}

// The schedule is a function of the seed and the duration alone: a seed
// replays the same life, another seed lives another one.
func TestSoakScheduleReplays(t *testing.T) {
	t.Parallel()
	for _, d := range []time.Duration{soak.DefaultDuration, 20 * time.Minute} {
		a, b := soak.NewPlan(soak.DefaultSeed, d, 3), soak.NewPlan(soak.DefaultSeed, d, 3)
		if a.String() != b.String() {
			t.Errorf("%s: the same seed gave two schedules", d)
		}
		if c := soak.NewPlan(soak.DefaultSeed+1, d, 3); c.Digest() == a.Digest() {
			t.Errorf("%s: seeds %d and %d gave the same schedule", d, soak.DefaultSeed, soak.DefaultSeed+1)
		}
		kinds := map[string]bool{}
		for _, o := range a.Ops {
			kinds[o.Kind] = true
			if o.Fault && o.At > d-min(soak.QuietTail, d/3) {
				t.Errorf("%s: fault %s in the quiet tail", d, o)
			}
		}
		if d > time.Minute && len(kinds) < len(soak.FaultKinds)+10 {
			t.Errorf("%s: only %d kinds of operation and fault: %v", d, len(kinds), kinds)
		}
	}
}

// A cluster's life, compressed: users create, edit and delete annotated and
// plain Ingresses and Secrets while controllers, the CA and the API server
// are killed, restarted and cut off, and every promise of the README is
// checked all the time. The schedule comes from the seed alone
// (SOAK_SEED, SOAK_DURATION; make soak SEED=... DURATION=...).
func TestSoak(t *testing.T) {
	exclusive := soakExclusive()
	if !exclusive {
		t.Parallel()
	}
	cfg, err := soak.ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Exclusive = exclusive
	bin, err := controllerBinary()
	if err != nil {
		t.Fatal(err)
	}
	soak.Run(t, cfg, soak.Testbed{Bed: bed, ControllerBinary: bin, ControllerFlags: e2eFlags, ShortLived: shortLived})
}
