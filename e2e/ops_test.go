package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
	"github.com/ingress-acme/ingress-acme/metrics"
)

// Operations: what someone running ingress-acme relies on besides certificates
// appearing. The metrics as a real Prometheus sees them, the health endpoints
// behind the probes and leader election, the manifest applied to a real API
// server and run under its own RBAC, and the alerting rules and dashboard
// shipped in deploy/.

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

// ninetyDayIngress is an opted-in Ingress asking for Pebble's "default" profile
// (90-day certificates). With no profile in the order, the testbed's Pebble
// picks one of its profiles at random, and its "shortlived" one lasts
// seconds: renewals would race with what these tests compare.
func ninetyDayIngress(ns, name, backend string, hosts ...string) *networkingv1.Ingress {
	ing := newIngress(ns, name, backend, true, hosts...)
	ing.Annotations[profileAnnotation] = "default"
	return ing
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
	inst := fmt.Sprintf(`instance=%q`, ctl.MetricsAddr)

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

	// The two certificates that do not exist: the controller has looked at both
	// (the Warning Event for the invalid one, a failed order for the other)...
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

	// The dashboard's queries parse and run; the expiry panel shows this
	// certificate's days left.
	vars := strings.NewReplacer("$__rate_interval", "1m", "$job", testbed.PrometheusJob)
	for _, pe := range dashboardExprs(t) {
		samples, err := prom.QueryAll(ctx, vars.Replace(pe.expr))
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
	// Every alert's expression runs, and none holds for this controller, which
	// is up, has a fresh certificate and has talked to the CA successfully
	// (the failing certificate's orders fail, but issuance succeeded).
	for _, r := range alertRules(t) {
		samples, err := prom.QueryAll(ctx, r.Expr)
		if err != nil {
			t.Errorf("alert %s: %v", r.Alert, err)
			continue
		}
		var mine []testbed.Sample
		for _, s := range samples {
			if s.Labels["instance"] == ctl.MetricsAddr {
				mine = append(mine, s)
			}
		}
		if len(mine) > 0 {
			t.Errorf("alert %s: expression holds for a healthy controller: %v", r.Alert, mine)
		}
	}
}

// The controller's /metrics, after one issuance, passes `promtool check metrics`
// without a single complaint, and holds every family an operator looks for.
func TestMetricsPromtoolClean(t *testing.T) {
	t.Parallel()
	promtool := lookPath(t, "promtool")
	ns := newNamespace(t)
	ctl := startController(t, ns)
	startBackend(t, ns, "web")
	h := host(ns, "lint")
	createIngress(t, ninetyDayIngress(ns, "lint", "web", h))
	waitCertificate(t, ns, "lint-tls", 60*time.Second, h)
	waitFor(t, 10*time.Second, "expiry metric", func() (bool, string) {
		_, ok := ctl.metric("ingress_acme_certificate_expiry_timestamp_seconds", "namespace", ns, "secret", "lint-tls")
		return ok, "none yet"
	})

	resp, err := http.Get("http://" + ctl.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %v %v", resp.Status, err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type: got %q, want text/plain (the text exposition format)", ct)
	}

	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v", err)
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			t.Errorf("  %s", line)
		}
	}

	families := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			families[f[2]] = true
		}
	}
	for _, want := range []string{
		"ingress_acme_build_info",
		"ingress_acme_workqueue_depth",
		"ingress_acme_workqueue_adds_total",
		"ingress_acme_workqueue_retries_total",
		"ingress_acme_workqueue_queue_duration_seconds",
		"ingress_acme_workqueue_work_duration_seconds",
		"ingress_acme_challenge_requests_total",
		"ingress_acme_self_checks_total",
		"ingress_acme_order_duration_seconds",
		"ingress_acme_acme_requests_total",
		"ingress_acme_acme_request_duration_seconds",
		"ingress_acme_issuances_total",
		"ingress_acme_certificate_expiry_timestamp_seconds",
		"ingress_acme_certificate_renewal_timestamp_seconds",
		"ingress_acme_certificate_ready",
	} {
		if !families[want] {
			t.Errorf("family %s missing from /metrics", want)
		}
	}
	for _, prefix := range []string{"go_", "process_"} {
		n := 0
		for f := range families {
			if strings.HasPrefix(f, prefix) {
				n++
			}
		}
		if n == 0 {
			t.Errorf("no %s* family in /metrics", prefix)
		}
	}
	if v, ok := ctl.metric("ingress_acme_build_info"); !ok || v != 1 {
		t.Errorf("build_info: got %v (present %v), want 1", v, ok)
	}
	if !regexp.MustCompile(`(?m)^ingress_acme_build_info\{.*version="[^"]+".*\} 1$`).Match(body) {
		t.Error("build_info has no version label")
	}
	if v, ok := ctl.metric("ingress_acme_challenge_requests_total", "outcome", "served"); !ok || v < 1 {
		t.Errorf("challenge_requests_total{outcome=served}: got %v, want >= 1 (the CA and the self-check fetched the challenge)", v)
	}
	if v, ok := ctl.metric("ingress_acme_self_checks_total", "outcome", "ok"); !ok || v < 1 {
		t.Errorf("self_checks_total{outcome=ok}: got %v, want >= 1", v)
	}
	t.Logf("/metrics: %d bytes, %d families, promtool clean", len(body), len(families))
}

