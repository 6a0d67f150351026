package e2e

import (
	"context"
	"crypto/x509"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// A real Prometheus scraping the controller: what it sees of certificates,
// issuances and ACME calls, and what the dashboard's and alerts' queries say.

// startPrometheus starts a real Prometheus scraping targets every second,
// stopped (and its log printed on failure) when the test ends.
func startPrometheus(t *testing.T, targets ...string) *testbed.Prometheus {
	t.Helper()
	p, err := bed.StartPrometheus(context.Background(), targets...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("prometheus log (last 30 lines):\n%s", p.LogTail(30))
		}
		p.Stop()
	})
	return p
}

// waitQuery evaluates promql every 200 ms until cond accepts the result,
// failing the test after timeout; it returns the accepted value. A query
// Prometheus rejects fails the test at once.
func waitQuery(t *testing.T, p *testbed.Prometheus, promql string, timeout time.Duration, cond func(v float64, ok bool) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v, ok, err := p.Query(context.Background(), promql)
		if err != nil {
			t.Fatal(err)
		}
		if cond(v, ok) {
			return v
		}
		if time.Now().After(deadline) {
			if !ok {
				t.Fatalf("%s: empty result after %s", promql, timeout)
			}
			t.Fatalf("%s: got %v after %s", promql, v, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func atLeast(min float64) func(float64, bool) bool {
	return func(v float64, ok bool) bool { return ok && v >= min }
}

// waitScrapedAfter waits until Prometheus has scraped target at least once
// after at, so that a query reflects the controller's state at that time.
func waitScrapedAfter(t *testing.T, p *testbed.Prometheus, target string, at time.Time) {
	t.Helper()
	waitQuery(t, p, fmt.Sprintf(`timestamp(up{job=%q,instance=%q})`, testbed.PrometheusJob, target), 20*time.Second,
		func(v float64, ok bool) bool { return ok && v > float64(at.UnixNano())/1e9 })
}

// A real Prometheus scraping the controller sees the certificate's expiry to the
// second, the issuance and the ACME calls behind it, and no expiry at all for
// certificates that do not exist yet: one held back by an invalid annotation and
// one whose orders fail. The dashboard's and the alerts' queries run against it:
// they parse, the dashboard's show the certificate, and no alert would fire for
// this healthy controller.
func TestPrometheusScrapesExpiry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	good, failing := host(ns, "shop"), host(ns, "failing")
	// The CA resolves failing to a loopback address where nothing listens: its
	// orders fail at validation, so its Secret never exists.
	if err := bed.AddDNS(ctx, failing, "127.0.0.2"); err != nil {
		t.Fatal(err)
	}
	ctl := startController(t, ns)
	createIngress(t, ninetyDayIngress(ns, "shop", "web", good))
	invalid := newIngress(ns, "invalid", "web", true, host(ns, "invalid"))
	invalid.Annotations["ingress-acme.io/key-type"] = "rsa-1024" // not offered: never ordered
	createIngress(t, invalid)
	createIngress(t, newIngress(ns, "failing", "web", true, failing))

	_, leaf := waitCertificate(t, ns, "shop-tls", 60*time.Second, good)
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life < 80*24*time.Hour {
		t.Fatalf("validity %s: want Pebble's 90-day default profile", life)
	}
	prom := startPrometheus(t, ctl.MetricsAddr)
	checkScrapedCertificate(t, prom, ctl.MetricsAddr, ns, leaf)
	checkNoSeriesUnissued(t, prom, ctl, ns)
	checkDashboardQueries(t, prom, ns, leaf)
	checkNoAlertHolds(t, prom, ctl.MetricsAddr)
}

// checkScrapedCertificate checks what Prometheus scraped from the controller
// at target about certificate ns/shop-tls, leaf: its expiry to the second,
// ready, its issuance and the ACME calls behind it, and a renewal time
// between now and the expiry.
func checkScrapedCertificate(t *testing.T, prom *testbed.Prometheus, target, ns string, leaf *x509.Certificate) {
	t.Helper()
	inst := fmt.Sprintf(`instance=%q`, target)

	want := float64(leaf.NotAfter.Unix())
	expiry := fmt.Sprintf(`ingress_acme_certificate_expiry_timestamp_seconds{%s,namespace=%q,secret="shop-tls"}`, inst, ns)
	got := waitQuery(t, prom, expiry, 30*time.Second, func(v float64, ok bool) bool { return ok && v == want })
	t.Logf("prometheus: %s = %.0f = %s, the leaf's NotAfter", expiry, got, leaf.NotAfter.UTC().Format(time.RFC3339))

	waitQuery(t, prom, fmt.Sprintf(`ingress_acme_certificate_ready{%s,namespace=%q,secret="shop-tls"}`, inst, ns), 10*time.Second,
		func(v float64, ok bool) bool { return ok && v == 1 })
	waitQuery(t, prom, fmt.Sprintf(`ingress_acme_issuances_total{%s,kind="issue",outcome="success"}`, inst), 10*time.Second, atLeast(1))
	waitQuery(t, prom, fmt.Sprintf(`ingress_acme_acme_requests_total{%s,endpoint="new-order",code="201"}`, inst), 10*time.Second, atLeast(1))
	waitQuery(t, prom, fmt.Sprintf(`up{job=%q,%s}`, testbed.PrometheusJob, inst), 10*time.Second,
		func(v float64, ok bool) bool { return ok && v == 1 })
	// The renewal time lies between now and the expiry (in the CA's ARI
	// window, or a third of the lifetime before it).
	renewal := waitQuery(t, prom, fmt.Sprintf(`ingress_acme_certificate_renewal_timestamp_seconds{%s,namespace=%q,secret="shop-tls"}`, inst, ns), 10*time.Second,
		func(_ float64, ok bool) bool { return ok })
	if now := float64(time.Now().Unix()); renewal <= now || renewal >= want {
		t.Errorf("renewal timestamp: got %.0f, want between now (%.0f) and the expiry (%.0f)", renewal, now, want)
	}
}

// checkNoSeriesUnissued checks the two certificates of ns that do not exist,
// invalid-tls (an invalid annotation) and failing-tls (its orders fail): the
// controller has looked at both, and no scrape ever held a series for either.
func checkNoSeriesUnissued(t *testing.T, prom *testbed.Prometheus, ctl *controller, ns string) {
	t.Helper()
	ctx := context.Background()
	inst := fmt.Sprintf(`instance=%q`, ctl.MetricsAddr)
	// The controller has looked at both (the Warning Event for the invalid
	// one, a failed order for the other)...
	waitFor(t, 30*time.Second, "InvalidAnnotation event", func() (bool, string) {
		return len(events(t, ns, "invalid", "InvalidAnnotation")) > 0, "no event yet"
	})
	waitQuery(t, prom, fmt.Sprintf(`ingress_acme_sync_problems_total{%s,reason="InvalidAnnotation"}`, inst), 20*time.Second, atLeast(1))
	waitQuery(t, prom, fmt.Sprintf(`sum(ingress_acme_issuances_total{%s,outcome="failure"})`, inst), 60*time.Second, atLeast(1))
	if s := getSecret(t, ns, "failing-tls"); s != nil {
		t.Fatal("a Secret exists for the failing certificate")
	}
	waitScrapedAfter(t, prom, ctl.MetricsAddr, time.Now())
	// ...and no scrape ever held a series for either: an unissued certificate
	// must not look like one that expired in 1970.
	for _, secret := range []string{"invalid-tls", "failing-tls"} {
		for _, family := range []string{
			"ingress_acme_certificate_expiry_timestamp_seconds",
			"ingress_acme_certificate_renewal_timestamp_seconds",
			"ingress_acme_certificate_ready",
		} {
			q := fmt.Sprintf(`count_over_time(%s{namespace=%q,secret=%q}[10m])`, family, ns, secret)
			v, ok, err := prom.Query(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				t.Errorf("%s: got %v samples, want none (no certificate exists)", q, v)
			}
			if v, ok := ctl.metric(family, "namespace", ns, "secret", secret); ok {
				t.Errorf("/metrics: %s{secret=%q} = %v, want no series", family, secret, v)
			}
		}
	}
	if v, _, err := prom.Query(ctx, fmt.Sprintf(`count(ingress_acme_certificate_expiry_timestamp_seconds{namespace=%q})`, ns)); err != nil || v != 1 {
		t.Errorf("expiry series in %s: got %v (%v), want 1", ns, v, err)
	}
}

// checkDashboardQueries checks that the dashboard's queries parse and run, and
// that the expiry panel shows the days left of certificate ns/shop-tls, leaf.
func checkDashboardQueries(t *testing.T, prom *testbed.Prometheus, ns string, leaf *x509.Certificate) {
	t.Helper()
	vars := strings.NewReplacer("$__rate_interval", "1m", "$job", testbed.PrometheusJob)
	for _, pe := range dashboardExprs(t) {
		samples, err := prom.QueryAll(context.Background(), vars.Replace(pe.expr))
		if err != nil {
			t.Errorf("dashboard panel %q: %v", pe.title, err)
			continue
		}
		if pe.title != "Certificate expiry (days left)" {
			continue
		}
		found := false
		for _, s := range samples {
			if s.Labels["namespace"] == ns && s.Labels["secret"] == "shop-tls" {
				found = true
				if days := time.Until(leaf.NotAfter).Hours() / 24; math.Abs(s.Value-days) > 0.01 {
					t.Errorf("dashboard panel %q: got %.3f days, want %.3f", pe.title, s.Value, days)
				}
			}
		}
		if !found {
			t.Errorf("dashboard panel %q: no bar for %s/shop-tls in %v", pe.title, ns, samples)
		}
	}
}

// checkNoAlertHolds checks that every alert's expression runs, and that none
// holds for the controller at target, which is up, has a fresh certificate
// and has talked to the CA successfully (the failing certificate's orders
// fail, but issuance succeeded).
func checkNoAlertHolds(t *testing.T, prom *testbed.Prometheus, target string) {
	t.Helper()
	for _, r := range alertRules(t) {
		samples, err := prom.QueryAll(context.Background(), r.Expr)
		if err != nil {
			t.Errorf("alert %s: %v", r.Alert, err)
			continue
		}
		var mine []testbed.Sample
		for _, s := range samples {
			if s.Labels["instance"] == target {
				mine = append(mine, s)
			}
		}
		if len(mine) > 0 {
			t.Errorf("alert %s: expression holds for a healthy controller: %v", r.Alert, mine)
		}
	}
}
