package e2e

import (
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
	writeYAML(t, testFile, rulesTests(t, rulesPath))
	out, err = exec.Command(promtool, "test", "rules", testFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SUCCESS") {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	t.Logf("promtool test rules: %s", strings.TrimSpace(string(out)))

	// The harness can fail: expecting the 30-day certificate to alert must not pass.
	wrong := rulesTests(t, rulesPath)
	at := &wrong.Tests[0].AlertRuleTest[1]
	var farAlert expAlert
	readYAML(t, filepath.Join("testdata", "alerts", "wrong_alert.yaml"), &farAlert)
	at.ExpAlerts = append(at.ExpAlerts, farAlert)
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

// readYAML reads the YAML file path into v, failing the test on a field v does
// not have.
func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// rulesTests is the promtool unit test of deploy/prometheus-rules.yaml,
// testdata/alerts/rules_test.yaml, with rulesPath (the rules file's absolute
// path) as its only rule file.
func rulesTests(t *testing.T, rulesPath string) ruleTestFile {
	t.Helper()
	var f ruleTestFile
	readYAML(t, filepath.Join("testdata", "alerts", "rules_test.yaml"), &f)
	f.RuleFiles = []string{rulesPath}
	return f
}
