package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Broken Ingresses never delay the others: an order waiting for its challenge
// to answer holds no worker.

// unservedClass is an ingress class no ingress controller on the testbed
// serves: Traefik routes only Ingresses without a class or of an IngressClass
// of its own, and no IngressClass of this name exists. The challenge paths of
// such an Ingress never answer, as with stale DNS or a wrong class.
const unservedClass = "unserved"

// unreachableIngress is an opted-in Ingress of unservedClass.
func unreachableIngress(ns, name string) *networkingv1.Ingress {
	ing := newIngress(ns, name, "web", true, host(ns, name))
	class := unservedClass
	ing.Spec.IngressClassName = &class
	return ing
}

// createAll creates ings concurrently and returns them as created.
func createAll(t *testing.T, ings []*networkingv1.Ingress) []*networkingv1.Ingress {
	t.Helper()
	out := make([]*networkingv1.Ingress, len(ings))
	var wg sync.WaitGroup
	for i, ing := range ings {
		wg.Go(func() {
			got, err := bed.Client().NetworkingV1().Ingresses(ing.Namespace).Create(context.Background(), ing, metav1.CreateOptions{})
			if err != nil {
				t.Error(err)
				return
			}
			out[i] = got
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return out
}

// warned returns which of names have a Warning Event with reason in ns.
func warned(t *testing.T, ns, reason string, names []string) (have, missing []string) {
	t.Helper()
	list, err := bed.Client().CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, e := range list.Items {
		if e.Reason == reason && e.Type == corev1.EventTypeWarning {
			got[e.InvolvedObject.Name] = true
		}
	}
	for _, n := range names {
		if got[n] {
			have = append(have, n)
		} else {
			missing = append(missing, n)
		}
	}
	return have, missing
}

// 40 Ingresses whose challenges can never answer (more than the workers), then
// a good one: the good one is valid within seconds, each unreachable one gets
// its Failed Warning, and a SIGTERM while their retries are in flight leaves
// nothing patched.
func TestUnreachableDoNotDelayOthers(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	const unreachable, workers = 40, 16 // workers: the default of --workers
	// The self-check gives up after 15 s instead of 2 min, so that every
	// unreachable certificate fails within the test.
	ctl := startController(t, ns, "--self-check-timeout", "15s")
	journals := trackJournals(t, ns)
	var bad []*networkingv1.Ingress
	var names []string
	for i := range unreachable {
		name := fmt.Sprintf("broken%02d", i)
		bad = append(bad, unreachableIngress(ns, name))
		names = append(names, name)
	}
	created := createAll(t, bad)
	// The good one comes once the unreachable ones have taken what they take:
	// as many challenges are in as there are workers.
	waitFor(t, 30*time.Second, fmt.Sprintf("%d unreachable challenges in", workers), func() (bool, string) {
		cur, most := journals.now()
		return cur >= workers, fmt.Sprintf("%d in now, %d at most", cur, most)
	})
	good := host(ns, "good")
	start := time.Now()
	goodIng := createIngress(t, newIngress(ns, "good", "web", true, good))
	_, leaf := waitCertificate(t, ns, "good-tls", 3*time.Minute, good)
	took := time.Since(start)
	cur, most := journals.now()
	t.Logf("the good Ingress got its certificate %.2f s after it was created, behind %d unreachable ones (%d challenges in then, %d at most)",
		took.Seconds(), unreachable, cur, most)
	if took > 10*time.Second {
		t.Errorf("the good Ingress waited %s for its certificate behind %d unreachable ones, want a few seconds", took.Round(time.Millisecond), unreachable)
	}
	waitServed(t, good, leaf, servedWithin)

	waitFor(t, 90*time.Second, "a Failed Warning on every unreachable Ingress", func() (bool, string) {
		have, missing := warned(t, ns, "Failed", names)
		return len(missing) == 0, fmt.Sprintf("%d have it, missing: %s", len(have), strings.Join(missing, " "))
	})
	if evs := events(t, ns, "good", "Failed"); len(evs) > 0 {
		t.Errorf("the good Ingress got a Failed event: %s", evs[0].Message)
	}

	// Their retries are in flight again: stop now.
	waitFor(t, 60*time.Second, "retries of the unreachable ones in flight", func() (bool, string) {
		cur, _ := journals.now()
		return cur >= 10, fmt.Sprintf("%d challenges in", cur)
	})
	cur, _ = journals.now()
	t0 := time.Now()
	code := ctl.Stop()
	ctl.checkExit(code)
	t.Logf("SIGTERM with %d challenges in: exited %d after %.2f s", cur, code, time.Since(t0).Seconds())
	if code != 0 {
		t.Errorf("exit code after SIGTERM: got %d, want 0 (a clean stop)", code)
	}
	for _, c := range append(created, goodIng) {
		ing := getIngress(t, ns, c.Name)
		if left := patched(ing); left != "" {
			t.Errorf("%s left patched after the stop: %s", c.Name, left)
		}
		assertClean(t, ing, c.Spec.Rules)
	}
}

// Orders waiting for their challenges are bounded by --max-orders-in-flight,
// not by --workers: with 2 workers and room for 4 orders, 12 unreachable
// certificates have exactly 4 challenges in at a time, and each gets its
// Warning.
func TestOrdersInFlightBounded(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	const unreachable, workers, inFlight = 12, 2, 4
	journals := trackJournals(t, ns)
	startController(t, ns, "--workers", fmt.Sprint(workers), "--max-orders-in-flight", fmt.Sprint(inFlight), "--self-check-timeout", "10s")
	var bad []*networkingv1.Ingress
	var names []string
	for i := range unreachable {
		name := fmt.Sprintf("broken%02d", i)
		bad = append(bad, unreachableIngress(ns, name))
		names = append(names, name)
	}
	createAll(t, bad)
	waitFor(t, 30*time.Second, fmt.Sprintf("%d challenges in at once (more than the %d workers)", inFlight, workers), func() (bool, string) {
		cur, most := journals.now()
		return cur >= inFlight, fmt.Sprintf("%d in now, %d at most", cur, most)
	})
	waitFor(t, 90*time.Second, "a Failed Warning on every unreachable Ingress", func() (bool, string) {
		have, missing := warned(t, ns, "Failed", names)
		return len(missing) == 0, fmt.Sprintf("%d have it, missing: %s", len(have), strings.Join(missing, " "))
	})
	if _, most := journals.now(); most != inFlight {
		t.Errorf("most challenges in at once: got %d, want %d (--max-orders-in-flight)", most, inFlight)
	}
}
