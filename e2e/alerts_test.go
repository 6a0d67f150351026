package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The alerting rules in deploy/prometheus-rules.yaml, checked and unit-tested
// with promtool.

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
