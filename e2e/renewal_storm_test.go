package e2e

import (
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// Short-lived certificates under load: each renewed once per renewal window,
// on time, never held back by the order budget, never served expired.

const (
	stormCerts    = 20
	stormValidity = 60 * time.Second // the CA's "shortlived" profile in this test
	stormWatch    = 3 * time.Minute  // three lifetimes
	stormInterval = 20 * time.Millisecond
)

// stormProber sends, every stormInterval, one HTTPS request (verified against
// roots at the time of the request, so an expired certificate fails) and one
// HTTP request through Traefik to the next of hosts in turn, and records every
// answer that is not a 2xx and every transport error.
type stormProber struct {
	stopc chan struct{}
	done  chan struct{}

	// mu guards ok, failures and first.
	mu       sync.Mutex
	ok       map[string]int
	failures map[string]int
	first    []string
}

func startStormProber(t *testing.T, roots *x509.CertPool, hosts []string) *stormProber {
	t.Helper()
	p := &stormProber{stopc: make(chan struct{}), done: make(chan struct{}), ok: map[string]int{}, failures: map[string]int{}}
	plain, secure := bed.HTTPClient(""), bed.HTTPClientWithRoots("", roots)
	plain.Timeout, secure.Timeout = 5*time.Second, 5*time.Second
	go func() {
		defer close(p.done)
		tick := time.NewTicker(stormInterval)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-p.stopc:
				return
			case <-tick.C:
			}
			h := hosts[i%len(hosts)]
			p.get(secure, "https", h)
			p.get(plain, "http", h)
		}
	}()
	t.Cleanup(p.stop)
	return p
}

