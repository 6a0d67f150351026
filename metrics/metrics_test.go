package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/client-go/util/workqueue"
	clocktesting "k8s.io/utils/clock/testing"
)

// These tests read the registry with Gather rather than with
// prometheus/testutil: testutil needs github.com/kylelemons/godebug in go.mod,
// which the module does not list; promlint (used below) does not.

// gathered is one gather of a registry: family name -> family.
type gathered map[string]*dto.MetricFamily

func gather(t *testing.T, g prometheus.Gatherer) gathered {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := gathered{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// find returns the metric of family name whose labels include every
// key=value pair of labels, nil when none.
func (g gathered) find(name string, labels ...string) *dto.Metric {
	mf := g[name]
	if mf == nil {
		return nil
	}
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if v, ok := have[labels[i]]; !ok || v != labels[i+1] {
				match = false
			}
		}
		if match {
			return m
		}
	}
	return nil
}

// value is the gauge or counter value of the matching metric; ok is false when
// there is none.
func (g gathered) value(name string, labels ...string) (float64, bool) {
	m := g.find(name, labels...)
	switch {
	case m == nil:
		return 0, false
	case m.Gauge != nil:
		return m.GetGauge().GetValue(), true
	case m.Counter != nil:
		return m.GetCounter().GetValue(), true
	}
	return 0, false
}

// series is how many metrics family name has (0 when it is absent).
func (g gathered) series(name string) int { return len(g[name].GetMetric()) }

func newMetrics(t *testing.T) (*prometheus.Registry, *Metrics) {
	t.Helper()
	reg := prometheus.NewRegistry()
	return reg, New(reg, "v1.2.3-test")
}

func TestBuildInfo(t *testing.T) {
	reg, _ := newMetrics(t)
	g := gather(t, reg)
	m := g.find("ingress_acme_build_info")
	if m == nil {
		t.Fatal("no ingress_acme_build_info")
	}
	labels := map[string]string{}
	for _, lp := range m.GetLabel() {
		labels[lp.GetName()] = lp.GetValue()
	}
	if got, want := labels["version"], "v1.2.3-test"; got != want {
		t.Errorf("build_info version: got %q, want %q", got, want)
	}
	if got, want := labels["goversion"], runtime.Version(); got != want {
		t.Errorf("build_info goversion: got %q, want %q", got, want)
	}
	if got := m.GetGauge().GetValue(); got != 1 {
		t.Errorf("build_info value: got %v, want 1", got)
	}
}

func TestNewTwiceOnOneRegistryPanics(t *testing.T) {
	reg, _ := newMetrics(t)
	defer func() {
		if recover() == nil {
			t.Error("second New on the same registry: got no panic, want one")
		}
	}()
	New(reg, "again")
}

// Separate registries are independent: no global state.
func TestRegistriesIndependent(t *testing.T) {
	regA, a := newMetrics(t)
	regB, _ := newMetrics(t)
	a.Issuance("issue", "success", time.Second)
	if _, ok := gather(t, regA).value("ingress_acme_issuances_total", "kind", "issue", "outcome", "success"); !ok {
		t.Error("registry A: no issuance counted")
	}
	// (A series may exist at 0: counters may be created ahead of use.)
	if got, _ := gather(t, regB).value("ingress_acme_issuances_total", "kind", "issue", "outcome", "success"); got != 0 {
		t.Errorf("registry B: got %v issuances, want 0", got)
	}
}

