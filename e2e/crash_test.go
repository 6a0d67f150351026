package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// withoutFlag returns args less flag and its value.
func withoutFlag(args []string, flag string) []string {
	out := slices.Clone(args)
	if i := slices.Index(out, flag); i >= 0 {
		out = slices.Delete(out, i, i+2)
	}
	return out
}

// assertIssuedAndClean waits for a valid certificate for ing's hosts in secret,
// the Ingress back to its own rules with spec.tls naming the Secret, and the
// certificate served.
func assertIssuedAndClean(t *testing.T, created *networkingv1.Ingress, secret string, timeout time.Duration) {
	t.Helper()
	var hosts []string
	for _, r := range created.Spec.Rules {
		hosts = append(hosts, r.Host)
	}
	_, leaf := waitCertificate(t, created.Namespace, secret, timeout, hosts...)
	waitFor(t, 10*time.Second, created.Name+" restored", func() (bool, string) {
		ing := getIngress(t, created.Namespace, created.Name)
		_, journal := ing.Annotations[journalAnnotation]
		return !journal && len(ing.Spec.TLS) == 1 && len(ing.Spec.Rules) == len(created.Spec.Rules),
			fmt.Sprintf("journal %v, tls %v, %d rules", journal, tlsNames(ing), len(ing.Spec.Rules))
	})
	ing := getIngress(t, created.Namespace, created.Name)
	assertClean(t, ing, created.Spec.Rules)
	assertManagersKept(t, created, ing)
	waitServed(t, hosts[0], leaf, servedWithin)
}

// assertManagersKept checks that every field manager of created still has its
// entry in ing: the controller's cache holds no managed fields, and its Updates
// must leave the server's as they were.
func assertManagersKept(t *testing.T, created, ing *networkingv1.Ingress) {
	t.Helper()
	for _, want := range created.ManagedFields {
		if !slices.ContainsFunc(ing.ManagedFields, func(e metav1.ManagedFieldsEntry) bool { return e.Manager == want.Manager }) {
			t.Errorf("field manager %q's entry is gone after the controller's edits", want.Manager)
		}
	}
	if len(created.ManagedFields) == 0 {
		t.Error("the created Ingress has no managed fields to compare")
	}
}

// Killed at each step of an order and started again, the controller leaves the
// Ingress as the user wrote it, issues the certificate with the same order
// (a second one only when nothing answered the CA while it was down), and
// reuses its account.
func TestCrashAtEveryStep(t *testing.T) {
	t.Parallel()
	points := []string{"paths-inserted", "self-checked", "validating", "finalized", "secret-written", "before-restore"}
	for _, point := range points {
		t.Run(point, func(t *testing.T) {
			t.Parallel()
			ns := newNamespace(t)
			startBackend(t, ns, "web")
			ctl := startController(t, ns, "--crash-at", point)
			h := host(ns, "crash")
			created := createIngress(t, newIngress(ns, "crash", "web", true, h, host(ns, "www")))
			if code := ctl.Wait(60 * time.Second); code != -1 || ctl.Running() {
				t.Fatalf("the controller did not die at %s (exit %d, running %v)", point, code, ctl.Running())
			}
			if ctl.count("crash-at fault point", "point", point) != 1 {
				t.Fatalf("no crash at %s logged", point)
			}
			ctl.Args = withoutFlag(ctl.Args, "--crash-at")
			ctl.start()
			assertIssuedAndClean(t, created, "crash-tls", 60*time.Second)
			// Killed after telling the CA to validate, nothing answers it (one
			// replica): the order fails and a second one is placed. Killed at
			// any other step, the next process finishes the same order, also
			// one finalized already (it makes the order's key again).
			want := []int{1}
			if point == "validating" {
				want = []int{1, 2}
			}
			if n := ctl.orders(); !slices.Contains(want, n) {
				t.Errorf("orders: got %d, want %v", n, want)
			}
			if n := ctl.count("acme account ready", "registered", true); n != 1 {
				t.Errorf("accounts registered: got %d, want 1", n)
			}
			t.Logf("killed at %s: %d orders in all", point, ctl.orders())
		})
	}
}