func (p *stormProber) get(c *http.Client, scheme, h string) {
	at := time.Now()
	resp, err := c.Get(scheme + "://" + h + "/")
	msg := ""
	if err != nil {
		msg = err.Error()
	} else {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			msg = fmt.Sprintf("status %d", resp.StatusCode)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if msg == "" {
		p.ok[scheme]++
		return
	}
	p.failures[scheme]++
	if len(p.first) < 20 {
		p.first = append(p.first, at.Format("15:04:05.000")+" "+scheme+"://"+h+"/: "+msg)
	}
}

func (p *stormProber) stop() {
	select {
	case <-p.stopc:
	default:
		close(p.stopc)
	}
	<-p.done
}

// check stops the prober and fails the test on any failed request.
func (p *stormProber) check(t *testing.T) {
	t.Helper()
	p.stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	t.Logf("prober: https %d ok, %d failed; http %d ok, %d failed", p.ok["https"], p.failures["https"], p.ok["http"], p.failures["http"])
	if n := p.failures["https"] + p.failures["http"]; n > 0 {
		t.Errorf("%d requests failed; the first:\n%s", n, strings.Join(p.first, "\n"))
	}
	if p.ok["https"] < 1000 || p.ok["http"] < 1000 {
		t.Errorf("the prober made too few requests to prove anything: %v", p.ok)
	}
}

// waitServedFrom waits until https://h/ answers 200 with a certificate that
// verifies against roots.
func waitServedFrom(t *testing.T, roots *x509.CertPool, h string, timeout time.Duration) {
	t.Helper()
	c := bed.HTTPClientWithRoots(h, roots)
	waitFor(t, timeout, "HTTPS for "+h, func() (bool, string) {
		resp, err := c.Get("https://" + h + "/")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, fmt.Sprintf("status %d", resp.StatusCode)
	})
}

// 20 certificates of a 60-second profile, for three lifetimes, with HTTPS and
// HTTP requests going to all of them every 20 ms, under the default order
// budget (5 orders per certificate per hour): no request fails, no renewal
// comes before half of the certificate's life, each certificate is renewed
// about once per renewal interval, each renewal is one Renewed Event, and the
// budget is never reached.
func TestRenewalStorm(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	ca, roots := startCA(t, ns, testbed.CAOptions{Profiles: map[string]time.Duration{"shortlived": stormValidity}})
	startBackend(t, ns, "web")
	ctl := newController(t, ns, "--acme-directory", ca.Directory)
	ctl.Args = withoutFlag(ctl.Args, "--max-orders-per-hour") // the default budget
	ctl.start()
	secrets := recordSecrets(t, ns)

	names, hosts := issueStorm(t, ns, roots)
	p := startStormProber(t, roots, hosts)
	start, end := watchStorm(t, ns, secrets, names)
	p.check(t)
	checkStormRenewals(t, secrets, names, hosts, start, end)
	checkStormEvents(t, ns, secrets, names)
}

// issueStorm creates the storm's stormCerts Ingresses (shortlived profile) at
// once, and waits until each has its certificate from roots' CA, of the
// profile's validity, served. It returns their names and hosts.
func issueStorm(t *testing.T, ns string, roots *x509.CertPool) (names, hosts []string) {
	t.Helper()
	var ings []*networkingv1.Ingress
	for i := range stormCerts {
		name := fmt.Sprintf("storm%02d", i)
		ing := newIngress(ns, name, "web", true, host(ns, name))
		ing.Annotations[profileAnnotation] = "shortlived"
		ings = append(ings, ing)
		hosts = append(hosts, host(ns, name))
		names = append(names, name)
	}
	createAll(t, ings)
	for i, name := range names {
		_, leaf := waitCertificateFrom(t, roots, ns, name+"-tls", 60*time.Second, hosts[i])
		if life := leaf.NotAfter.Sub(leaf.NotBefore); life > stormValidity {
			t.Fatalf("%s: validity %s, want %s: the shortlived profile was not used", name, life, stormValidity)
		}
	}
	for _, h := range hosts {
		waitServedFrom(t, roots, h, 20*time.Second)
	}
	return names, hosts
}

// watchStorm lets the storm run for stormWatch, logging the renewals and
// OrderLimit events every 30 s, and returns when the watch began and ended.
func watchStorm(t *testing.T, ns string, secrets *secretHistory, names []string) (start, end time.Time) {
	t.Helper()
	start = time.Now()
	t.Logf("all %d certificates served; watching for %s", stormCerts, stormWatch)
	deadline := time.After(stormWatch)
	progress := time.NewTicker(30 * time.Second)
	defer progress.Stop()
	for {
		select {
		case <-deadline:
			return start, time.Now()
		case <-progress.C:
			n := 0
			for _, name := range names {
				n += len(secrets.of(name+"-tls")) - 1
			}
			t.Logf("%3.0f s: %d renewals so far, %d OrderLimit events", time.Since(start).Seconds(), n, sumCounts(nsEvents(t, ns, "OrderLimit")))
		}
	}
}

// checkStormRenewals checks the renewals of each certificate seen between
// start and end. A certificate is renewed once per renewal interval, which
// lies between half its lifetime (never earlier) and its lifetime (else it
// expired): the renewals while watched are within one of the watch time over
// it.
func checkStormRenewals(t *testing.T, secrets *secretHistory, names, hosts []string, start, end time.Time) {
	t.Helper()
	lifetime := stormValidity - time.Second // Pebble's notAfter is notBefore + validity - 1 s
	watched := end.Sub(start)
	minRenewals := int(watched / lifetime)
	maxRenewals := int(watched/(lifetime/2)) + 1
	const slack = time.Second // certificate times have whole seconds
	var report strings.Builder
	total := 0
	for i, name := range names {
		leaves := secrets.of(name + "-tls")
		var gaps []string
		inWindow := 0
		for j := 1; j < len(leaves); j++ {
			prev, next := leaves[j-1], leaves[j]
			gap := next.notBefore.Sub(prev.notBefore)
			gaps = append(gaps, gap.Round(time.Second).String())
			life := prev.notAfter.Sub(prev.notBefore)
			if gap < life/2-slack {
				t.Errorf("%s: renewed %s after the previous certificate (serial %s, lifetime %s), before half of its life", name, gap, prev.serial, life)
			}
			if next.seen.After(prev.notAfter) {
				t.Errorf("%s: the renewal was written at %s, after the previous certificate expired at %s", name, next.seen.Format(time.RFC3339Nano), prev.notAfter.Format(time.RFC3339))
			}
			if !next.notBefore.Before(start.Truncate(time.Second)) && next.notBefore.Before(end) {
				inWindow++
			}
		}
		total += inWindow
		fmt.Fprintf(&report, "  %s (%s): %d renewals while watched, gaps %v\n", name, hosts[i], inWindow, gaps)
		if inWindow < minRenewals || inWindow > maxRenewals {
			t.Errorf("%s: %d renewals in %s, want %d to %d for a %s lifetime", name, inWindow, watched.Round(time.Second), minRenewals, maxRenewals, lifetime)
		}
	}
	t.Logf("%d renewals of %d certificates in %s (%.1f each; %d to %d allowed):\n%s", total, stormCerts, watched.Round(time.Second),
		float64(total)/stormCerts, minRenewals, maxRenewals, report.String())
}

// checkStormEvents checks that on-time renewals never met the order budget
// (no OrderLimit event) and that each renewal is one Renewed Event on its
// Ingress.
func checkStormEvents(t *testing.T, ns string, secrets *secretHistory, names []string) {
	t.Helper()
	if n := sumCounts(nsEvents(t, ns, "OrderLimit")); n > 0 {
		evs := nsEvents(t, ns, "OrderLimit")
		t.Errorf("OrderLimit events: got %d, want 0 (on-time renewals must not use up the budget); e.g. %s: %s", n, evs[0].InvolvedObject.Name, evs[0].Message)
	}
	// The Secret is written before the Event: count renewals before and after
	// reading the Events.
	waitFor(t, 10*time.Second, "one Renewed event per renewal", func() (bool, string) {
		var bad []string
		for _, name := range names {
			before := len(secrets.of(name+"-tls")) - 1
			got := eventCount(t, ns, name, "Renewed")
			after := len(secrets.of(name+"-tls")) - 1
			if got < before || got > after {
				bad = append(bad, fmt.Sprintf("%s: %d Renewed events for %d renewals", name, got, after))
			}
		}
		return len(bad) == 0, strings.Join(bad, "; ")
	})
	if n := sumCounts(nsEvents(t, ns, "Failed")); n > 0 {
		t.Logf("Failed events: %d (e.g. %s)", n, nsEvents(t, ns, "Failed")[0].Message)
	}
}
