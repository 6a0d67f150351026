package main

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// targetBehind is how soon a good Ingress must be valid whatever the number
// of unreachable ones in front of it ("within a few seconds").
const targetBehind = 5 * time.Second

// hasFlag reports whether the controller binary lists flag in its --help.
func (b *bench) hasFlag(flag string) bool {
	out, _ := exec.Command(b.bin, "--help").CombinedOutput()
	return strings.Contains(string(out), "-"+flag)
}

// unreachable measures, for each N of b.scale.unreachable, a fresh controller
// given N Ingresses whose challenge can never be answered (an ingress class no
// ingress controller serves) and, 2 s later, one good Ingress: the time until
// the good one's Secret is valid, and the controller's goroutines
// (go_goroutines) and peak RSS meanwhile.
func (b *bench) unreachable(ctx context.Context) error {
	var counts []int
	for _, f := range strings.Split(b.scale.unreachable, ",") {
		k, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || k < 0 {
			return fmt.Errorf("-unreachable: bad number %q", f)
		}
		counts = append(counts, k)
	}
	var extra []string
	if b.scale.maxInFlight > 0 {
		if b.hasFlag("max-orders-in-flight") {
			extra = []string{"--max-orders-in-flight", fmt.Sprint(b.scale.maxInFlight)}
			b.say("the controller has --max-orders-in-flight: passing %d", b.scale.maxInFlight)
		} else {
			b.say("the controller has no --max-orders-in-flight flag: not passed")
		}
	}
	for _, n := range counts {
		if err := b.behind(ctx, n, extra); err != nil {
			return err
		}
	}
	return nil
}

// behind runs one round of unreachable with n unreachable Ingresses.
func (b *bench) behind(ctx context.Context, n int, extra []string) error {
	ns, web, c, err := b.freshController(ctx, fmt.Sprintf("behind-%d", n), extra...)
	if err != nil {
		return err
	}
	defer web.Close()
	stopped := false
	defer func() {
		if !stopped {
			b.stopController(c, ns)
		}
	}()
	bad := names("unreachable", n)
	if err := b.parallel(ctx, n, func(i int) error {
		ing := ingress(ns, bad[i], "web")
		class := unservedClass
		ing.Spec.IngressClassName = &class
		_, err := b.client.NetworkingV1().Ingresses(ns).Create(ctx, ing, metav1.CreateOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("create unreachable ingresses: %w", err)
	}
	b.say("%d unreachable Ingresses created (class %s, load %s); the good one in 2 s", n, unservedClass, loadavg())

	// Sample goroutines and memory every second until the good one is valid.
	var mu sync.Mutex
	var maxG float64
	var peak uint64
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			g, ok := c.Metric("go_goroutines")
			st, err := testbed.ReadProcStats(c.Pid())
			mu.Lock()
			if ok && g > maxG {
				maxG = g
			}
			if err == nil && st.PeakRSS > peak {
				peak = st.PeakRSS
			}
			mu.Unlock()
			select {
			case <-sampleCtx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	})
	select {
	case <-ctx.Done():
		stopSampling()
		wg.Wait()
		return ctx.Err()
	case <-time.After(2 * time.Second):
	}
	is, err := b.issue(ctx, ns, "web", []string{"good"}, b.scale.unreachableTimeout)
	stopSampling()
	wg.Wait()
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return err
	}
	scenario := fmt.Sprintf("1 good Ingress behind %d unreachable: valid", n)
	if len(is.missing) > 0 {
		b.add(scenario, withLoad("not valid after "+secs(b.scale.unreachableTimeout)), "<= "+secs(targetBehind), "MISSED")
	} else {
		d := is.valid["good"].Sub(is.start)
		b.add(scenario, withLoad(fmt.Sprintf("%s (served %s)", secs(d), servedAfter(is, "good"))), "<= "+secs(targetBehind), verdict(d <= targetBehind))
	}
	warned, _ := c.Metric("ingress_acme_issuances_total", "outcome", "failure")
	checksFailed, _ := c.Metric("ingress_acme_self_checks_total", "outcome", "fail")
	b.say("  behind %d: good one valid after %s; meanwhile at most %.0f goroutines, peak RSS %s; %.0f failed issuances, %.0f failed self-checks so far",
		n, servedOrNot(is), maxG, mib(peak), warned, checksFailed)
	if n == maxCount(b.scale.unreachable) && n > 0 {
		b.add(fmt.Sprintf("  controller goroutines, %d unreachable", n), withLoad(fmt.Sprintf("%.0f (most seen, sampled every second)", maxG)), "", "")
		b.add(fmt.Sprintf("  controller peak RSS, %d unreachable", n), withLoad(mib(peak)), "", "")
	}
	// Stop mid-way (the unreachable ones are still being tried): nothing may
	// be left patched.
	stopped = true
	b.stopController(c, ns)
	list, err := b.client.NetworkingV1().Ingresses(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	left := 0
	for _, ing := range list.Items {
		if ing.Annotations[journalAnnotation] != "" {
			left++
		}
	}
	if left > 0 {
		b.note("behind %d: %d Ingresses still carried the challenge journal after SIGTERM", n, left)
	}
	return nil
}

func servedOrNot(is *issuance) string {
	if t, ok := is.valid["good"]; ok {
		return secs(t.Sub(is.start))
	}
	return "never (within the timeout)"
}

// maxCount is the largest number in a comma-separated list.
func maxCount(list string) int {
	m := 0
	for _, f := range strings.Split(list, ",") {
		if k, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && k > m {
			m = k
		}
	}
	return m
}
