package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Orders and budgets survive crashes, restarts and failover, and the CA is
// never hammered. Orders are counted where they happen: at the CA, through a
// testbed.CAProxy (new-order requests it answered 201). The Issuing Events on
// the Ingresses are logged beside them: a process announces each order it
// starts or resumes, so a kill between the announcement and the CA's answer,
// or a resumed order, is an Event without a new order.

// renewalInfoPerSecond is the most renewal-information requests a second the
// restarted controller is allowed (--acme-renewal-info-per-second).
const renewalInfoPerSecond = 20

// waitUntil polls cond every 50 ms until it holds or timeout passes, and
// reports whether it held. Unlike waitFor it does not fail the test.
func waitUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// failingIngress creates an opted-in Ingress name in ns whose host the CA
// cannot reach (it resolves to a loopback address where nothing listens), so
// every order for it fails at validation.
func failingIngress(t *testing.T, ns, name string) *networkingv1.Ingress {
	t.Helper()
	h := host(ns, name)
	if err := bed.AddDNS(context.Background(), h, "127.0.0.2"); err != nil {
		t.Fatal(err)
	}
	return createIngress(t, newIngress(ns, name, "web", true, h))
}

// A certificate whose orders fail, with the controller killed and restarted
// every 10 s for a minute: the backoff survives the restarts, so that minute
// sees at most 2 orders (the CA's count and the Issuing Events).
func TestBackoffSurvivesRestarts(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	proxy := newCAProxy(t, bed.PebbleDirectory)
	ctl := newController(t, ns, "--acme-directory", proxy.Directory)
	// The default backoff (30 s, doubling): with the suite's 1 s a single
	// process would order more than twice a minute by itself.
	ctl.Args = withoutFlag(withoutFlag(ctl.Args, "--retry-base"), "--retry-max")
	ctl.start()
	start := time.Now()
	failingIngress(t, ns, "bad")
	const restarts = 6
	for i := 1; i <= restarts; i++ {
		time.Sleep(time.Until(start.Add(time.Duration(i) * 10 * time.Second))) // the restart schedule, not a wait
		ctl.kill()
		ctl.start()
		t.Logf("restart %d at %.1f s: %d orders at the CA, %d Issuing events", i, time.Since(start).Seconds(), proxy.Orders(), eventCount(t, ns, "bad", "Issuing"))
	}
	orders, issuing := proxy.OrdersSince(start), eventCount(t, ns, "bad", "Issuing")
	t.Logf("%d restarts in %.1f s: %d orders at the CA, %d Issuing events, %d Failed events", restarts, time.Since(start).Seconds(), orders, issuing, eventCount(t, ns, "bad", "Failed"))
	if orders < 1 {
		t.Fatalf("no order reached the CA: the test proves nothing\n%s", eventsByReason(t, ns, "bad"))
	}
	if orders > 2 {
		t.Errorf("orders in the minute with %d restarts: got %d at the CA (%d Issuing events), want at most 2\n%s", restarts, orders, issuing, eventsByReason(t, ns, "bad"))
	}
}

// The per-hour order cap holds across restarts: once a failing certificate has
// used its 3 orders, restarted processes order nothing more.
func TestOrderCapSurvivesRestarts(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	proxy := newCAProxy(t, bed.PebbleDirectory)
	ctl := startController(t, ns, "--acme-directory", proxy.Directory, "--max-orders-per-hour", "3")
	failingIngress(t, ns, "bad")
	waitFor(t, 60*time.Second, "OrderLimit warning", func() (bool, string) {
		return eventCount(t, ns, "bad", "OrderLimit") > 0, fmt.Sprintf("%d orders at the CA", proxy.Orders())
	})
	orders := proxy.Orders()
	if orders != 3 {
		t.Errorf("orders before the limit: got %d at the CA, want 3", orders)
	}
	for i := 1; i <= 3; i++ {
		limits, issuing := eventCount(t, ns, "bad", "OrderLimit"), eventCount(t, ns, "bad", "Issuing")
		ctl.kill()
		ctl.start()
		// Until the new process shows it has looked at the certificate (or a
		// while has passed): another OrderLimit, or an order.
		decided := waitUntil(15*time.Second, func() bool {
			return eventCount(t, ns, "bad", "OrderLimit") > limits || eventCount(t, ns, "bad", "Issuing") > issuing || proxy.Orders() > orders
		})
		if got := proxy.Orders(); got != orders {
			t.Errorf("restart %d: %d orders at the CA, want still %d (the hourly cap)\n%s", i, got, orders, eventsByReason(t, ns, "bad"))
			orders = got
		}
		if got := eventCount(t, ns, "bad", "Issuing"); got != issuing {
			t.Errorf("restart %d: Issuing events %d -> %d, want no new order", i, issuing, got)
		}
		t.Logf("restart %d: %d orders at the CA (the new process showed its decision: %v)", i, proxy.Orders(), decided)
	}
}

// 10 certificates, the controller SIGKILLed 20 times at random moments while
// they are issued: all issued, nothing left patched, at most 10 + 20 orders.
func TestKillsDuringIssuance(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	proxy := newCAProxy(t, bed.PebbleDirectory)
	ctl := startController(t, ns, "--acme-directory", proxy.Directory)
	const certs, kills = 10, 20
	var ings []*networkingv1.Ingress
	for i := range certs {
		name := fmt.Sprintf("kill%02d", i)
		ings = append(ings, newIngress(ns, name, "web", true, host(ns, name)))
	}
	created := createAll(t, ings)
	start := time.Now()
	for i := range kills {
		time.Sleep(time.Duration(rand.IntN(800)) * time.Millisecond) // a random moment
		ctl.kill()
		ctl.start()
		if i%5 == 4 {
			t.Logf("kill %d at %.1f s: %d orders at the CA", i+1, time.Since(start).Seconds(), proxy.Orders())
		}
	}
	for _, c := range created {
		assertIssuedAndClean(t, c, c.Name+"-tls", 2*time.Minute)
	}
	orders, issuing := proxy.Orders(), 0
	for _, c := range created {
		issuing += eventCount(t, ns, c.Name, "Issuing")
	}
	t.Logf("%d certificates through %d kills: %d orders at the CA, %d Issuing events, %d in the logs", certs, kills, orders, issuing, ctl.orders())
	if orders > certs+kills {
		t.Errorf("orders: got %d at the CA, want at most %d", orders, certs+kills)
	}
}