func TestSetCertificate(t *testing.T) {
	notAfter := time.Date(2030, 1, 2, 3, 4, 5, 600_000_000, time.UTC)
	renewAt := notAfter.Add(-30 * 24 * time.Hour)
	tests := []struct {
		name      string
		ready     bool
		wantReady float64
	}{
		{"ready", true, 1},
		{"not ready", false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg, m := newMetrics(t)
			m.SetCertificate("shop", "web-tls", notAfter, renewAt, tt.ready)
			g := gather(t, reg)
			checks := []struct {
				family string
				want   float64
			}{
				// Whole seconds: a Unix time, as x509 NotAfter has no fraction.
				{"ingress_acme_certificate_expiry_timestamp_seconds", float64(notAfter.Unix())},
				{"ingress_acme_certificate_renewal_timestamp_seconds", float64(renewAt.Unix())},
				{"ingress_acme_certificate_ready", tt.wantReady},
			}
			for _, c := range checks {
				got, ok := g.value(c.family, "namespace", "shop", "secret", "web-tls")
				if !ok {
					t.Errorf("%s: no series for shop/web-tls", c.family)
					continue
				}
				if got != c.want {
					t.Errorf("%s: got %v, want %v", c.family, got, c.want)
				}
				if n := g.series(c.family); n != 1 {
					t.Errorf("%s: got %d series, want 1", c.family, n)
				}
			}
		})
	}
}

// Setting a certificate again replaces its values; it never adds a series.
func TestSetCertificateOverwrites(t *testing.T) {
	reg, m := newMetrics(t)
	first := time.Unix(2_000_000_000, 0)
	second := first.Add(90 * 24 * time.Hour)
	m.SetCertificate("shop", "web-tls", first, first.Add(-time.Hour), false)
	m.SetCertificate("shop", "web-tls", second, second.Add(-time.Hour), true)
	g := gather(t, reg)
	if got, _ := g.value("ingress_acme_certificate_expiry_timestamp_seconds", "secret", "web-tls"); got != float64(second.Unix()) {
		t.Errorf("expiry: got %v, want %v", got, float64(second.Unix()))
	}
	if got, _ := g.value("ingress_acme_certificate_ready", "secret", "web-tls"); got != 1 {
		t.Errorf("ready: got %v, want 1", got)
	}
	if n := g.series("ingress_acme_certificate_expiry_timestamp_seconds"); n != 1 {
		t.Errorf("expiry series: got %d, want 1", n)
	}
}

func TestDeleteCertificate(t *testing.T) {
	certFamilies := []string{
		"ingress_acme_certificate_expiry_timestamp_seconds",
		"ingress_acme_certificate_renewal_timestamp_seconds",
		"ingress_acme_certificate_ready",
	}
	reg, m := newMetrics(t)
	now := time.Unix(2_000_000_000, 0)
	m.SetCertificate("shop", "web-tls", now, now, true)
	m.SetCertificate("shop", "api-tls", now, now, false)
	m.SetCertificate("blog", "web-tls", now, now, true)

	m.DeleteCertificate("shop", "web-tls")
	g := gather(t, reg)
	for _, f := range certFamilies {
		if g.find(f, "namespace", "shop", "secret", "web-tls") != nil {
			t.Errorf("%s: shop/web-tls still has a series after DeleteCertificate", f)
		}
		if n := g.series(f); n != 2 {
			t.Errorf("%s: got %d series, want 2 (shop/api-tls, blog/web-tls untouched)", f, n)
		}
	}

	// Deleting what is not there is a no-op; deleting the rest leaves nothing,
	// not even an empty family.
	m.DeleteCertificate("nowhere", "nothing")
	m.DeleteCertificate("shop", "api-tls")
	m.DeleteCertificate("blog", "web-tls")
	g = gather(t, reg)
	for _, f := range certFamilies {
		if _, present := g[f]; present {
			t.Errorf("%s: got %d series after deleting every certificate, want the family gone", f, g.series(f))
		}
	}
}