// /healthz answers while the process runs; /readyz once it knows who leads. A
// follower (same namespace, same ServiceAccount, another identity) is ready as
// soon as it sees the leader, so a rolling update can proceed, but orders
// nothing; when the leader goes, it takes over without ordering again. A
// process that cannot see the Lease at all is alive but not ready.
func TestHealthEndpoints(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	leader := startController(t, ns)
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpGet(t, leader.MetricsAddr, path); code != http.StatusOK || body != "ok" {
			t.Errorf("leader %s: got %d %q, want 200 \"ok\"", path, code, body)
		}
	}
	waitFor(t, 10*time.Second, "the first controller to lead", func() (bool, string) {
		return leader.count("leading") == 1, "not leading yet"
	})

	follower := startController(t, ns, "--leader-election-id", "other")
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpGet(t, follower.MetricsAddr, path); code != http.StatusOK || body != "ok" {
			t.Errorf("follower %s: got %d %q, want 200 \"ok\" (leader known)", path, code, body)
		}
	}
	waitFor(t, 5*time.Second, "the follower to log the leader", func() (bool, string) {
		return follower.count("leader", "identity", "testbed-"+ns) > 0, "no leader logged"
	})

	startBackend(t, ns, "web")
	h := host(ns, "ha")
	createIngress(t, ninetyDayIngress(ns, "ha", "web", h))
	_, leaf := waitCertificate(t, ns, "ha-tls", 60*time.Second, h)
	waitServed(t, h, leaf, servedWithin)
	if n := leader.orders(); n != 1 {
		t.Errorf("leader orders: got %d, want 1", n)
	}
	if n := follower.orders(); n != 0 {
		t.Errorf("follower orders: got %d, want 0", n)
	}
	if n := follower.count("leading"); n != 0 {
		t.Errorf("the follower led %d times while the leader ran", n)
	}
	if _, ok := follower.metric("ingress_acme_certificate_expiry_timestamp_seconds", "namespace", ns); ok {
		t.Error("the follower reports certificates: it is not reconciling, it must not")
	}
	if code, _ := httpGet(t, follower.MetricsAddr, "/readyz"); code != http.StatusOK {
		t.Errorf("follower /readyz after the issuance: got %d, want 200", code)
	}

	// The leader steps down (its Lease is released on SIGTERM): the follower
	// takes over, finds the certificate valid, and orders nothing.
	leader.stop()
	waitFor(t, 30*time.Second, "the follower to take over", func() (bool, string) {
		return follower.count("leading") == 1, "not leading yet"
	})
	waitFor(t, 20*time.Second, "the new leader to look at the certificate", func() (bool, string) {
		_, ok := follower.metric("ingress_acme_certificate_expiry_timestamp_seconds", "namespace", ns, "secret", "ha-tls")
		return ok, "no expiry metric yet"
	})
	if code, body := httpGet(t, follower.MetricsAddr, "/readyz"); code != http.StatusOK {
		t.Errorf("new leader /readyz: got %d %q, want 200", code, body)
	}
	if n := follower.orders(); n != 0 {
		t.Errorf("orders by the new leader: got %d, want 0 (the certificate is valid)", n)
	}

	// A process whose Lease namespace it may not read never learns who leads:
	// alive (/healthz 200, so it is not restarted), not ready (/readyz 503).
	blindNS := newNamespace(t) // no Role here: leases are forbidden
	blind := newController(t, ns, "--controller-namespace", blindNS, "--leader-election-id", "blind")
	started := make(chan error, 1)
	go func() { started <- blind.Start() }()
	waitFor(t, 30*time.Second, "/readyz 503 from a process that cannot see the Lease", func() (bool, string) {
		code, body := httpGetQuiet(blind.MetricsAddr, "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "leader not known"), fmt.Sprintf("%d %q", code, body)
	})
	time.Sleep(3 * time.Second) // more than a retry period of the elector: still not ready
	if code, body := httpGetQuiet(blind.MetricsAddr, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("blind /readyz: got %d %q, want 503", code, body)
	}
	if code, body := httpGetQuiet(blind.MetricsAddr, "/healthz"); code != http.StatusOK {
		t.Errorf("blind /healthz: got %d %q, want 200", code, body)
	}
	blind.stop()
	if err := <-started; err == nil {
		t.Error("a controller that cannot see the Lease became ready")
	}
	if n := blind.orders(); n != 0 {
		t.Errorf("blind orders: got %d, want 0", n)
	}
}

// httpGet GETs http://addr+path and returns the status and trimmed body.
func httpGet(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	code, body := httpGetQuiet(addr, path)
	if code == 0 {
		t.Fatalf("GET %s%s: %s", addr, path, body)
	}
	return code, body
}

// httpGetQuiet is httpGet returning code 0 and the error as body on failure.
func httpGetQuiet(addr, path string) (int, string) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: run `make tools` (%v)", name, err)
	}
	return p
}

// deployPath is the path of deploy/name in the repository.
func deployPath(t *testing.T, name string) string {
	t.Helper()
	root, err := testbed.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "deploy", name)
}