// stopServing marks every endpoint of the EndpointSlices in ns that points at
// addr (host:port) as neither ready nor serving, as Kubernetes does for a pod
// that died. Traefik skips such endpoints.
func stopServing(t *testing.T, ns, addr string) {
	t.Helper()
	h, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	api := bed.Client().DiscoveryV1().EndpointSlices(ns)
	list, err := api.List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, sl := range list.Items {
		if !slices.ContainsFunc(sl.Ports, func(p discoveryv1.EndpointPort) bool { return p.Port != nil && fmt.Sprint(*p.Port) == port }) {
			continue
		}
		if !markNotServing(&sl, h) {
			continue
		}
		if _, err := api.Update(context.Background(), &sl, metav1.UpdateOptions{}); err != nil {
			t.Errorf("EndpointSlice %s: %v", sl.Name, err)
			continue
		}
		t.Logf("EndpointSlice %s: endpoint %s marked not serving", sl.Name, addr)
	}
}

// markNotServing marks the endpoints of sl at addr neither ready nor serving,
// and reports whether there were any.
func markNotServing(sl *discoveryv1.EndpointSlice, addr string) bool {
	found := false
	for i, e := range sl.Endpoints {
		if slices.Contains(e.Addresses, addr) {
			no := false
			sl.Endpoints[i].Conditions.Ready, sl.Endpoints[i].Conditions.Serving = &no, &no
			found = true
		}
	}
	return found
}

// A controller restarted with 1,000 valid certificates orders nothing and
// spreads its renewal-information requests: no second sees more than
// renewalInfoPerSecond. The certificates are one real one (issued through the
// CA, so the CA answers for it) and 999 copies of its Secret, each named by an
// Ingress of a class no ingress controller serves (so that Traefik has no
// routes to rebuild for them).
func TestRestartWithThousandCertificates(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	proxy := newCAProxy(t, bed.PebbleDirectory)
	ctl := startController(t, ns, "--acme-directory", proxy.Directory, "--acme-renewal-info-per-second", fmt.Sprint(renewalInfoPerSecond))
	h := host(ns, "seed")
	created := createIngress(t, newIngress(ns, "seed", "web", true, h))
	seed, _ := waitCertificate(t, ns, "seed-tls", 60*time.Second, h)
	waitRestored(t, created)
	ctl.stop()

	const copies = 999
	ctx := context.Background()
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range copies {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			name := fmt.Sprintf("copy%03d", i)
			sec := &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: name + "-tls", Namespace: ns, Labels: seed.Labels, Annotations: seed.Annotations},
				Type:       seed.Type,
				Data:       seed.Data,
			}
			if _, err := bed.Client().CoreV1().Secrets(ns).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
				t.Error(err)
				return
			}
			ing := unreachableIngress(ns, name)
			ing.Spec.Rules[0].Host = h
			ing.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{h}, SecretName: name + "-tls"}}
			if _, err := bed.Client().NetworkingV1().Ingresses(ns).Create(ctx, ing, metav1.CreateOptions{}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d copies of %s and their Ingresses created in %.1f s", copies, seed.Name, time.Since(t0).Seconds())

	ordersBefore := proxy.Orders()
	restart := time.Now()
	ctl.start()
	ready := time.Since(restart)
	waitFor(t, 60*time.Second, "an expiry series for each of the 1,000 certificates", func() (bool, string) {
		n := len(scrape(ctl, "ingress_acme_certificate_expiry_timestamp_seconds", "namespace", ns))
		return n == copies+1, fmt.Sprintf("%d series", n)
	})
	evaluated := time.Since(restart)
	// Watch the renewal-information requests until each certificate had one, or
	// for the first minute.
	waitUntil(time.Until(restart.Add(time.Minute)), func() bool { return proxy.CountSince("renewal-info", restart) >= copies+1 })
	ari := proxy.CountSince("renewal-info", restart)
	most, at := proxy.MaxInWindow("renewal-info", restart, time.Second)
	orders := proxy.Orders() - ordersBefore
	issuing := sumCounts(nsEvents(t, ns, "Issuing"))
	t.Logf("restart with %d certificates: ready in %.2f s, all evaluated in %.2f s; in %.1f s: %d renewal-information requests (%v by the controller's count), at most %d in one second (from %.2f s), %d CA requests in all, %d orders",
		copies+1, ready.Seconds(), evaluated.Seconds(), time.Since(restart).Seconds(), ari,
		metricSum(ctl, "ingress_acme_acme_requests_total", "endpoint", "renewal-info"), most, at.Sub(restart).Seconds(),
		proxy.CountSince("", restart), orders)
	if orders != 0 {
		t.Errorf("orders after the restart: got %d at the CA, want 0", orders)
	}
	if issuing != 1 {
		t.Errorf("Issuing events in the namespace: got %d, want 1 (the seed's, before the restart)", issuing)
	}
	if most > renewalInfoPerSecond {
		t.Errorf("renewal-information requests in one second: got %d (from %.2f s after the restart), want at most %d", most, at.Sub(restart).Seconds(), renewalInfoPerSecond)
	}
}