func TestIssuance(t *testing.T) {
	reg, m := newMetrics(t)
	m.Issuance("issue", "success", 1500*time.Millisecond)
	m.Issuance("issue", "success", 500*time.Millisecond)
	m.Issuance("renew", "failure", 40*time.Second)
	g := gather(t, reg)
	tests := []struct {
		kind, outcome string
		count         float64
		sum           float64
	}{
		{"issue", "success", 2, 2.0},
		{"renew", "failure", 1, 40},
	}
	for _, tt := range tests {
		t.Run(tt.kind+"/"+tt.outcome, func(t *testing.T) {
			if got, _ := g.value("ingress_acme_issuances_total", "kind", tt.kind, "outcome", tt.outcome); got != tt.count {
				t.Errorf("issuances_total: got %v, want %v", got, tt.count)
			}
			h := g.find("ingress_acme_order_duration_seconds", "kind", tt.kind, "outcome", tt.outcome).GetHistogram()
			if h == nil {
				t.Fatal("no order_duration_seconds histogram")
			}
			if got := float64(h.GetSampleCount()); got != tt.count {
				t.Errorf("order_duration_seconds count: got %v, want %v", got, tt.count)
			}
			if got := h.GetSampleSum(); got != tt.sum {
				t.Errorf("order_duration_seconds sum: got %v, want %v", got, tt.sum)
			}
		})
	}
	if got, _ := g.value("ingress_acme_issuances_total", "kind", "renew", "outcome", "success"); got != 0 {
		t.Errorf("renew/success: got %v, want 0 (nothing counted it)", got)
	}
}

func TestACMERequest(t *testing.T) {
	reg, m := newMetrics(t)
	m.ACMERequest("new-order", 201, 30*time.Millisecond)
	m.ACMERequest("new-order", 201, 20*time.Millisecond)
	m.ACMERequest("new-order", 400, 10*time.Millisecond)
	m.ACMERequest("directory", 0, 5*time.Second) // no response
	g := gather(t, reg)
	tests := []struct {
		endpoint, code string
		want           float64
	}{
		{"new-order", "201", 2},
		{"new-order", "400", 1},
		{"directory", "0", 1},
	}
	for _, tt := range tests {
		if got, _ := g.value("ingress_acme_acme_requests_total", "endpoint", tt.endpoint, "code", tt.code); got != tt.want {
			t.Errorf("acme_requests_total{endpoint=%s,code=%s}: got %v, want %v", tt.endpoint, tt.code, got, tt.want)
		}
	}
	// The latency histogram is by endpoint only: every code in one.
	h := g.find("ingress_acme_acme_request_duration_seconds", "endpoint", "new-order").GetHistogram()
	if got := h.GetSampleCount(); got != 3 {
		t.Errorf("acme_request_duration_seconds{endpoint=new-order} count: got %d, want 3", got)
	}
	if n := g.series("ingress_acme_acme_request_duration_seconds"); n != 2 {
		t.Errorf("acme_request_duration_seconds series: got %d, want 2", n)
	}
}

func TestChallengeRequestSelfCheckProblem(t *testing.T) {
	reg, m := newMetrics(t)
	m.ChallengeRequest("served")
	m.ChallengeRequest("served")
	m.ChallengeRequest("not_found")
	m.SelfCheck(true)
	m.SelfCheck(false)
	m.SelfCheck(false)
	m.Problem("InvalidAnnotation")
	m.Problem("OrderLimit")
	m.Problem("InvalidAnnotation")
	g := gather(t, reg)
	tests := []struct {
		family, label, value string
		want                 float64
	}{
		{"ingress_acme_challenge_requests_total", "outcome", "served", 2},
		{"ingress_acme_challenge_requests_total", "outcome", "not_found", 1},
		{"ingress_acme_self_checks_total", "outcome", "ok", 1},
		{"ingress_acme_self_checks_total", "outcome", "fail", 2},
		{"ingress_acme_sync_problems_total", "reason", "InvalidAnnotation", 2},
		{"ingress_acme_sync_problems_total", "reason", "OrderLimit", 1},
	}
	for _, tt := range tests {
		if got, _ := g.value(tt.family, tt.label, tt.value); got != tt.want {
			t.Errorf("%s{%s=%s}: got %v, want %v", tt.family, tt.label, tt.value, got, tt.want)
		}
	}
}

