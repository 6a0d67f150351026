package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// Targets the developers promised.
const (
	targetOne     = 1500 * time.Millisecond // one Ingress served
	targetHundred = 15 * time.Second        // 100 at once, all valid
	flatTolerance = 0.10                    // peak RSS with 5000 Secrets at most 10% above without
)

// startController prepares and starts a controller for ns with the default
// flags plus --workers; the caller stops it.
func (b *bench) startController(ctx context.Context, ns string) (*testbed.Controller, error) {
	dir := filepath.Join(b.tb.Dir, "controller-"+ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	c, err := b.tb.NewController(ctx, testbed.ControllerOptions{
		Binary: b.bin, Namespace: ns, Dir: dir, Extra: append([]string{"--workers", fmt.Sprint(b.workers)}, b.extra...),
	})
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := c.Start(); err != nil {
		return nil, err
	}
	b.say("controller for %s ready in %.2fs (pid %d)", ns, time.Since(t0).Seconds(), c.Pid())
	return c, nil
}

// stopController stops c and notes an unclean exit.
func (b *bench) stopController(c *testbed.Controller, ns string) {
	t0 := time.Now()
	code := c.Stop()
	took := time.Since(t0)
	b.say("controller for %s stopped in %.2fs, exit code %d", ns, took.Seconds(), code)
	if code != 0 {
		last := ""
		if recs := c.Logs(); len(recs) > 0 {
			last = fmt.Sprint(recs[len(recs)-1]["msg"], ": ", recs[len(recs)-1]["err"])
		}
		b.note("SIGTERM took %.1fs and the controller exited %d (last log record: %q)", took.Seconds(), code, last)
	}
}

// latencyAndWrites runs the issuance scenarios on one controller: a cold first
// Ingress, single Ingresses, 20 and 100 at once (with API writes counted).
func (b *bench) latencyAndWrites(ctx context.Context) error {
	ns, err := b.tb.CreateNamespace(ctx, "bench")
	if err != nil {
		return err
	}
	web, err := b.tb.Backend(ctx, ns, "web", nil)
	if err != nil {
		return err
	}
	defer web.Close()
	c, err := b.startController(ctx, ns)
	if err != nil {
		return err
	}
	defer b.stopController(c, ns)

	// A cold first issuance: account registration, solver Service and slice.
	b.say("cold start: 1 Ingress (first order: account, solver Service)")
	is, err := b.issue(ctx, ns, "web", []string{"cold"}, 60*time.Second)
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return err
	}
	if len(is.missing) > 0 {
		b.add("1st Ingress (cold start) -> valid Secret", "FAILED: "+is.lastErr["cold-tls"], "", "FAILED")
		return fmt.Errorf("the first certificate was not issued:\n%s", c.LogTail(30))
	}
	b.say("  valid Secret after %s, served after %s", secs(is.valid["cold"].Sub(is.start)), servedAfter(is, "cold"))
	b.add("1st Ingress (cold start) -> valid Secret", secs(is.valid["cold"].Sub(is.start)), "", "")

	// Single Ingresses, one after the other.
	var valid, served []time.Duration
	for i := 1; i <= b.runs; i++ {
		name := fmt.Sprintf("one-%d", i)
		is, err := b.issue(ctx, ns, "web", []string{name}, 30*time.Second)
		if err == nil {
			err = ctx.Err()
		}
		if err != nil {
			return err
		}
		if len(is.missing) > 0 {
			b.say("  run %d: no valid Secret after 30 s: %s", i, is.lastErr[name+"-tls"])
			continue
		}
		valid = append(valid, is.valid[name].Sub(is.start))
		if t, ok := is.served[name]; ok {
			served = append(served, t.Sub(is.start))
		}
		b.say("  run %d/%d: valid Secret after %s, served over HTTPS after %s", i, b.runs, secs(is.valid[name].Sub(is.start)), servedAfter(is, name))
		if err := b.waitClean(ctx, ns, []string{name}, 10*time.Second); err != nil {
			b.note("run %d: %v", i, err)
		}
	}
	b.add(stats("1 Ingress, annotation -> valid Secret", valid, b.runs))
	scen, res, _, _ := stats("1 Ingress, annotation -> served (HTTPS)", served, b.runs)
	servedOK := verdict(len(served) == b.runs && len(served) > 0 && served[len(served)-1] <= targetOne)
	b.add(scen, res, "<= "+secs(targetOne)+" (every run)", servedOK)

	// Batches; the API writes of the 100 are counted.
	var before requestCounts
	var ctlBefore map[string]float64
	for _, n := range []int{20, 100} {
		batch := names(fmt.Sprintf("batch%d", n), n)
		b.say("%d Ingresses at once", n)
		if n == 100 {
			var err error
			if before, err = b.apiRequests(ctx); err != nil {
				return err
			}
			if ctlBefore, err = scrape(ctx, "http://"+c.MetricsAddr+"/metrics", "ingress_acme_"); err != nil {
				return err
			}
		}
		windowStart := time.Now()
		is, err := b.issue(ctx, ns, "web", batch, 3*time.Minute)
		if err == nil {
			err = ctx.Err()
		}
		if err != nil {
			return err
		}
		scenario := fmt.Sprintf("%d Ingresses at once, all valid", n)
		target, ok := "", len(is.missing) == 0
		if n == 100 {
			target = "<= " + secs(targetHundred)
			ok = ok && is.total() <= targetHundred
		}
		if len(is.missing) > 0 {
			b.say("  %d of %d Secrets never valid, e.g. %s: %s", len(is.missing), n, is.missing[0], is.lastErr[is.missing[0]+"-tls"])
			b.add(scenario, fmt.Sprintf("%d of %d valid after %s", n-len(is.missing), n, secs(3*time.Minute)), target, "FAILED")
			continue
		}
		ds := durations(is.start, is.valid)
		b.say("  all %d valid after %s (first %s, median %s)", n, secs(is.total()), secs(ds[0]), secs(median(ds)))
		v := ""
		if target != "" {
			v = verdict(ok)
		}
		b.add(scenario, secs(is.total()), target, v)
		b.explainBatch(c, ns, is)

		// Let the controller finish (spec.tls, Events) before counting.
		if err := b.waitClean(ctx, ns, batch, 30*time.Second); err != nil {
			b.note("%v", err)
		}
		if err := b.waitEvents(ctx, ns, "Issued", batch, 30*time.Second); err != nil {
			b.note("%v", err)
		}
		time.Sleep(time.Second) // the event broadcaster writes asynchronously
		if n == 100 {
			after, err := b.apiRequests(ctx)
			if err != nil {
				return err
			}
			b.reportWrites(before, after, n, time.Since(windowStart))
			ctlAfter, err := scrape(ctx, "http://"+c.MetricsAddr+"/metrics", "ingress_acme_")
			if err != nil {
				return err
			}
			b.explainOrders(ctlBefore, ctlAfter, n)
		}
	}

	st, err := testbed.ReadProcStats(c.Pid())
	if err != nil {
		return err
	}
	b.add("controller peak RSS, after all the above", mib(st.PeakRSS), "", "")
	b.add("controller CPU seconds (whole run)", fmt.Sprintf("%.1f s (%d certificates)", st.CPU.Seconds(), c.Count("certificate issued")), "", "")
	b.summarizeLogs(c)
	return nil
}

