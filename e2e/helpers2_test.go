package e2e

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// eventCount is how many times the Events in ns about object name with reason
// occurred: the sum of their counts, since the recorder folds repeats of one
// message into one Event with a count.
func eventCount(t *testing.T, ns, name, reason string) int {
	t.Helper()
	return sumCounts(events(t, ns, name, reason))
}

// nsEvents lists the Events in ns with reason, about any object.
func nsEvents(t *testing.T, ns, reason string) []corev1.Event {
	t.Helper()
	list, err := bed.Client().CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Event
	for _, e := range list.Items {
		if e.Reason == reason {
			out = append(out, e)
		}
	}
	return out
}

// sumCounts adds up the counts of evs (an Event without one counts once).
func sumCounts(evs []corev1.Event) int {
	n := 0
	for _, e := range evs {
		n += max(int(e.Count), 1)
	}
	return n
}

// eventsByReason lists every Event in ns about object name as
// "Type Reason xCount: message", for failure messages.
func eventsByReason(t *testing.T, ns, name string) string {
	t.Helper()
	var b strings.Builder
	for _, e := range events(t, ns, name, "") {
		fmt.Fprintf(&b, "  %s %s x%d: %s\n", e.Type, e.Reason, max(e.Count, 1), e.Message)
	}
	return b.String()
}

// consistently checks cond every 50 ms for d and fails the test the first time
// it does not hold. It is for asserting that something does not happen.
func consistently(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if ok, msg := cond(); !ok {
			t.Fatalf("%s: stopped holding: %s", what, msg)
		}
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// scrape returns the samples of metric family name on the controller's
// /metrics whose labels include every key=value in labels, as label text ->
// value (nil when /metrics cannot be read).
func scrape(c *controller, name string, labels ...string) map[string]float64 {
	resp, err := http.Get("http://" + c.MetricsAddr + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !testbed.MetricLine(line, name, labels...) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[strings.TrimPrefix(line[:i], name)] = v
	}
	return out
}

// metricSum adds up the samples scrape returns.
func metricSum(c *controller, name string, labels ...string) float64 {
	s := 0.0
	for _, v := range scrape(c, name, labels...) {
		s += v
	}
	return s
}

// challengePaths lists the challenge paths in ing's rules as "host path".
func challengePaths(ing *networkingv1.Ingress) []string {
	var out []string
	for _, r := range ing.Spec.Rules {
		if r.HTTP == nil {
			continue
		}
		for _, p := range r.HTTP.Paths {
			if strings.HasPrefix(p.Path, challengePrefix) {
				out = append(out, r.Host+" "+p.Path)
			}
		}
	}
	return out
}

// patched reports what of ours is left in ing: the journal and challenge paths.
func patched(ing *networkingv1.Ingress) string {
	var parts []string
	if v, ok := ing.Annotations[journalAnnotation]; ok {
		parts = append(parts, "journal "+v)
	}
	if p := challengePaths(ing); len(p) > 0 {
		parts = append(parts, "paths "+strings.Join(p, ", "))
	}
	return strings.Join(parts, "; ")
}

// newCAProxy starts a testbed.CAProxy in front of directory, closed when the
// test ends, with its request counts logged if the test failed.
func newCAProxy(t *testing.T, directory string) *testbed.CAProxy {
	t.Helper()
	p, err := bed.NewCAProxy(directory)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("requests the CA saw (method endpoint status: count):\n%s", p.Summary())
		}
		p.Close()
	})
	return p
}

// startCA starts a Pebble of the test's own with opts (named after ns), and
// returns it and its root; it is stopped when the test ends.
func startCA(t *testing.T, ns string, opts testbed.CAOptions) (*testbed.ExtraCA, *x509.CertPool) {
	t.Helper()
	ctx := context.Background()
	ca, err := bed.StartCA(ctx, ns, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ca.Stop)
	roots, err := ca.RootPool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ca, roots
}

// journalTracker watches the Ingresses of a namespace and keeps which of them
// hold a challenge journal, and the most that ever did at once.
type journalTracker struct {
	w watch.Interface

	// mu guards holding and most.
	mu      sync.Mutex
	holding map[string]bool
	most    int
}

// trackJournals starts a journalTracker on ns, stopped when the test ends.
func trackJournals(t *testing.T, ns string) *journalTracker {
	t.Helper()
	w, err := bed.Client().NetworkingV1().Ingresses(ns).Watch(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	j := &journalTracker{w: w, holding: map[string]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			ing, ok := ev.Object.(*networkingv1.Ingress)
			if !ok {
				continue
			}
			_, journal := ing.Annotations[journalAnnotation]
			j.mu.Lock()
			if journal && ev.Type != watch.Deleted {
				j.holding[ing.Name] = true
			} else {
				delete(j.holding, ing.Name)
			}
			j.most = max(j.most, len(j.holding))
			j.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		w.Stop()
		<-done
	})
	return j
}

// now returns how many Ingresses hold a journal now, and the most at once so far.
func (j *journalTracker) now() (current, most int) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.holding), j.most
}

// leafRecord is one certificate seen in a Secret.
type leafRecord struct {
	seen                time.Time // when the watch delivered it
	serial              string
	notBefore, notAfter time.Time
	dnsNames            []string
}

// secretHistory watches the Secrets of a namespace and records, per Secret,
// every distinct certificate it held, in order.
type secretHistory struct {
	// mu guards leaves.
	mu     sync.Mutex
	leaves map[string][]leafRecord
}

// recordSecrets starts a secretHistory on ns (re-watching if the API server
// ends the watch), stopped when the test ends.
func recordSecrets(t *testing.T, ns string) *secretHistory {
	t.Helper()
	h := &secretHistory{leaves: map[string][]leafRecord{}}
	ctx, cancel := context.WithCancel(context.Background())
	api := bed.Client().CoreV1().Secrets(ns)
	list, err := api.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range list.Items {
		h.add(&list.Items[i])
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		rv := list.ResourceVersion
		for ctx.Err() == nil {
			w, err := api.Watch(ctx, metav1.ListOptions{ResourceVersion: rv})
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			for ev := range w.ResultChan() {
				if s, ok := ev.Object.(*corev1.Secret); ok {
					rv = s.ResourceVersion
					h.add(s)
				}
			}
			w.Stop()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return h
}

func (h *secretHistory) add(s *corev1.Secret) {
	if s.Type != corev1.SecretTypeTLS {
		return
	}
	leaf := leafFromPEM(s.Data[corev1.TLSCertKey])
	if leaf == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	prev := h.leaves[s.Name]
	serial := leaf.SerialNumber.String()
	if len(prev) > 0 && prev[len(prev)-1].serial == serial {
		return
	}
	h.leaves[s.Name] = append(prev, leafRecord{seen: time.Now(), serial: serial, notBefore: leaf.NotBefore, notAfter: leaf.NotAfter, dnsNames: slices.Clone(leaf.DNSNames)})
}

// of returns the certificates Secret name held, in order.
func (h *secretHistory) of(name string) []leafRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.leaves[name])
}

// leafFromPEM parses the first certificate of a PEM chain, nil if none.
func leafFromPEM(chain []byte) *x509.Certificate {
	leaf, err := testbed.VerifyChainPEM(chain, nil)
	if err != nil {
		return nil
	}
	return leaf
}