// The manifest applies to a real API server (server-side dry run first, then
// for real), its Deployment is locked down and probes the right endpoints, and
// a controller holding only the manifest's ServiceAccount token, in the
// manifest's namespace, issues a certificate: a missing RBAC verb fails here.
//
// Parallel: the namespace ingress-acme and the ClusterRoleBinding ingress-acme
// are this test's alone. The ClusterRole ingress-acme is also what
// GrantManifestRBAC creates for every other test's controller, from the same
// file, so applying it changes no rule they rely on. (Run among the sequential
// tests, its 20 s would sit between their two API server restarts, and the
// second one's Traefik check depends on how long ago the first was.)
func TestManifestApplies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	kubectl := bed.Tools.Kubectl
	manifest := deployPath(t, "ingress-acme.yaml")
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(kubectl, append([]string{"--kubeconfig", bed.AdminKubeconfig}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// The ClusterRole exists before kubectl looks, so that kubectl never races
	// GrantManifestRBAC to create it (its create would fail AlreadyExists).
	objs, err := testbed.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if cr, ok := o.(*rbacv1.ClusterRole); ok {
			if _, err := bed.Client().RbacV1().ClusterRoles().Create(ctx, cr, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	}
	// A server-side dry run cannot create the Namespace its other objects live
	// in (they all fail with "namespaces ingress-acme not found"), so the
	// manifest's own Namespace goes first, for real, as a CI job would do.
	nsFile := filepath.Join(t.TempDir(), "namespace.yaml")
	if err := os.WriteFile(nsFile, manifestDoc(t, manifest, "Namespace"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl apply (the Namespace):\n%s", strings.TrimSpace(run("apply", "-f", nsFile)))
	t.Logf("kubectl apply --dry-run=server:\n%s", strings.TrimSpace(run("apply", "--dry-run=server", "-f", manifest)))
	t.Logf("kubectl apply:\n%s", strings.TrimSpace(run("apply", "-f", manifest)))

	const home = "ingress-acme"
	cs := bed.Client()
	check := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
	_, err = cs.CoreV1().Namespaces().Get(ctx, home, metav1.GetOptions{})
	check("Namespace ingress-acme", err)
	_, err = cs.CoreV1().ServiceAccounts(home).Get(ctx, "ingress-acme", metav1.GetOptions{})
	check("ServiceAccount", err)
	_, err = cs.CoreV1().ConfigMaps(home).Get(ctx, "ingress-acme", metav1.GetOptions{})
	check("ConfigMap", err)
	_, err = cs.RbacV1().ClusterRoles().Get(ctx, "ingress-acme", metav1.GetOptions{})
	check("ClusterRole", err)
	_, err = cs.RbacV1().ClusterRoleBindings().Get(ctx, "ingress-acme", metav1.GetOptions{})
	check("ClusterRoleBinding", err)
	_, err = cs.RbacV1().Roles(home).Get(ctx, "ingress-acme", metav1.GetOptions{})
	check("Role", err)
	_, err = cs.RbacV1().RoleBindings(home).Get(ctx, "ingress-acme", metav1.GetOptions{})
	check("RoleBinding", err)
	svc, err := cs.CoreV1().Services(home).Get(ctx, "ingress-acme", metav1.GetOptions{})
	check("Service", err)
	applied, err := cs.AppsV1().Deployments(home).Get(ctx, "ingress-acme", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("Deployment: %v", err)
	}

	// The Deployment as the API server defaulted and stored it, and as written.
	checkDeployment(t, "applied", applied)
	for _, o := range objs {
		if d, ok := o.(*appsv1.Deployment); ok {
			checkDeployment(t, "file", d)
		}
	}
	if svc != nil {
		ports := map[string]int32{}
		for _, p := range svc.Spec.Ports {
			ports[p.Name] = p.Port
		}
		if ports["metrics"] != 9402 || ports["challenge"] != 8089 {
			t.Errorf("Service ports: got %v, want metrics 9402 and challenge 8089", ports)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// The controller, with nothing but the manifest's ServiceAccount token: its
	// Lease and account Secret in ingress-acme, the certificate in a test
	// namespace.
	ns := newNamespace(t)
	dir := t.TempDir()
	token, err := bed.ServiceAccountToken(ctx, home, "ingress-acme")
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := bed.Kubeconfig(token, kubeconfig); err != nil {
		t.Fatal(err)
	}
	ctl := newControllerWith(t, testbed.ControllerOptions{
		Namespace:  ns,
		Dir:        dir,
		Kubeconfig: kubeconfig,
		// Later flags win: the Lease and the account live in ingress-acme.
		Extra: append(slices.Clone(e2eFlags), "--controller-namespace", home, "--namespace", ns),
	})
	ctl.start()
	startBackend(t, ns, "web")
	// One certificate issued (Secret created, Ingress updated twice, solver
	// Service and EndpointSlice created, Events), and one short-lived one renewed
	// (Secret updated).
	h, hs := host(ns, "manifest"), host(ns, "short")
	created := createIngress(t, ninetyDayIngress(ns, "manifest", "web", h))
	short := newIngress(ns, "short", "web", true, hs)
	short.Annotations[profileAnnotation] = "shortlived"
	createIngress(t, short)
	_, leaf := waitCertificate(t, ns, "manifest-tls", 60*time.Second, h)
	waitServed(t, h, leaf, servedWithin)
	waitRestored(t, created)
	if len(events(t, ns, "manifest", "Issued")) == 0 {
		t.Error("no Issued event: events are not writable with the manifest's RBAC")
	}
	_, shortLeaf := waitCertificate(t, ns, "short-tls", 60*time.Second, hs)
	_, renewed := waitRenewed(t, ns, "short-tls", shortLeaf, 2*shortLived, hs)
	waitServed(t, hs, renewed, servedWithin)

	// The Lease is held, and renewed (update) since it was taken (create).
	lease, err := cs.CoordinationV1().Leases(home).Get(ctx, "ingress-acme", metav1.GetOptions{})
	if err != nil {
		t.Errorf("Lease ingress-acme/ingress-acme: %v", err)
	} else {
		if got, want := ptrValue(lease.Spec.HolderIdentity), "testbed-"+ns; got != want {
			t.Errorf("Lease holder: got %q, want %q", got, want)
		}
		if lease.Spec.AcquireTime == nil || lease.Spec.RenewTime == nil || !lease.Spec.RenewTime.After(lease.Spec.AcquireTime.Time) {
			t.Errorf("Lease not renewed since acquired: acquire %v, renew %v", lease.Spec.AcquireTime, lease.Spec.RenewTime)
		}
	}
	if !ctl.Running() {
		t.Errorf("the controller exited:\n%s", ctl.LogTail(20))
	}
	accounts, err := cs.CoreV1().Secrets(home).List(ctx, metav1.ListOptions{LabelSelector: "ingress-acme.io/role=account"})
	if err != nil || len(accounts.Items) == 0 {
		t.Errorf("account Secret in ingress-acme: got %d (%v), want one", len(accounts.Items), err)
	}
	for _, rec := range ctl.logs() {
		if strings.Contains(fmt.Sprint(rec), "forbidden") {
			t.Errorf("a request was forbidden under the manifest's RBAC: %v", rec)
		}
	}
}

// manifestDoc returns the one YAML document of path whose kind is kind.
func manifestDoc(t *testing.T, path, kind string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var found []byte
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if meta.Kind == kind {
			if found != nil {
				t.Fatalf("%s: two documents of kind %s", path, kind)
			}
			found = doc
		}
	}
	if found == nil {
		t.Fatalf("%s: no %s", path, kind)
	}
	return found
}

func ptrValue(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// newControllerWith prepares a controller from opts (Binary is filled in),
// stopped and its logs printed on failure when the test ends.
func newControllerWith(t *testing.T, opts testbed.ControllerOptions) *controller {
	t.Helper()
	bin, err := controllerBinary()
	if err != nil {
		t.Fatal(err)
	}
	opts.Binary = bin
	tc, err := bed.NewController(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	c := &controller{Controller: tc, t: t}
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			t.Logf("controller logs (%s, last 150 lines):\n%s", opts.Namespace, c.LogTail(150))
		}
	})
	return c
}

// checkDeployment checks what the manifest promises of its pod: non-root, a
// read-only root filesystem, no capabilities, the runtime's seccomp profile,
// resources, probes on the health endpoints, and POD_IP from the downward API.
func checkDeployment(t *testing.T, src string, d *appsv1.Deployment) {
	t.Helper()
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%s: %d containers, want 1", src, len(pod.Containers))
	}
	c := pod.Containers[0]
	psc := pod.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	csc := c.SecurityContext
	if csc == nil {
		csc = &corev1.SecurityContext{}
	}
	isTrue := func(ps ...*bool) bool {
		for _, p := range ps {
			if p != nil {
				return *p
			}
		}
		return false
	}
	if !isTrue(csc.RunAsNonRoot, psc.RunAsNonRoot) {
		t.Errorf("%s: runAsNonRoot is not true", src)
	}
	for _, uid := range []*int64{csc.RunAsUser, psc.RunAsUser} {
		if uid != nil && *uid == 0 {
			t.Errorf("%s: runAsUser 0", src)
		}
	}
	if !isTrue(csc.ReadOnlyRootFilesystem) {
		t.Errorf("%s: readOnlyRootFilesystem is not true", src)
	}
	if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation is not false", src)
	}
	if csc.Privileged != nil && *csc.Privileged {
		t.Errorf("%s: privileged", src)
	}
	if csc.Capabilities == nil || !slices.Contains(csc.Capabilities.Drop, "ALL") || len(csc.Capabilities.Add) > 0 {
		t.Errorf("%s: capabilities: got %+v, want drop [ALL] and nothing added", src, csc.Capabilities)
	}
	seccomp := psc.SeccompProfile
	if csc.SeccompProfile != nil {
		seccomp = csc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccompProfile: got %+v, want RuntimeDefault", src, seccomp)
	}
	req, lim := c.Resources.Requests, c.Resources.Limits
	if req.Cpu().IsZero() || req.Memory().IsZero() || lim.Memory().IsZero() {
		t.Errorf("%s: resources: got requests %v limits %v, want cpu and memory requests and a memory limit", src, req, lim)
	}
	metricsPort := int32(0)
	for _, p := range c.Ports {
		if p.Name == "metrics" {
			metricsPort = p.ContainerPort
		}
	}
	if metricsPort != 9402 {
		t.Errorf("%s: container port metrics: got %d, want 9402 (the default --metrics-addr)", src, metricsPort)
	}
	for _, pr := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"livenessProbe", c.LivenessProbe, "/healthz"}, {"readinessProbe", c.ReadinessProbe, "/readyz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("%s: no HTTP %s", src, pr.name)
			continue
		}
		g := pr.probe.HTTPGet
		port := g.Port.IntVal
		if g.Port.StrVal != "" {
			if g.Port.StrVal == "metrics" {
				port = metricsPort
			} else {
				port = -1
			}
		}
		if g.Path != pr.path || port != metricsPort {
			t.Errorf("%s: %s: got %s on port %s, want %s on the metrics port", src, pr.name, g.Path, g.Port.String(), pr.path)
		}
	}
	podIP := false
	for _, e := range c.Env {
		if e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP" {
			podIP = true
		}
	}
	if !podIP {
		t.Errorf("%s: no env POD_IP from fieldRef status.podIP", src)
	}
	if pod.ServiceAccountName != "ingress-acme" {
		t.Errorf("%s: serviceAccountName: got %q, want ingress-acme", src, pod.ServiceAccountName)
	}
	if pod.AutomountServiceAccountToken != nil && !*pod.AutomountServiceAccountToken {
		t.Errorf("%s: automountServiceAccountToken false: the controller needs its token", src)
	}
}