func servedAfter(is *issuance, name string) string {
	if t, ok := is.served[name]; ok {
		return secs(t.Sub(is.start))
	}
	return "never (within the timeout)"
}

func verdict(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISSED"
}

// stats formats "median x (min y, max z) over n runs" of sorted-or-not ds.
func stats(scenario string, ds []time.Duration, runs int) (string, string, string, string) {
	if len(ds) == 0 {
		return scenario, "no successful run", "", "FAILED"
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	res := fmt.Sprintf("median %s (min %s, max %s) over %d runs", secs(median(ds)), secs(ds[0]), secs(ds[len(ds)-1]), len(ds))
	if len(ds) < runs {
		res += fmt.Sprintf(", %d failed", runs-len(ds))
		return scenario, res, "", "FAILED"
	}
	return scenario, res, "", ""
}

// explainBatch splits the batch's time, from the controller's log, into the
// wait before each order started and the order itself.
func (b *bench) explainBatch(c *testbed.Controller, ns string, is *issuance) {
	ordering := map[string]time.Time{}
	var took []time.Duration
	for _, rec := range c.Logs() {
		secret, _ := rec["secret"].(string)
		name := strings.TrimSuffix(strings.TrimPrefix(secret, ns+"/"), "-tls")
		if _, ok := is.created[name]; !ok {
			continue
		}
		switch rec["msg"] {
		case "ordering certificate":
			if t, err := time.Parse(time.RFC3339Nano, fmt.Sprint(rec["time"])); err == nil {
				if _, seen := ordering[name]; !seen {
					ordering[name] = t
				}
			}
		case "certificate issued":
			if d, err := time.ParseDuration(fmt.Sprint(rec["took"])); err == nil {
				took = append(took, d)
			}
		}
	}
	var waits []time.Duration
	for name, t := range ordering {
		waits = append(waits, t.Sub(is.created[name]))
	}
	sort.Slice(waits, func(i, j int) bool { return waits[i] < waits[j] })
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	if len(waits) == 0 || len(took) == 0 {
		return
	}
	b.say("  controller log: order started %s..%s (median %s) after the Create; an order took %s..%s (median %s)",
		secs(waits[0]), secs(waits[len(waits)-1]), secs(median(waits)), secs(took[0]), secs(took[len(took)-1]), secs(median(took)))
}

// summarizeLogs notes warnings, errors and suspicious records of c.
func (b *bench) summarizeLogs(c *testbed.Controller) {
	byMsg := map[string]int{}
	var firstErr map[string]any
	for _, rec := range c.Logs() {
		lvl, _ := rec["level"].(string)
		if lvl == "WARN" || lvl == "ERROR" {
			byMsg[lvl+" "+fmt.Sprint(rec["msg"])]++
			if firstErr == nil {
				firstErr = rec
			}
		}
	}
	issued := c.Count("certificate issued")
	orders := c.Count("order created")
	leftovers := c.Count("removed leftover challenge paths")
	b.say("controller log: %d certificates issued, %d orders, %d \"removed leftover challenge paths\"", issued, orders, leftovers)
	if orders != issued {
		b.note("%d orders for %d certificates issued", orders, issued)
	}
	if leftovers > 0 {
		b.note("%d of %d issuances were followed by \"removed leftover challenge paths\" although the order had cleaned up itself", leftovers, issued)
	}
	for msg, n := range byMsg {
		b.note("%d log records %q", n, msg)
	}
	if firstErr != nil {
		b.say("  first warning/error: %v", firstErr)
	}
}

// memory compares the peak RSS of two fresh controllers that each issue one
// certificate: one in an empty namespace, one in a namespace with b.fillers
// unrelated Secrets.
func (b *bench) memory(ctx context.Context) error {
	var peak [2]uint64
	for i, fill := range []int{0, b.fillers} {
		ns, err := b.tb.CreateNamespace(ctx, fmt.Sprintf("mem-%d", fill))
		if err != nil {
			return err
		}
		if fill > 0 {
			b.say("creating %d unrelated Secrets (1 KiB, Opaque) in %s", fill, ns)
			t0 := time.Now()
			if err := b.fillSecrets(ctx, ns, fill); err != nil {
				return err
			}
			b.say("  created in %.1fs", time.Since(t0).Seconds())
		}
		web, err := b.tb.Backend(ctx, ns, "web", nil)
		if err != nil {
			return err
		}
		c, err := b.startController(ctx, ns)
		if err != nil {
			web.Close()
			return err
		}
		is, err := b.issue(ctx, ns, "web", []string{"mem"}, 60*time.Second)
		if err == nil && len(is.missing) == 0 {
			err = b.waitClean(ctx, ns, []string{"mem"}, 10*time.Second)
		} else if err == nil {
			err = fmt.Errorf("no certificate in %s: %s\n%s", ns, is.lastErr["mem-tls"], c.LogTail(20))
		}
		var st testbed.ProcStats
		if err == nil {
			st, err = testbed.ReadProcStats(c.Pid())
		}
		b.stopController(c, ns)
		web.Close()
		if err != nil {
			return err
		}
		peak[i] = st.PeakRSS
		b.say("  %d other Secrets: certificate valid after %s, peak RSS %s, CPU %.2fs", fill, secs(is.valid["mem"].Sub(is.start)), mib(st.PeakRSS), st.CPU.Seconds())
	}
	b.add("controller peak RSS, 0 other Secrets", mib(peak[0]), "", "")
	diff := int64(peak[1]) - int64(peak[0])
	res := fmt.Sprintf("%s (%+.1f MiB, %+.0f%%)", mib(peak[1]), float64(diff)/(1<<20), 100*float64(diff)/float64(peak[0]))
	ok := float64(diff) <= flatTolerance*float64(peak[0])
	b.add(fmt.Sprintf("controller peak RSS, %d other Secrets", b.fillers), res, fmt.Sprintf("flat (<= +%.0f%%)", 100*flatTolerance), verdict(ok))
	return nil
}

// fillSecrets creates n Opaque Secrets of 1 KiB in ns, 32 at a time.
func (b *bench) fillSecrets(ctx context.Context, ns string, n int) error {
	api := b.client.CoreV1().Secrets(ns)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(n) || ctx.Err() != nil {
					return
				}
				data := make([]byte, 1024)
				_, _ = rand.Read(data)
				s := &corev1.Secret{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("filler-%05d", i), Namespace: ns, Labels: map[string]string{"app": "filler"}},
					Type:       corev1.SecretTypeOpaque,
					Data:       map[string][]byte{"blob": data},
				}
				if _, err := api.Create(ctx, s, metav1.CreateOptions{}); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("create secrets: %w", firstErr)
	}
	return ctx.Err()
}