// A real client-go rate-limiting queue, on a fake clock, reports through the
// provider: depth, adds, queue and work durations, unfinished work, retries.
func TestWorkqueueProvider(t *testing.T) {
	reg, m := newMetrics(t)
	clk := clocktesting.NewFakeClock(time.Unix(1_700_000_000, 0))
	q := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Hour, time.Hour),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "certificates", MetricsProvider: m.Workqueue(), Clock: clk},
	)
	defer q.ShutDown()
	q.Add("shop/a-tls")
	q.Add("shop/b-tls")
	q.Add("shop/a-tls") // deduplicated: counted as an add, not as depth
	g := gather(t, reg)
	if got, _ := g.value("ingress_acme_workqueue_depth", "name", "certificates"); got != 2 {
		t.Errorf("depth: got %v, want 2", got)
	}
	if got, _ := g.value("ingress_acme_workqueue_adds_total", "name", "certificates"); got != 2 {
		t.Errorf("adds_total: got %v, want 2 (a duplicate Add of a queued key is dropped)", got)
	}

	clk.Step(2 * time.Second)
	key, _ := q.Get()
	gotAt := clk.Now()
	if key != "shop/a-tls" {
		t.Fatalf("Get: got %q, want shop/a-tls", key)
	}
	g = gather(t, reg)
	if got, _ := g.value("ingress_acme_workqueue_depth", "name", "certificates"); got != 1 {
		t.Errorf("depth after Get: got %v, want 1", got)
	}
	lat := g.find("ingress_acme_workqueue_queue_duration_seconds", "name", "certificates").GetHistogram()
	if lat.GetSampleCount() != 1 || lat.GetSampleSum() != 2 {
		t.Errorf("queue_duration_seconds: got count %d sum %v, want count 1 sum 2", lat.GetSampleCount(), lat.GetSampleSum())
	}

	// The queue updates unfinished work on its own ticker: step the clock until
	// it has looked at the item in progress.
	// The two gauges are set one after the other: once the clock stops, they
	// settle on the same age.
	progress := func() (unfinished, longest float64) {
		g := gather(t, reg)
		unfinished, _ = g.value("ingress_acme_workqueue_unfinished_work_seconds", "name", "certificates")
		longest, _ = g.value("ingress_acme_workqueue_longest_running_processor_seconds", "name", "certificates")
		return unfinished, longest
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		clk.Step(500 * time.Millisecond)
		time.Sleep(10 * time.Millisecond)
		if u, l := progress(); u > 0 && l > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("unfinished_work_seconds still 0 with an item in progress")
		}
	}
	for {
		u, l := progress()
		if u == l {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("one item in progress: unfinished_work_seconds %v, longest_running_processor_seconds %v, want equal", u, l)
		}
		time.Sleep(10 * time.Millisecond)
	}

	clk.Step(3 * time.Second)
	worked := clk.Now().Sub(gotAt).Seconds()
	q.AddRateLimited(key) // a failure: back in after the backoff
	q.Done(key)
	g = gather(t, reg)
	if got, _ := g.value("ingress_acme_workqueue_retries_total", "name", "certificates"); got != 1 {
		t.Errorf("retries_total: got %v, want 1", got)
	}
	work := g.find("ingress_acme_workqueue_work_duration_seconds", "name", "certificates").GetHistogram()
	if work.GetSampleCount() != 1 || work.GetSampleSum() != worked {
		t.Errorf("work_duration_seconds: got count %d sum %v, want count 1 sum %v", work.GetSampleCount(), work.GetSampleSum(), worked)
	}
	// AddAfter (how renewals are scheduled) counts as a retry too.
	q.AddAfter("shop/c-tls", time.Hour)
	if got, _ := gather(t, reg).value("ingress_acme_workqueue_retries_total", "name", "certificates"); got != 2 {
		t.Errorf("retries_total after AddAfter: got %v, want 2", got)
	}
}

