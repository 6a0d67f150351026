package e2e

import (
	"bytes"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingress-acme/ingress-acme/metrics"
)

// The controller's /metrics as promtool sees it, and the series names its
// collectors expose (which the alerts and the dashboard may query).

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