// Killed at random moments, over and over, the controller still converges.
func TestCrashAtRandomTimes(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	ctl := startController(t, ns)
	created := createIngress(t, newIngress(ns, "random", "web", true, host(ns, "random")))
	const kills = 5
	for i := range kills {
		time.Sleep(time.Duration(rand.IntN(400)) * time.Millisecond)
		ctl.kill()
		ctl.start()
		t.Logf("kill %d after %d orders", i+1, ctl.orders())
	}
	assertIssuedAndClean(t, created, "random-tls", 60*time.Second)
	if n := ctl.orders(); n > kills+1 {
		t.Errorf("orders: got %d, want at most %d (one per kill, plus one)", n, kills+1)
	}
	// A kill can fall between the CA registering the account and the log line
	// saying so; what must hold is that every run used one account.
	if n := ctl.count("acme account ready", "registered", true); n > 1 {
		t.Errorf("accounts registered: got %d, want at most 1", n)
	}
	if got := ctl.accounts(); len(got) != 1 {
		t.Errorf("accounts used: got %v, want one", got)
	}
}

// 50 Ingresses at once, the controller killed and restarted 5 times meanwhile:
// all end up served over HTTPS, none left patched.
func TestFiftyWithKills(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	ctl := startController(t, ns)
	const n, kills = 50, 5
	created := make([]*networkingv1.Ingress, n)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ing := newIngress(ns, fmt.Sprintf("many%02d", i), "web", true, host(ns, fmt.Sprintf("many%02d", i)))
			got, err := bed.Client().NetworkingV1().Ingresses(ns).Create(context.Background(), ing, metav1.CreateOptions{})
			if err != nil {
				t.Error(err)
				return
			}
			created[i] = got
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i := range kills {
		time.Sleep(time.Duration(200+rand.IntN(400)) * time.Millisecond)
		ctl.kill()
		ctl.start()
		t.Logf("kill %d at %.1f s, %d orders so far", i+1, time.Since(start).Seconds(), ctl.orders())
	}
	for _, c := range created {
		assertIssuedAndClean(t, c, c.Name+"-tls", 2*time.Minute)
	}
	t.Logf("%d Ingresses served over HTTPS %.1f s after creation, through %d kills; %d orders placed",
		n, time.Since(start).Seconds(), kills, ctl.orders())
	if o := ctl.orders(); o > n+kills*16 { // at most one extra order per certificate in flight at a kill (16 workers)
		t.Errorf("orders: got %d, want at most %d", o, n+kills*16)
	}
}

// Stopped gracefully (SIGTERM) while a challenge path is in, the controller
// takes it out before it exits: nothing is left for the next process to undo.
func TestGracefulStopMidOrder(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	ctl := startController(t, ns)
	name, created := duringChallenge(t, ns, "sigterm", func(*networkingv1.Ingress) error {
		ctl.stop()
		return nil
	})
	ing := getIngress(t, ns, name)
	if _, ok := ing.Annotations[journalAnnotation]; ok {
		t.Errorf("journal left behind by a graceful stop: %s", ing.Annotations[journalAnnotation])
	}
	for _, r := range ing.Spec.Rules {
		for _, p := range r.HTTP.Paths {
			if p.Path != "/" {
				t.Errorf("path %s left behind by a graceful stop", p.Path)
			}
		}
	}
	interrupted, completed := ctl.count("order interrupted by shutdown"), ctl.count("certificate issued")
	if interrupted+completed != 1 {
		t.Errorf("the order was neither interrupted nor completed (%d, %d)", interrupted, completed)
	}
	t.Logf("stopped mid-order: interrupted %d, completed %d", interrupted, completed)
	ctl.start()
	assertIssuedAndClean(t, created, name+"-tls", 60*time.Second)
}
