package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// PrometheusJob is the job name under which StartPrometheus scrapes its
// targets: the job deploy/prometheus-rules.yaml expects (up{job="ingress-acme"}).
const PrometheusJob = "ingress-acme"

// Prometheus is a real Prometheus server on the testbed, scraping some targets
// every second. Its methods are safe for concurrent use.
type Prometheus struct {
	// URL is http://127.0.0.1:PORT, the web and API address.
	URL string
	// Targets are the host:port addresses it scrapes (job PrometheusJob).
	Targets []string

	tb   *Testbed
	name string
	http *http.Client
}

// StartPrometheus starts Prometheus ("prometheus-N", logging to
// Dir/logs/prometheus-N.log, storing in Dir/data/prometheus-N) on a free
// loopback port, scraping /metrics of every target (host:port) every second
// under job PrometheusJob, and waits until it answers /-/ready. It uses the
// prometheus binary on PATH (`make tools` installs it). Nothing is written or
// sent anywhere else: no remote write, no remote read, no alertmanager. It is
// stopped by Stop on it, or with the testbed.
func (tb *Testbed) StartPrometheus(ctx context.Context, targets ...string) (*Prometheus, error) {
	if len(targets) == 0 {
		return nil, errors.New("testbed: StartPrometheus needs at least one target")
	}
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		return nil, fmt.Errorf("testbed: prometheus is not installed (make tools): %w", err)
	}
	tb.mu.Lock()
	n := 1
	for tb.procs["prometheus-"+strconv.Itoa(n)] != nil {
		n++
	}
	name := "prometheus-" + strconv.Itoa(n)
	// Reserve the name now; the process is filled in below.
	p := &process{
		name:    name,
		logPath: filepath.Join(tb.Dir, "logs", name+".log"),
		pidPath: filepath.Join(tb.Dir, "run", name+".pid"),
		grace:   5 * time.Second,
		timeout: 30 * time.Second,
	}
	tb.procs[name] = p
	tb.mu.Unlock()

	storage := filepath.Join(tb.Dir, "data", name)
	cfgPath := filepath.Join(tb.Dir, "conf", name+".yml")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfgPath, prometheusConfig(targets), 0o644); err != nil {
		return nil, err
	}
	prom := &Prometheus{
		Targets: append([]string(nil), targets...),
		tb:      tb,
		name:    name,
		http:    &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}},
	}
	var port int
	p.command = func() ([]string, []string) {
		return []string{bin,
			"--config.file=" + cfgPath,
			"--storage.tsdb.path=" + storage,
			"--web.listen-address=" + hostPort(port),
			"--log.level=info",
		}, nil
	}
	p.ready = func(ctx context.Context) error {
		_, err := get(ctx, prom.http, prom.URL+"/-/ready", "")
		return err
	}
	// Like startInitial: a port picked free can be taken before Prometheus binds
	// it; then pick another, once.
	for attempt := 0; ; attempt++ {
		if err := freePorts(&port); err != nil {
			return nil, err
		}
		prom.URL = "http://" + hostPort(port)
		t0 := time.Now()
		err := tb.run(ctx, p)
		if err == nil {
			tb.logf("testbed: %s up at %s in %.2fs, scraping %s", name, prom.URL, time.Since(t0).Seconds(), strings.Join(targets, ", "))
			return prom, nil
		}
		tb.mu.Lock()
		p.stop()
		tb.mu.Unlock()
		if attempt == 0 && p.bindFailed() {
			continue
		}
		return nil, fmt.Errorf("testbed: %w\n--- last 30 lines of %s ---\n%s", err, p.logPath, p.tail(30))
	}
}

// prometheusConfig scrapes targets every second; the timeout stays below the
// interval, as Prometheus requires.
func prometheusConfig(targets []string) []byte {
	quoted := make([]string, len(targets))
	for i, t := range targets {
		quoted[i] = strconv.Quote(t)
	}
	return []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 800ms
  evaluation_interval: 1s
scrape_configs:
- job_name: %q
  metrics_path: /metrics
  scheme: http
  static_configs:
  - targets: [%s]
`, PrometheusJob, strings.Join(quoted, ", ")))
}

// Stop stops this Prometheus (SIGTERM, SIGKILL after 5 s); a no-op when it is
// not running.
func (p *Prometheus) Stop() {
	p.tb.mu.Lock()
	defer p.tb.mu.Unlock()
	if proc := p.tb.procs[p.name]; proc != nil && proc.running() {
		proc.stop()
	}
}

// LogTail returns the last n lines of this Prometheus's log.
func (p *Prometheus) LogTail(n int) string {
	p.tb.mu.Lock()
	proc := p.tb.procs[p.name]
	p.tb.mu.Unlock()
	return proc.tail(n)
}

// Sample is one element of an instant query's result.
type Sample struct {
	Labels map[string]string
	Value  float64
	Time   time.Time
}

// Query evaluates promql now with /api/v1/query and returns the value of the
// first sample of the result (a vector's first element, or a scalar); ok is
// false when the result is empty. A query Prometheus rejects is an error.
func (p *Prometheus) Query(ctx context.Context, promql string) (value float64, ok bool, err error) {
	samples, err := p.QueryAll(ctx, promql)
	if err != nil || len(samples) == 0 {
		return 0, false, err
	}
	return samples[0].Value, true, nil
}

// QueryAll evaluates promql now with /api/v1/query and returns every sample of
// the result (one for a scalar, none for an empty vector). Range vectors and
// strings are errors.
func (p *Prometheus) QueryAll(ctx context.Context, promql string) ([]Sample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/api/v1/query?"+url.Values{"query": {promql}}.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("prometheus query %q: %w", promql, err)
	}
	defer resp.Body.Close()
	var body struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
		Data      struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("prometheus query %q: %s: %w", promql, resp.Status, err)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("prometheus query %q: %s: %s: %s", promql, resp.Status, body.ErrorType, body.Error)
	}
	switch body.Data.ResultType {
	case "vector":
		var vec []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(body.Data.Result, &vec); err != nil {
			return nil, fmt.Errorf("prometheus query %q: %w", promql, err)
		}
		out := make([]Sample, 0, len(vec))
		for _, s := range vec {
			v, ts, err := parsePoint(s.Value)
			if err != nil {
				return nil, fmt.Errorf("prometheus query %q: %w", promql, err)
			}
			out = append(out, Sample{Labels: s.Metric, Value: v, Time: ts})
		}
		return out, nil
	case "scalar":
		var pt [2]any
		if err := json.Unmarshal(body.Data.Result, &pt); err != nil {
			return nil, fmt.Errorf("prometheus query %q: %w", promql, err)
		}
		v, ts, err := parsePoint(pt)
		if err != nil {
			return nil, fmt.Errorf("prometheus query %q: %w", promql, err)
		}
		return []Sample{{Value: v, Time: ts}}, nil
	default:
		return nil, fmt.Errorf("prometheus query %q: result type %q, want vector or scalar", promql, body.Data.ResultType)
	}
}

// parsePoint decodes the API's [unix seconds (number), "value" (string)].
func parsePoint(pt [2]any) (float64, time.Time, error) {
	ts, ok := pt[0].(float64)
	if !ok {
		return 0, time.Time{}, fmt.Errorf("bad sample time %v", pt[0])
	}
	s, ok := pt[1].(string)
	if !ok {
		return 0, time.Time{}, fmt.Errorf("bad sample value %v", pt[1])
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("bad sample value %q: %w", s, err)
	}
	sec := int64(ts)
	return v, time.Unix(sec, int64((ts-float64(sec))*1e9)), nil
}
