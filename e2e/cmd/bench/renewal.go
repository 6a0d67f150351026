package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ingress-acme/ingress-acme/core"
	"github.com/ingress-acme/ingress-acme/e2e/testbed"
	"github.com/ingress-acme/ingress-acme/secrets"
)

// profileAnnotation names the CA profile an Ingress asks for.
const profileAnnotation = "ingress-acme.io/profile"

// certSeen is one certificate a Secret held.
type certSeen struct {
	leaf *x509.Certificate
	seen time.Time // when the bench first saw it in the Secret
}

// shortLived issues b.scale.shortCerts certificates on the "shortlived"
// profile (b.scale.shortValidity) of a CA of its own, with the controller's
// defaults otherwise, then for
// b.scale.shortWindow follows their Secrets and probes each host over HTTPS
// through Traefik (a new connection every time, chain verified against the
// CA's root at the moment of the request): renewals per certificate, wasted
// renewals (a new certificate before half the previous one's lifetime had
// passed), time a Secret held an expired certificate, failed requests.
func (b *bench) shortLived(ctx context.Context) error {
	n, window := b.scale.shortCerts, b.scale.shortWindow
	// A CA of its own: Pebble gives orders that name no profile a random one,
	// so a short "shortlived" profile on the testbed's CA would shorten
	// certificates of the other scenarios too.
	ca, err := b.tb.StartCA(ctx, "shortlived", testbed.CAOptions{
		Profiles: map[string]time.Duration{"shortlived": b.scale.shortValidity},
	})
	if err != nil {
		return err
	}
	defer ca.Stop()
	roots, err := ca.RootPool(ctx)
	if err != nil {
		return err
	}
	saved := b.roots
	b.roots = roots
	defer func() { b.roots = saved }()
	ns, web, c, err := b.freshController(ctx, "shortlived", "--acme-directory", ca.Directory)
	if err != nil {
		return err
	}
	defer web.Close()
	defer b.stopController(c, ns)
	batch := names("short", n)
	b.say("%d Ingresses on the shortlived profile (%s certificates; load %s)", n, b.scale.shortValidity, loadavg())
	is, err := b.issue(ctx, ns, "web", batch, 3*time.Minute, func(ing *networkingv1.Ingress) {
		ing.Annotations[profileAnnotation] = "shortlived"
	})
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return err
	}
	if len(is.missing) > 0 {
		b.add(fmt.Sprintf("%d short-lived certificates", n), fmt.Sprintf("%d of %d valid after 3 min", n-len(is.missing), n), "", "FAILED")
		return nil
	}
	// Let Traefik load them all before probing.
	for _, name := range batch {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		b.waitServed(sctx, host(ns, name))
		cancel()
	}

	history := map[string][]certSeen{}
	var hmu sync.Mutex
	poll := func() {
		list, err := b.client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: core.Selector})
		if err != nil {
			return
		}
		now := time.Now()
		hmu.Lock()
		defer hmu.Unlock()
		for i := range list.Items {
			s := &list.Items[i]
			chain, err := secrets.DecodeChain(s.Data[corev1.TLSCertKey])
			if err != nil {
				continue
			}
			h := history[s.Name]
			if len(h) > 0 && h[len(h)-1].leaf.SerialNumber.Cmp(chain[0].SerialNumber) == 0 {
				continue
			}
			history[s.Name] = append(h, certSeen{chain[0], now})
		}
	}
	poll()
	start := time.Now()
	if leaf := firstLeaf(history); leaf != nil {
		if ws, we, err := renewalWindow(b.tb, ca.Directory, leaf); err == nil {
			b.say("  the CA's renewal window for a %s certificate: %s to %s after its notBefore", leaf.NotAfter.Sub(leaf.NotBefore).Round(time.Second), ws.Sub(leaf.NotBefore).Round(time.Second), we.Sub(leaf.NotBefore).Round(time.Second))
		}
	}
	b.say("  watching for %s from now (load %s)", window, loadavg())
	wctx, stop := context.WithTimeout(ctx, window)
	defer stop()

	// The prober: one host after the other, every 20 ms.
	var pmu sync.Mutex
	okCount, failCount := 0, 0
	failures := map[string]int{}
	var wg sync.WaitGroup
	wg.Go(func() {
		clients := make([]*http.Client, n)
		for i, name := range batch {
			clients[i] = b.tb.HTTPClientWithRoots(host(ns, name), b.roots)
		}
		for i := 0; wctx.Err() == nil; i++ {
			k := i % n
			req, _ := http.NewRequestWithContext(wctx, http.MethodGet, "https://"+host(ns, batch[k])+"/", nil)
			resp, err := clients[k].Do(req)
			if wctx.Err() != nil {
				return
			}
			pmu.Lock()
			switch {
			case err != nil:
				failCount++
				failures[classify(err)]++
			case resp.StatusCode != http.StatusOK:
				failCount++
				failures[resp.Status]++
			default:
				okCount++
			}
			pmu.Unlock()
			if resp != nil {
				resp.Body.Close()
			}
			select {
			case <-wctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	for wctx.Err() == nil {
		poll()
		select {
		case <-wctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
	wg.Wait()
	poll()
	end := time.Now()
	if ctx.Err() != nil {
		return ctx.Err()
	}

	renewals, wasted := 0, 0
	var perCert []int
	var intervals []time.Duration
	var expired time.Duration
	var examples []string
	hmu.Lock()
	for _, name := range batch {
		h := history[name+"-tls"]
		k := 0
		for i := 1; i < len(h); i++ {
			prev, cur := h[i-1], h[i]
			if cur.seen.Before(start) {
				continue
			}
			k++
			intervals = append(intervals, cur.leaf.NotBefore.Sub(prev.leaf.NotBefore))
			age, life := cur.leaf.NotBefore.Sub(prev.leaf.NotBefore), prev.leaf.NotAfter.Sub(prev.leaf.NotBefore)
			if age < life/2 {
				wasted++
				if len(examples) < 3 {
					examples = append(examples, fmt.Sprintf("%s renewed %s into a %s certificate", name, age.Round(time.Second), life.Round(time.Second)))
				}
			}
			if cur.seen.After(prev.leaf.NotAfter) {
				expired += cur.seen.Sub(prev.leaf.NotAfter)
			}
		}
		if len(h) > 0 && h[len(h)-1].leaf.NotAfter.Before(end) {
			expired += end.Sub(h[len(h)-1].leaf.NotAfter)
		}
		renewals += k
		perCert = append(perCert, k)
	}
	hmu.Unlock()
	sort.Ints(perCert)
	limited := c.Count("order limit reached")
	target := "window / renewal interval, within 1"
	if len(intervals) > 0 {
		sort.Slice(intervals, func(i, j int) bool { return intervals[i] < intervals[j] })
		mi := median(intervals)
		target = fmt.Sprintf("%.1f within 1 (window / median interval %s)", float64(window)/float64(mi), secs(mi))
	}
	b.add(fmt.Sprintf("short-lived: %d x %s certificates, %s", n, b.scale.shortValidity, window),
		withLoad(fmt.Sprintf("%.1f renewals per certificate (min %d, max %d)", float64(renewals)/float64(n), perCert[0], perCert[len(perCert)-1])),
		target, "")
	b.add("  renewals before half the previous lifetime", fmt.Sprintf("%d of %d", wasted, renewals), "0", verdict(wasted == 0))
	b.add("  time Secrets held an expired certificate", fmt.Sprintf("%.0f s in all (%d \"order limit reached\")", expired.Seconds(), limited), "0", verdict(expired == 0))
	var fparts []string
	for _, k := range sortedByValue(toFloat(failures)) {
		fparts = append(fparts, fmt.Sprintf("%s: %d", k, failures[k]))
	}
	pres := fmt.Sprintf("%d of %d failed", failCount, okCount+failCount)
	if len(fparts) > 0 {
		pres += " (" + strings.Join(fparts, "; ") + ")"
	}
	b.add("  HTTPS requests through Traefik (prober)", pres, "0 failed", verdict(failCount == 0))
	for _, e := range examples {
		b.say("  wasted renewal: %s", e)
	}
	return nil
}

// firstLeaf is any certificate of the history.
func firstLeaf(h map[string][]certSeen) *x509.Certificate {
	for _, cs := range h {
		if len(cs) > 0 {
			return cs[0].leaf
		}
	}
	return nil
}

// classify shortens a request error to its kind.
func classify(err error) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "expired"):
		return "certificate has expired"
	case strings.Contains(s, "unknown authority"):
		return "certificate signed by unknown authority"
	case strings.Contains(s, "not valid for"):
		return "certificate not valid for the host"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

func toFloat(m map[string]int) map[string]float64 {
	out := make(map[string]float64, len(m))
	for k, v := range m {
		out[k] = float64(v)
	}
	return out
}
