package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ingress-acme/ingress-acme/core"
	"github.com/ingress-acme/ingress-acme/e2e/testbed"
	"github.com/ingress-acme/ingress-acme/secrets"
)

// unservedClass is an ingress class no ingress controller on the testbed
// serves: Traefik ignores Ingresses of that class.
const unservedClass = "bench-unserved"

// restart puts b.scale.restartCerts valid certificates in place (Secrets
// exactly as the controller writes them, Ingresses whose spec.tls names them),
// starts a controller on them, stops it, and measures its restart: time until
// /readyz answers and every certificate's ready gauge is 1, orders placed, CA
// requests in the first b.scale.restartWindow by endpoint, the most
// renewal-information requests in any one second, and peak RSS.
//
// The certificates come from a second Pebble, which the controller uses as
// its CA in this scenario: the bench orders them itself, spread over several
// accounts (Pebble slows down past a few thousand orders on one account) and
// answering dns-01 through pebble-challtestsrv, so the CA knows every one of
// them and answers renewal information for each, as it would for certificates
// the controller had ordered. The Ingresses have a class Traefik does not
// serve, so Traefik does not spend the machine's two cores loading 10,000
// routes while the controller is measured; the controller serves every class.
func (b *bench) restart(ctx context.Context) error {
	n := b.scale.restartCerts
	ca, err := b.tb.ExtraPebble(ctx, "restart", nil, nil)
	if err != nil {
		return err
	}
	defer ca.Stop()
	ns, err := b.tb.CreateNamespace(ctx, "restart")
	if err != nil {
		return err
	}
	batch := names("r", n)
	hosts := make([]string, n)
	for i, name := range batch {
		hosts[i] = host(ns, name)
	}

	bi := newBatchIssuer(b.tb, ca.Directory)
	bi.Accounts = b.scale.restartAccounts
	bi.Progress = func(done, total int) { b.say("  %d/%d issued (load %s)", done, total, loadavg()) }
	b.say("issuing %d certificates from a second Pebble with %d accounts over dns-01 (load %s)", n, bi.Accounts, loadavg())
	t0 := time.Now()
	certs, err := bi.Issue(ctx, hosts)
	if err != nil {
		return err
	}
	issueTook := time.Since(t0)
	b.say("  issued in %.0f s (%.0f per second)", issueTook.Seconds(), float64(n)/issueTook.Seconds())

	t0 = time.Now()
	if err := b.parallel(ctx, n, func(i int) error {
		key := certs[i].Key
		s, err := secrets.Build(ns, batch[i]+"-tls", core.Certificate{ChainPEM: certs[i].ChainPEM, Key: key, Directory: ca.Directory}, "", "")
		if err != nil {
			return err
		}
		_, err = b.client.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("create secrets: %w", err)
	}
	if err := b.parallel(ctx, n, func(i int) error {
		ing := ingress(ns, batch[i], "web")
		class := unservedClass
		ing.Spec.IngressClassName = &class
		ing.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{hosts[i]}, SecretName: batch[i] + "-tls"}}
		_, err := b.client.NetworkingV1().Ingresses(ns).Create(ctx, ing, metav1.CreateOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("create ingresses: %w", err)
	}
	b.say("  %d Secrets and %d Ingresses created in %.0f s", n, n, time.Since(t0).Seconds())
	b.add(fmt.Sprintf("restart, %d valid certificates: made by", n), fmt.Sprintf("the bench: 2nd Pebble, %d accounts, dns-01, %.0f s", bi.Accounts, issueTook.Seconds()), "", "")
	b.note("restart: the %d certificates were ordered by the bench from a second Pebble (the controller's CA in that scenario) over %d accounts with dns-01, and written as Secrets the way the controller writes them (secrets.Build, with that CA's directory); their Ingresses have spec.tls and the class %q, which Traefik does not serve", n, bi.Accounts, unservedClass)

	dir := filepath.Join(b.tb.Dir, "controller-"+ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	c, err := b.tb.NewController(ctx, testbed.ControllerOptions{
		Binary: b.bin, Namespace: ns, Dir: dir,
		Extra: append(append([]string{"--workers", fmt.Sprint(b.workers)}, b.extra...), "--acme-directory", ca.Directory),
	})
	if err != nil {
		return err
	}
	restartLog := pebbleLogPath(b.tb, "pebble-restart")
	var orders int
	for run := 1; run <= 2; run++ {
		what := "first start"
		if run == 2 {
			what = "restart"
		}
		pl := followPebble(restartLog)
		window := b.scale.restartWindow
		if run == 1 {
			window = 0 // only until every certificate is judged
		}
		m, err := b.measureStart(ctx, c, n, window)
		if err != nil {
			return err
		}
		reqs, err := pl.requests()
		if err != nil {
			return err
		}
		orders += newOrders(reqs)
		var inWindow []pebbleRequest
		perSec := map[int64]int{}
		for _, r := range reqs {
			if r.at.Before(m.start.Truncate(time.Second)) || !r.at.Before(m.start.Add(b.scale.restartWindow)) {
				continue
			}
			inWindow = append(inWindow, r)
			if endpointOf(r) == "renewal-info" {
				perSec[r.at.Unix()]++
			}
		}
		peakSec, peakAt := 0, int64(0)
		for s, k := range perSec {
			if k > peakSec || k == peakSec && s < peakAt {
				peakSec, peakAt = k, s
			}
		}
		ready := "never (within " + secs(m.limit) + ")"
		ok := false
		if !m.complete.IsZero() {
			all := max(m.readyz, m.complete.Sub(m.start))
			ready = fmt.Sprintf("%s (/readyz %s, gauge complete %s)", secs(all), secs(m.readyz), secs(m.complete.Sub(m.start)))
			ok = all <= targetRestartReady
		}
		b.say("  %s: %s; %d new orders; CA requests in the first %s (Pebble's log): %s", what, ready, newOrders(reqs), b.scale.restartWindow, countByEndpoint(inWindow))
		b.say("  controller's ingress_acme_acme_requests_total at the end (%s after its start): %s", time.Since(m.start).Round(time.Second), m.acmeRequests)
		b.say("  renewal-information requests per second: %s", perSecond(perSec, m.start))
		b.say("  controller peak RSS %s, CPU %.1f s, most goroutines seen %.0f", mib(m.stats.PeakRSS), m.stats.CPU.Seconds(), m.goroutines)
		if run == 1 {
			b.add("  first start on them: ready", withLoad(ready), "", "")
			b.stopController(c, ns)
			continue
		}
		b.add(fmt.Sprintf("restart, %d valid certificates: ready", n), withLoad(ready), "<= "+secs(targetRestartReady), verdict(ok))
		b.add("  orders placed (first start and restart)", fmt.Sprint(orders), "0", verdict(orders == 0))
		b.add(fmt.Sprintf("  CA requests in the first %s (restart)", b.scale.restartWindow), countByEndpoint(inWindow), "", "")
		b.add("  most renewal-info requests in one second", fmt.Sprintf("%d (at +%d s)", peakSec, peakAt-m.start.Unix()), "the configured rate", "")
		b.add(fmt.Sprintf("  controller peak RSS (restart, %d)", n), withLoad(mib(m.stats.PeakRSS)), "<= "+mib(targetRestartRSS), verdict(m.stats.PeakRSS <= targetRestartRSS))
		b.stopController(c, ns)
	}
	if k := c.Count("renewal information unavailable, using the fallback"); k > 0 {
		b.note("restart: %d \"renewal information unavailable\" log records: the CA's renewal information was not used for every certificate", k)
	}
	return nil
}

// startMeasure is what measureStart saw.
type startMeasure struct {
	start        time.Time
	limit        time.Duration // how long it waited for the gauge
	readyz       time.Duration // from the process's start to /readyz 200
	complete     time.Time     // when every certificate's ready gauge was 1 (zero: never)
	acmeRequests string        // ingress_acme_acme_requests_total by endpoint at the window's end
	goroutines   float64       // the most go_goroutines seen
	stats        testbed.ProcStats
}

// measureStart starts c and follows it until n certificates have a ready
// gauge of 1 and window has passed (at most 5 minutes).
func (b *bench) measureStart(ctx context.Context, c *testbed.Controller, n int, window time.Duration) (*startMeasure, error) {
	m := &startMeasure{start: time.Now(), limit: max(5*time.Minute, window)}
	if err := c.Start(); err != nil {
		return nil, err
	}
	m.readyz = time.Since(m.start)
	url := "http://" + c.MetricsAddr + "/metrics"
	deadline := m.start.Add(m.limit)
	// One scrape every 500 ms until the gauge is complete, then every 5 s
	// (for goroutines only): /metrics has three series per certificate.
	var last time.Time
	for {
		if m.complete.IsZero() || time.Since(last) >= 5*time.Second {
			last = time.Now()
			if all, err := scrape(ctx, url, ""); err == nil {
				k := 0
				for series, v := range all {
					if strings.HasPrefix(series, "ingress_acme_certificate_ready{") && v == 1 {
						k++
					}
				}
				if k >= n && m.complete.IsZero() {
					m.complete = time.Now()
				}
				if g := all["go_goroutines"]; g > m.goroutines {
					m.goroutines = g
				}
			}
		}
		if !m.complete.IsZero() && time.Since(m.start) >= window || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	all, err := scrape(ctx, url, "ingress_acme_acme_requests_total{")
	if err != nil {
		return nil, err
	}
	byEP := map[string]float64{}
	for series, v := range all {
		l := parseLabels(series[strings.IndexByte(series, '{')+1 : len(series)-1])
		byEP[l["endpoint"]+" "+l["code"]] += v
	}
	var parts []string
	for _, k := range sortedByValue(byEP) {
		parts = append(parts, fmt.Sprintf("%s: %.0f", k, byEP[k]))
	}
	m.acmeRequests = strings.Join(parts, ", ")
	if m.acmeRequests == "" {
		m.acmeRequests = "none"
	}
	m.stats, err = testbed.ReadProcStats(c.Pid())
	return m, err
}

// perSecond formats counts per second since start, e.g. "+0s 812, +1s 211".
func perSecond(counts map[int64]int, start time.Time) string {
	if len(counts) == 0 {
		return "none"
	}
	keys := make([]int64, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	var parts []string
	for i, k := range keys {
		if i == 20 {
			parts = append(parts, fmt.Sprintf("... (%d seconds in all)", len(keys)))
			break
		}
		parts = append(parts, fmt.Sprintf("+%ds %d", k-start.Unix(), counts[k]))
	}
	return strings.Join(parts, ", ")
}

// parallel runs f(0..n-1) on 32 goroutines and returns the first error.
func (b *bench) parallel(ctx context.Context, n int, f func(i int) error) error {
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}