// Every family, populated, passes the Prometheus linter (the checks of
// `promtool check metrics`).
func TestLint(t *testing.T) {
	reg, m := newMetrics(t)
	now := time.Unix(2_000_000_000, 0)
	m.SetCertificate("shop", "web-tls", now, now, true)
	m.Issuance("issue", "success", time.Second)
	m.ACMERequest("new-order", 201, time.Millisecond)
	m.ChallengeRequest("served")
	m.SelfCheck(true)
	m.Problem("InvalidAnnotation")
	p := m.Workqueue()
	p.NewDepthMetric("q").Inc()
	p.NewAddsMetric("q").Inc()
	p.NewLatencyMetric("q").Observe(1)
	p.NewWorkDurationMetric("q").Observe(1)
	p.NewUnfinishedWorkSecondsMetric("q").Set(1)
	p.NewLongestRunningProcessorSecondsMetric("q").Set(1)
	p.NewRetriesMetric("q").Inc()

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ingress_acme_build_info",
		"ingress_acme_certificate_expiry_timestamp_seconds", "ingress_acme_certificate_renewal_timestamp_seconds", "ingress_acme_certificate_ready",
		"ingress_acme_issuances_total", "ingress_acme_order_duration_seconds",
		"ingress_acme_acme_requests_total", "ingress_acme_acme_request_duration_seconds",
		"ingress_acme_challenge_requests_total", "ingress_acme_self_checks_total", "ingress_acme_sync_problems_total",
		"ingress_acme_workqueue_depth", "ingress_acme_workqueue_adds_total", "ingress_acme_workqueue_queue_duration_seconds",
		"ingress_acme_workqueue_work_duration_seconds", "ingress_acme_workqueue_unfinished_work_seconds",
		"ingress_acme_workqueue_longest_running_processor_seconds", "ingress_acme_workqueue_retries_total",
	}
	g := gathered{}
	for _, mf := range mfs {
		g[mf.GetName()] = mf
		if mf.GetHelp() == "" {
			t.Errorf("%s: no help text", mf.GetName())
		}
	}
	for _, name := range want {
		if g[name] == nil {
			t.Errorf("family %s missing", name)
		}
	}
	if len(g) != len(want) {
		t.Errorf("families: got %d, want %d", len(g), len(want))
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestHandler(t *testing.T) {
	reg, m := newMetrics(t)
	m.SetCertificate("shop", "web-tls", time.Unix(2_000_000_000, 0), time.Unix(1_990_000_000, 0), true)
	srv := httptest.NewServer(Handler(reg))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status: got %d, want 200", resp.StatusCode)
	}
	for _, want := range []string{
		`ingress_acme_certificate_expiry_timestamp_seconds{namespace="shop",secret="web-tls"} 2e+09`,
		`ingress_acme_build_info{goversion="` + runtime.Version() + `",version="v1.2.3-test"} 1`,
		"# TYPE ingress_acme_certificate_ready gauge",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("body lacks %q:\n%s", want, body)
		}
	}
}

// The methods may be called from many goroutines at once (run with -race).
func TestConcurrentUse(t *testing.T) {
	reg, m := newMetrics(t)
	done := make(chan struct{})
	for i := range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for j := range 200 {
				secret := []string{"a-tls", "b-tls"}[(i+j)%2]
				m.SetCertificate("shop", secret, time.Unix(int64(j), 0), time.Unix(0, 0), j%2 == 0)
				m.DeleteCertificate("shop", secret)
				m.Issuance("renew", "success", time.Millisecond)
				m.ACMERequest("order", 200, time.Millisecond)
				m.ChallengeRequest("served")
				m.SelfCheck(j%3 == 0)
				m.Problem("NoHosts")
			}
		}()
	}
	for range 8 {
		<-done
	}
	if got, _ := gather(t, reg).value("ingress_acme_issuances_total", "kind", "renew", "outcome", "success"); got != 8*200 {
		t.Errorf("issuances_total: got %v, want %d", got, 8*200)
	}
}
