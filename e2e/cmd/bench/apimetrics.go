package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// writeKey identifies a series of apiserver_request_total for a write.
type writeKey struct {
	verb, resource, subresource, code string
}

// requestCounts are the API server's cumulative requests (writes and GETs).
type requestCounts map[writeKey]float64

// isWrite says whether an API verb changes state.
func isWrite(verb string) bool {
	switch verb {
	case "POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION":
		return true
	}
	return false
}

// apiRequests scrapes kube-apiserver's /metrics (as admin) and returns its
// apiserver_request_total counters for writes, and for GETs of single
// resources (the bench itself only lists and watches).
func (b *bench) apiRequests(ctx context.Context) (requestCounts, error) {
	raw, err := b.client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver /metrics: %w", err)
	}
	out := requestCounts{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		end := strings.LastIndexByte(line, '}')
		if end < 0 {
			continue
		}
		labels := parseLabels(line[len("apiserver_request_total{"):end])
		if !(isWrite(labels["verb"]) || labels["verb"] == "GET" && labels["resource"] != "") || labels["dry_run"] != "" {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(line[end+1:]), 64)
		if err != nil {
			continue
		}
		out[writeKey{labels["verb"], labels["resource"], labels["subresource"], labels["code"]}] += v
	}
	return out, sc.Err()
}

// parseLabels parses `a="x",b="y"` (label values with no escaped quotes,
// which holds for apiserver_request_total).
func parseLabels(s string) map[string]string {
	out := map[string]string{}
	for s != "" {
		eq := strings.IndexByte(s, '=')
		if eq < 0 || eq+1 >= len(s) || s[eq+1] != '"' {
			break
		}
		name := s[:eq]
		rest := s[eq+2:]
		q := strings.IndexByte(rest, '"')
		if q < 0 {
			break
		}
		out[name] = rest[:q]
		s = strings.TrimPrefix(rest[q+1:], ",")
	}
	return out
}

// reportWrites adds the table row for the writes between before and after,
// made while n Ingresses were issued, less the bench's own n Ingress creates.
// Lease renewals (leader election, and the API server's own identity lease)
// depend on time, not on issuance: they are shown apart.
func (b *bench) reportWrites(before, after requestCounts, n int, window time.Duration) {
	type agg struct{ ok, failed float64 }
	byResource := map[string]*agg{}
	byVerb := map[string]float64{}
	var leases, total, failed float64
	gets := map[string]float64{}
	var getTotal float64
	for k, v := range after {
		d := v - before[k]
		if d <= 0 {
			continue
		}
		if k.verb == "GET" {
			if k.resource != "leases" {
				gets[k.resource] += d
				getTotal += d
			}
			continue
		}
		if k.verb == "POST" && k.resource == "ingresses" && k.subresource == "" && k.code == "201" {
			d -= float64(n) // the bench's own creates
			if d <= 0 {
				continue
			}
		}
		if k.resource == "leases" {
			leases += d
			continue
		}
		res := k.resource
		if k.subresource != "" {
			res += "/" + k.subresource
		}
		a := byResource[res]
		if a == nil {
			a = &agg{}
			byResource[res] = a
		}
		if strings.HasPrefix(k.code, "2") {
			a.ok += d
		} else {
			a.failed += d
			failed += d
		}
		total += d
		byVerb[k.verb+" "+res+" "+k.code] += d
	}
	names := make([]string, 0, len(byResource))
	for r := range byResource {
		names = append(names, r)
	}
	sort.Slice(names, func(i, j int) bool {
		ai, aj := byResource[names[i]], byResource[names[j]]
		return ai.ok+ai.failed > aj.ok+aj.failed
	})
	var parts []string
	for _, r := range names {
		a := byResource[r]
		p := fmt.Sprintf("%s %.2f", r, (a.ok+a.failed)/float64(n))
		if a.failed > 0 {
			p += fmt.Sprintf(" of which %.2f failed", a.failed/float64(n))
		}
		parts = append(parts, p)
	}
	b.add(fmt.Sprintf("API writes per issuance (%d at once)", n),
		fmt.Sprintf("%.2f (%s)", total/float64(n), strings.Join(parts, ", ")), "few", "")
	b.add("  lease writes in that window (time-based)", fmt.Sprintf("%.0f in %.1f s", leases, window.Seconds()), "", "")
	var getParts []string
	for _, r := range sortedByValue(gets) {
		getParts = append(getParts, fmt.Sprintf("%s %.2f", r, gets[r]/float64(n)))
	}
	b.add(fmt.Sprintf("API GETs per issuance (%d at once)", n), fmt.Sprintf("%.2f (%s)", getTotal/float64(n), strings.Join(getParts, ", ")), "", "")

	if !slices.ContainsFunc(b.extra, func(f string) bool { return strings.HasPrefix(f, "--api-") }) {
		const qps, burst = 100, 200 // the controller's defaults (config.go)
		reqs := total + getTotal
		b.note("%.1f API requests per issuance (%.2f writes, %.2f GETs) share the controller's client-side limit (--api-qps %d, --api-burst %d): "+
			"%d issuances make %.0f requests, %.1f s at that rate after the burst (Events are written asynchronously, some after the last Secret); compare with -controller-flags \"--api-qps 1000 --api-burst 2000\"",
			reqs/float64(n), total/float64(n), getTotal/float64(n), qps, burst, n, reqs, max(0, reqs-burst)/qps)
	}
	var lines []string
	for k, v := range byVerb {
		lines = append(lines, fmt.Sprintf("%s: %.0f", k, v))
	}
	sort.Strings(lines)
	b.say("  API writes by verb, resource, code (less the bench's %d Ingress creates): %s", n, strings.Join(lines, "; "))
	if failed > 0 {
		b.note("%.0f of %.0f API writes for %d issuances failed (non-2xx): %s", failed, total, n, strings.Join(failedLines(byVerb), "; "))
	}
}