// alertRule is one alerting rule of deploy/prometheus-rules.yaml.
type alertRule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func alertRules(t *testing.T) []alertRule {
	t.Helper()
	b, err := os.ReadFile(deployPath(t, "prometheus-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Name  string      `json:"name"`
			Rules []alertRule `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.UnmarshalStrict(b, &file); err != nil {
		t.Fatalf("prometheus-rules.yaml: %v", err)
	}
	var rules []alertRule
	for _, g := range file.Groups {
		rules = append(rules, g.Rules...)
	}
	return rules
}

// metricNames are the series names the controller's collectors expose: every
// family (populated) of a fresh metrics.New, histograms with their _bucket,
// _sum and _count.
func metricNames(t *testing.T) map[string]bool {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test")
	m.SetCertificate("ns", "s", time.Now(), time.Now(), true)
	m.Issuance("issue", "success", time.Second)
	m.ACMERequest("new-order", 201, time.Second)
	m.ChallengeRequest("served")
	m.SelfCheck(true)
	m.Problem("InvalidAnnotation")
	wq := m.Workqueue()
	wq.NewDepthMetric("q").Inc()
	wq.NewAddsMetric("q").Inc()
	wq.NewLatencyMetric("q").Observe(1)
	wq.NewWorkDurationMetric("q").Observe(1)
	wq.NewUnfinishedWorkSecondsMetric("q").Set(1)
	wq.NewLongestRunningProcessorSecondsMetric("q").Set(1)
	wq.NewRetriesMetric("q").Inc()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
		if mf.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[mf.GetName()+s] = true
			}
		}
	}
	return names
}

var ingressAcmeName = regexp.MustCompile(`\bingress_acme_[a-z0-9_]+`)

// unknownNames lists the ingress_acme_* names in expr that no collector has.
func unknownNames(expr string, known map[string]bool) []string {
	var out []string
	for _, n := range ingressAcmeName.FindAllString(expr, -1) {
		if !known[n] {
			out = append(out, n)
		}
	}
	return out
}

// deploy/prometheus-rules.yaml passes `promtool check rules`, and `promtool test
// rules` proves each alert fires when it should and only then.
func TestPrometheusRules(t *testing.T) {
	t.Parallel()
	promtool := lookPath(t, "promtool")
	rulesPath := deployPath(t, "prometheus-rules.yaml")
	out, err := exec.Command(promtool, "check", "rules", rulesPath).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "SUCCESS: 4 rules found") {
		t.Errorf("promtool check rules: got\n%s\nwant SUCCESS: 4 rules found", out)
	}

	known := metricNames(t)
	rules := alertRules(t)
	var names []string
	for _, r := range rules {
		names = append(names, r.Alert)
		if u := unknownNames(r.Expr, known); len(u) > 0 {
			t.Errorf("%s: no such metric %v", r.Alert, u)
		}
		if r.For == "" {
			t.Errorf("%s: no for: a single bad evaluation would page", r.Alert)
		}
		if s := r.Labels["severity"]; s != "warning" && s != "critical" {
			t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
		}
		if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("%s: want summary and description annotations", r.Alert)
		}
	}
	sort.Strings(names)
	want := []string{"IngressAcmeCertificateExpiringSoon", "IngressAcmeDown", "IngressAcmeNoSuccessfulACMECalls", "IngressAcmeRenewalFailing"}
	if !slices.Equal(names, want) {
		t.Errorf("alerts: got %v, want %v", names, want)
	}

	dir := t.TempDir()
	testFile := filepath.Join(dir, "rules_test.yaml")
	writeYAML(t, testFile, rulesTests(rulesPath))
	out, err = exec.Command(promtool, "test", "rules", testFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SUCCESS") {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	t.Logf("promtool test rules: %s", strings.TrimSpace(string(out)))

	// The harness can fail: expecting the 30-day certificate to alert must not pass.
	wrong := rulesTests(rulesPath)
	at := &wrong.Tests[0].AlertRuleTest[1]
	at.ExpAlerts = append(at.ExpAlerts, expAlert{
		ExpLabels: certLabels("far-tls", map[string]string{"severity": "critical"}),
		ExpAnnotations: map[string]string{
			"summary": "Certificate shop/far-tls expires in 29d 22h 0m 0s and has not been renewed.", "description": expiringDescription("shop", "far-tls", "29d 22h 0m 0s"),
		},
	})
	wrongFile := filepath.Join(dir, "wrong_test.yaml")
	writeYAML(t, wrongFile, wrong)
	out, err = exec.Command(promtool, "test", "rules", wrongFile).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "far-tls") {
		t.Errorf("promtool test rules with a wrong expectation: got %v\n%s\nwant a failure naming far-tls", err, out)
	}
}

// The promtool unit test file format (the subset used here).
type (
	ruleTestFile struct {
		RuleFiles          []string   `json:"rule_files"`
		EvaluationInterval string     `json:"evaluation_interval"`
		Tests              []ruleTest `json:"tests"`
	}
	ruleTest struct {
		Name          string        `json:"name"`
		Interval      string        `json:"interval"`
		InputSeries   []inputSeries `json:"input_series"`
		AlertRuleTest []alertTest   `json:"alert_rule_test"`
	}
	inputSeries struct {
		Series string `json:"series"`
		Values string `json:"values"`
	}
	alertTest struct {
		EvalTime  string     `json:"eval_time"`
		Alertname string     `json:"alertname"`
		ExpAlerts []expAlert `json:"exp_alerts"`
	}
	expAlert struct {
		ExpLabels      map[string]string `json:"exp_labels"`
		ExpAnnotations map[string]string `json:"exp_annotations"`
	}
)

func writeYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

const testInstance = "10.0.0.7:9402"

// series names a series of the scrape target testInstance (job ingress-acme,
// as the rules expect) with the labels kv.
func series(name string, kv ...string) string {
	labels := []string{`job="ingress-acme"`}
	if !slices.Contains(kv, "instance") {
		labels = append(labels, `instance="`+testInstance+`"`)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		labels = append(labels, fmt.Sprintf("%s=%q", kv[i], kv[i+1]))
	}
	return name + "{" + strings.Join(labels, ",") + "}"
}

// certLabels are the labels of an alert about certificate shop/secret, plus more.
func certLabels(secret string, more map[string]string) map[string]string {
	l := map[string]string{"job": "ingress-acme", "instance": testInstance, "namespace": "shop", "secret": secret}
	for k, v := range more {
		l[k] = v
	}
	return l
}

func expiringDescription(ns, secret, left string) string {
	return fmt.Sprintf("The certificate in Secret %[1]s/%[2]s expires in %[3]s; ingress-acme should have renewed it already. "+
		"Look at the Warning Events of the Ingresses that name the Secret (kubectl -n %[1]s get events --field-selector type=Warning) "+
		"and at the controller's log (secret=%[1]s/%[2]s): a host that no longer points at the ingress, a foreign Secret, or the CA refusing orders.",
		ns, secret, left)
}

func expiringAlert(secret, left string) expAlert {
	return expAlert{
		ExpLabels: certLabels(secret, map[string]string{"severity": "critical"}),
		ExpAnnotations: map[string]string{
			"summary":     fmt.Sprintf("Certificate shop/%s expires in %s and has not been renewed.", secret, left),
			"description": expiringDescription("shop", secret, left),
		},
	}
}

// rulesTests is the promtool unit test of deploy/prometheus-rules.yaml. The
// clock of a promtool test starts at Unix time 0, so a timestamp series of
// value v is v seconds after the test begins; samples are one minute apart.
func rulesTests(rulesPath string) ruleTestFile {
	const day = 24 * 3600
	expiry := func(secret string, expiresAt, renewAt int) []inputSeries {
		return []inputSeries{
			{series("ingress_acme_certificate_expiry_timestamp_seconds", "namespace", "shop", "secret", secret), fmt.Sprintf("%d+0x180", expiresAt)},
			{series("ingress_acme_certificate_renewal_timestamp_seconds", "namespace", "shop", "secret", secret), fmt.Sprintf("%d+0x180", renewAt)},
		}
	}
	var certs []inputSeries
	// 90-day certificates renew with 30 days left.
	certs = append(certs, expiry("soon-tls", 5*day, 5*day-30*day)...)   // 5 days left, renewal overdue: alert
	certs = append(certs, expiry("edge-tls", 15*day, 15*day-30*day)...) // 15 days left, overdue: not yet
	certs = append(certs, expiry("far-tls", 30*day, 0)...)              // 30 days left, renewing now: no alert
	// 6-day "shortlived" certificates renew with 2 days left.
	certs = append(certs, expiry("short-tls", 4*day, 2*day)...)                   // 4 days left, renewal in 2 days: healthy, no alert
	certs = append(certs, expiry("short-overdue-tls", 40*3600, 40*3600-2*day)...) // 40 h left, renewal 8 h overdue: alert

	issuances := func(instance, kind, outcome, values string) inputSeries {
		return inputSeries{series("ingress_acme_issuances_total", "instance", instance, "kind", kind, "outcome", outcome), values}
	}
	acme := func(instance, endpoint, code, values string) inputSeries {
		return inputSeries{series("ingress_acme_acme_requests_total", "instance", instance, "endpoint", endpoint, "code", code), values}
	}
	none := []expAlert{}
	return ruleTestFile{
		RuleFiles:          []string{rulesPath},
		EvaluationInterval: "1m",
		Tests: []ruleTest{
			{
				Name:        "expiry",
				Interval:    "1m",
				InputSeries: certs,
				AlertRuleTest: []alertTest{
					// Under 14 days and overdue from the start, but for 1h.
					{EvalTime: "50m", Alertname: "IngressAcmeCertificateExpiringSoon", ExpAlerts: none},
					{EvalTime: "2h", Alertname: "IngressAcmeCertificateExpiringSoon", ExpAlerts: []expAlert{
						expiringAlert("soon-tls", "4d 22h 0m 0s"),
						expiringAlert("short-overdue-tls", "1d 14h 0m 0s"),
					}},
				},
			},
			{
				// Five-minute samples over 28 h, so that the 24 h window and its
				// offset both lie inside the data.
				Name:     "renewal failing",
				Interval: "5m",
				InputSeries: []inputSeries{
					// a: three failures at 24h05-24h15, the last success long before.
					issuances("a:9402", "renew", "failure", "0+0x288 1 2 3+0x40"),
					issuances("a:9402", "issue", "success", "5+0x340"),
					// b: failing all along, but one renewal succeeded at 24h10.
					issuances("b:9402", "renew", "failure", "0+1x340"),
					issuances("b:9402", "renew", "success", "0+0x289 1+0x50"),
					// c: a single failure.
					issuances("c:9402", "issue", "failure", "0+0x288 1+0x52"),
					// d: a new process whose first success (the series appears at 1,
					// so increase() sees nothing) came among three failures.
					issuances("d:9402", "renew", "failure", "0+0x288 1 2 3+0x40"),
					issuances("d:9402", "issue", "success", "_x290 1+0x50"),
				},
				AlertRuleTest: []alertTest{
					{EvalTime: "24h40m", Alertname: "IngressAcmeRenewalFailing", ExpAlerts: none}, // failing since 24h15, for 30m
					{EvalTime: "26h", Alertname: "IngressAcmeRenewalFailing", ExpAlerts: []expAlert{{
						ExpLabels: map[string]string{"job": "ingress-acme", "instance": "a:9402", "severity": "warning"},
						ExpAnnotations: map[string]string{
							"summary": "ingress-acme a:9402 failed 3 certificate orders in 24 h and completed none.",
							"description": "Every certificate order (issue or renew) of ingress-acme a:9402 in the last 24 hours failed " +
								"(3 failures, no success). Certificates keep working until they expire, but none is being renewed. " +
								"The Warning Events \"Failed\" on the Ingresses and the controller's log (\"certificate order failed\") say why.",
						},
					}}},
				},
			},
			{
				Name:     "down",
				Interval: "1m",
				InputSeries: []inputSeries{
					{series("up", "instance", "a:9402"), "1 1 1 0+0x20"},
					{series("up", "instance", "b:9402"), "1+0x23"},
				},
				AlertRuleTest: []alertTest{
					{EvalTime: "6m", Alertname: "IngressAcmeDown", ExpAlerts: none}, // down 3m of 5m
					{EvalTime: "10m", Alertname: "IngressAcmeDown", ExpAlerts: []expAlert{{
						ExpLabels: map[string]string{"job": "ingress-acme", "instance": "a:9402", "severity": "warning"},
						ExpAnnotations: map[string]string{
							"summary": "ingress-acme a:9402 is down or not scraped.",
							"description": "Prometheus has failed to scrape ingress-acme a:9402 for 5 minutes. While no controller runs, " +
								"no certificate is issued or renewed. Check the Deployment ingress-acme/ingress-acme (kubectl -n ingress-acme get pods,events).",
						},
					}}},
				},
			},
			{
				Name:     "absent",
				Interval: "1m",
				InputSeries: []inputSeries{
					{`up{job="something-else",instance="x:1"}`, "1+0x20"},
				},
				AlertRuleTest: []alertTest{
					{EvalTime: "4m", Alertname: "IngressAcmeDown", ExpAlerts: none},
					{EvalTime: "6m", Alertname: "IngressAcmeDown", ExpAlerts: []expAlert{{
						ExpLabels: map[string]string{"job": "ingress-acme", "severity": "warning"},
						ExpAnnotations: map[string]string{
							"summary": "ingress-acme is down or not scraped.",
							"description": "Prometheus has no ingress-acme target (job=\"ingress-acme\") at all. While no controller runs, " +
								"no certificate is issued or renewed. Check the Deployment ingress-acme/ingress-acme (kubectl -n ingress-acme get pods,events).",
						},
					}}},
				},
			},
			{
				// Five-minute samples over 8 h: the 6 h window and its offset.
				Name:     "no successful ACME calls",
				Interval: "5m",
				InputSeries: []inputSeries{
					// a: the CA stops answering (code 0) at 6h05; its last 2xx is older.
					acme("a:9402", "new-order", "0", "0+0x72 1+1x28"),
					acme("a:9402", "directory", "200", "4+0x100"),
					// b: some requests fail, others succeed.
					acme("b:9402", "new-order", "0", "0+1x100"),
					acme("b:9402", "order", "200", "0+1x100"),
					// c: no requests at all lately (nothing to renew).
					acme("c:9402", "new-order", "201", "7+0x100"),
					acme("c:9402", "new-order", "0", "2+0x100"),
					// d: a new process: one 2xx (its series appears at 1) among the failures.
					acme("d:9402", "new-order", "0", "0+0x72 1+1x28"),
					acme("d:9402", "directory", "200", "_x74 1+0x26"),
				},
				AlertRuleTest: []alertTest{
					{EvalTime: "6h30m", Alertname: "IngressAcmeNoSuccessfulACMECalls", ExpAlerts: none}, // failing since 6h05, for 30m
					{EvalTime: "8h", Alertname: "IngressAcmeNoSuccessfulACMECalls", ExpAlerts: []expAlert{{
						ExpLabels: map[string]string{"job": "ingress-acme", "instance": "a:9402", "severity": "warning"},
						ExpAnnotations: map[string]string{
							"summary": "ingress-acme a:9402 made 24 ACME requests in 6 h and none succeeded.",
							"description": "None of the 24 requests ingress-acme a:9402 sent to the ACME CA in the last 6 hours got a 2xx answer " +
								"(code 0 means no answer at all). The CA is unreachable from the cluster, rate-limiting this account (429), " +
								"or rejecting it. Compare ingress_acme_acme_requests_total by code and endpoint, and check --acme-directory, " +
								"egress to the CA and the CA's status page.",
						},
					}}},
				},
			},
		},
	}
}

// dashboardExpr is one query of the Grafana dashboard.
type dashboardExpr struct{ title, expr string }

type dashboardPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos *struct{ X, Y, W, H int } `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

type dashboard struct {
	Title         string           `json:"title"`
	UID           string           `json:"uid"`
	SchemaVersion int              `json:"schemaVersion"`
	Panels        []dashboardPanel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(deployPath(t, "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		t.Fatalf("grafana-dashboard.json: trailing data after the dashboard")
	}
	return d
}

func dashboardExprs(t *testing.T) []dashboardExpr {
	t.Helper()
	var out []dashboardExpr
	for _, p := range loadDashboard(t).Panels {
		for _, tg := range p.Targets {
			out = append(out, dashboardExpr{p.Title, tg.Expr})
		}
	}
	return out
}

// deploy/grafana-dashboard.json is a Grafana dashboard with a Prometheus data
// source variable and the panels an operator needs, querying metrics that exist.
func TestMetricsDashboard(t *testing.T) {
	t.Parallel()
	d := loadDashboard(t)
	if d.SchemaVersion < 36 || d.SchemaVersion > 41 {
		t.Errorf("schemaVersion: got %d, want about 39", d.SchemaVersion)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("title %q, uid %q: want both", d.Title, d.UID)
	}
	dsVar := false
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = v.Name == "datasource"
		}
	}
	if !dsVar {
		t.Error("no datasource variable named datasource of type prometheus")
	}
	known := metricNames(t)
	known["up"] = true
	ids := map[int]bool{}
	titles := map[string]bool{}
	for _, p := range d.Panels {
		titles[p.Title] = true
		if ids[p.ID] {
			t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.Datasource.UID != "${datasource}" || p.Datasource.Type != "prometheus" {
			t.Errorf("panel %q: datasource %+v, want the variable ${datasource}", p.Title, p.Datasource)
		}
		if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no query", p.Title)
		}
		for _, tg := range p.Targets {
			if u := unknownNames(tg.Expr, known); len(u) > 0 {
				t.Errorf("panel %q: no such metric %v in %s", p.Title, u, tg.Expr)
			}
			if strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") {
				t.Errorf("panel %q: unbalanced parentheses in %s", p.Title, tg.Expr)
			}
		}
	}
	for _, want := range []string{"Certificate expiry (days left)", "Issuance outcomes", "ACME request latency", "Work queue depth"} {
		if !titles[want] {
			t.Errorf("no panel %q", want)
		}
	}
	var latency []string
	for _, e := range dashboardExprs(t) {
		if e.title == "ACME request latency" {
			latency = append(latency, e.expr)
		}
	}
	if len(latency) != 2 || !strings.Contains(latency[0], "histogram_quantile(0.5,") || !strings.Contains(latency[1], "histogram_quantile(0.95,") ||
		!strings.Contains(latency[1], "by (le, endpoint)") {
		t.Errorf("ACME request latency: got %q, want p50 and p95 by endpoint", latency)
	}
}