func failedLines(byVerb map[string]float64) []string {
	var out []string
	for k, v := range byVerb {
		f := strings.Fields(k)
		if len(f) == 3 && !strings.HasPrefix(f[2], "2") {
			out = append(out, fmt.Sprintf("%s %s -> %s: %.0f", f[0], f[1], f[2], v))
		}
	}
	sort.Strings(out)
	return out
}

// sortedByValue returns m's keys, largest value first.
func sortedByValue(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	return keys
}

// scrape GETs a Prometheus text endpoint and returns every sample whose
// metric name starts with prefix, keyed by its series (name{labels}).
func scrape(ctx context.Context, url, prefix string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// explainOrders prints, per issuance, where the controller's order time went
// between two scrapes of its metrics: ACME requests by endpoint, self-checks.
func (b *bench) explainOrders(before, after map[string]float64, n int) {
	per := func(series string) float64 { return (after[series] - before[series]) / float64(n) }
	var acme []string
	var acmeSecs float64
	for series := range after {
		if !strings.HasPrefix(series, "ingress_acme_acme_request_duration_seconds_count{") {
			continue
		}
		sum := strings.Replace(series, "_count{", "_sum{", 1)
		cnt, s := per(series), per(sum)
		if cnt <= 0 {
			continue
		}
		acmeSecs += s
		ep := parseLabels(series[strings.IndexByte(series, '{')+1 : len(series)-1])["endpoint"]
		acme = append(acme, fmt.Sprintf("%s %.1f x %.0f ms", ep, cnt, 1000*s/cnt))
	}
	sort.Strings(acme)
	orders := per(`ingress_acme_order_duration_seconds_sum{kind="issue",outcome="success"}`)
	b.say("  controller metrics per issuance: order %.2f s, of which ACME requests %.2f s (%s); self-check attempts ok %.1f, failed %.1f",
		orders, acmeSecs, strings.Join(acme, ", "),
		per(`ingress_acme_self_checks_total{outcome="ok"}`), per(`ingress_acme_self_checks_total{outcome="fail"}`))
}
