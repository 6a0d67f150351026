package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// bench is the state of one run, owned by main.
type bench struct {
	start                  time.Time
	workers, fillers, runs int
	extra                  []string // more controller flags
	only                   []string // scenarios to run
	scale                  scaleOptions
	timings                []string // how long each scenario took

	tb     *testbed.Testbed
	client kubernetes.Interface // admin, without client-side rate limit
	roots  *x509.CertPool       // Pebble's root
	bin    string               // the controller

	rows     []row
	findings []string
	failed   bool
}

type row struct{ scenario, result, target, verdict string }

// journalAnnotation is where the controller journals its challenge paths.
const journalAnnotation = "ingress-acme.io/challenges"

// setup makes the bench's own API client and reads Pebble's root.
func (b *bench) setup(ctx context.Context, tb *testbed.Testbed) error {
	b.tb = tb
	cfg := rest.CopyConfig(tb.AdminConfig)
	cfg.QPS, cfg.Burst = -1, 0 // no client-side throttling: the bench measures the controller
	cfg.WarningHandler = rest.NoWarnings{}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	b.client = cs
	b.roots, err = tb.PebbleRootPool(ctx)
	return err
}

// host is the unique host of the Ingress name in ns.
func host(ns, name string) string { return name + "." + ns + ".test" }

// ingress is Ingress ns/name for its host, routed to backend:80, opted in.
func ingress(ns, name, backend string) *networkingv1.Ingress {
	prefix := networkingv1.PathTypePrefix
	return &networkingv1.Ingress{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: map[string]string{"kubernetes.io/tls-acme": "true"}},
		Spec: networkingv1.IngressSpec{Rules: []networkingv1.IngressRule{{
			Host: host(ns, name),
			IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{
				Paths: []networkingv1.HTTPIngressPath{{
					Path: "/", PathType: &prefix,
					Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
						Name: backend, Port: networkingv1.ServiceBackendPort{Number: 80},
					}},
				}},
			}},
		}}},
	}
}

// issuance is the outcome of creating some Ingresses at once.
type issuance struct {
	start   time.Time            // the moment they count from
	created map[string]time.Time // when each Create returned
	valid   map[string]time.Time // when each Secret first held a valid certificate
	served  map[string]time.Time // when Traefik first served it (single runs only)
	missing []string             // Ingresses whose Secret never became valid
	lastErr map[string]string    // why, for the missing ones
}

// total is the time from start until the last Secret became valid.
func (is *issuance) total() time.Duration {
	var last time.Time
	for _, t := range is.valid {
		if t.After(last) {
			last = t
		}
	}
	return last.Sub(is.start)
}

// issue creates an opted-in Ingress for each name in ns (concurrently) and
// waits until every Secret <name>-tls holds a certificate that verifies for its
// host against Pebble's root, watching the Secrets. With one name, the clock
// starts when its Create returns and the time until Traefik serves the
// certificate is measured too; with more, it starts before the first Create.
// Each mutate function, if any, changes every Ingress before it is created.
func (b *bench) issue(ctx context.Context, ns, backend string, names []string, timeout time.Duration, mutate ...func(*networkingv1.Ingress)) (*issuance, error) {
	mk := func(name string) *networkingv1.Ingress {
		ing := ingress(ns, name, backend)
		for _, m := range mutate {
			m(ing)
		}
		return ing
	}
	want := map[string]string{} // secret -> host
	for _, n := range names {
		want[n+"-tls"] = host(ns, n)
	}
	selector := ""
	if len(names) == 1 {
		selector = fields.OneTermEqualSelector("metadata.name", names[0]+"-tls").String()
	}
	w, err := b.watchSecrets(ctx, ns, selector, want)
	if err != nil {
		return nil, err
	}
	defer w.stop()

	is := &issuance{created: map[string]time.Time{}, served: map[string]time.Time{}}
	var mu sync.Mutex
	servedDone := make(chan struct{})
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	api := b.client.NetworkingV1().Ingresses(ns)
	if len(names) == 1 {
		if _, err := api.Create(ctx, mk(names[0]), metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("create ingress %s: %w", names[0], err)
		}
		is.start = time.Now()
		is.created[names[0]] = is.start
		go func() {
			defer close(servedDone)
			if t, ok := b.waitServed(ctx, host(ns, names[0])); ok {
				is.served[names[0]] = t
			}
		}()
	} else {
		close(servedDone)
		is.start = time.Now()
		errs := make([]error, len(names))
		var wg sync.WaitGroup
		for i, n := range names {
			wg.Go(func() {
				_, errs[i] = api.Create(ctx, mk(n), metav1.CreateOptions{})
				mu.Lock()
				is.created[n] = time.Now()
				mu.Unlock()
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				return nil, fmt.Errorf("create ingress %s: %w", names[i], err)
			}
		}
	}
	select {
	case <-w.done:
	case <-ctx.Done():
	}
	<-servedDone
	is.valid, is.lastErr = w.result()
	for _, n := range names {
		if _, ok := is.valid[n+"-tls"]; !ok {
			is.missing = append(is.missing, n)
		}
	}
	// Report by Ingress name.
	valid := map[string]time.Time{}
	for _, n := range names {
		if t, ok := is.valid[n+"-tls"]; ok {
			valid[n] = t
		}
	}
	is.valid = valid
	return is, nil
}

// waitServed GETs https://h/ through Traefik every 10 ms until it answers 200
// with a certificate that verifies for h against Pebble's root, and returns
// when it first did.
func (b *bench) waitServed(ctx context.Context, h string) (time.Time, bool) {
	client := b.tb.HTTPClientWithRoots(h, b.roots)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+h+"/", nil)
		if err != nil {
			return time.Time{}, false
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Now(), true
			}
		}
		select {
		case <-ctx.Done():
			return time.Time{}, false
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// secretWatch follows Secrets in a namespace and notes when each wanted one
// first holds a valid certificate.
type secretWatch struct {
	done   chan struct{} // closed when every wanted Secret is valid
	cancel context.CancelFunc
	exited chan struct{}

	mu      sync.Mutex
	want    map[string]string // secret -> host
	valid   map[string]time.Time
	lastErr map[string]string
}

// watchSecrets lists and then watches the Secrets of ns (matching
// fieldSelector) before returning, so no change after it returns is missed.
func (b *bench) watchSecrets(ctx context.Context, ns, fieldSelector string, want map[string]string) (*secretWatch, error) {
	ctx, cancel := context.WithCancel(ctx)
	sw := &secretWatch{done: make(chan struct{}), cancel: cancel, exited: make(chan struct{}), want: want,
		valid: map[string]time.Time{}, lastErr: map[string]string{}}
	api := b.client.CoreV1().Secrets(ns)
	listWatch := func() (watch.Interface, error) {
		list, err := api.List(ctx, metav1.ListOptions{FieldSelector: fieldSelector})
		if err != nil {
			return nil, err
		}
		for i := range list.Items {
			b.check(sw, &list.Items[i])
		}
		return api.Watch(ctx, metav1.ListOptions{FieldSelector: fieldSelector, ResourceVersion: list.ResourceVersion})
	}
	w, err := listWatch()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch secrets in %s: %w", ns, err)
	}
	go func() {
		defer close(sw.exited)
		for {
			for ev := range w.ResultChan() {
				if s, ok := ev.Object.(*corev1.Secret); ok && (ev.Type == watch.Added || ev.Type == watch.Modified) {
					b.check(sw, s)
				}
			}
			w.Stop()
			for {
				if ctx.Err() != nil {
					return
				}
				if w, err = listWatch(); err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	return sw, nil
}

// check notes s valid when it is wanted and verifies.
func (b *bench) check(sw *secretWatch, s *corev1.Secret) {
	now := time.Now()
	sw.mu.Lock()
	defer sw.mu.Unlock()
	h, ok := sw.want[s.Name]
	if !ok {
		return
	}
	if _, ok := sw.valid[s.Name]; ok {
		return
	}
	if _, err := testbed.VerifyChainPEM(s.Data[corev1.TLSCertKey], b.roots, h); err != nil {
		sw.lastErr[s.Name] = err.Error()
		return
	}
	sw.valid[s.Name] = now
	if len(sw.valid) == len(sw.want) {
		close(sw.done)
	}
}

func (sw *secretWatch) result() (map[string]time.Time, map[string]string) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	valid, errs := map[string]time.Time{}, map[string]string{}
	for k, v := range sw.valid {
		valid[k] = v
	}
	for k := range sw.want {
		if _, ok := sw.valid[k]; !ok {
			errs[k] = sw.lastErr[k]
			if errs[k] == "" {
				errs[k] = "no Secret"
			}
		}
	}
	return valid, errs
}

func (sw *secretWatch) stop() {
	sw.cancel()
	<-sw.exited
}

// waitClean waits until every named Ingress in ns has spec.tls naming its
// Secret and no challenge journal: the controller is done with them.
func (b *bench) waitClean(ctx context.Context, ns string, names []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		list, err := b.client.NetworkingV1().Ingresses(ns).List(ctx, metav1.ListOptions{})
		pending := 0
		if err == nil {
			byName := map[string]*networkingv1.Ingress{}
			for i := range list.Items {
				byName[list.Items[i].Name] = &list.Items[i]
			}
			for _, n := range names {
				ing := byName[n]
				if ing == nil || ing.Annotations[journalAnnotation] != "" ||
					!slices.ContainsFunc(ing.Spec.TLS, func(t networkingv1.IngressTLS) bool { return t.SecretName == n+"-tls" }) {
					pending++
				}
			}
			if pending == 0 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d Ingresses in %s not finished (spec.tls, journal) after %s (list error: %v)", pending, len(names), ns, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitEvents waits until each named Ingress in ns has an Event with reason.
func (b *bench) waitEvents(ctx context.Context, ns, reason string, names []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	sel := fields.OneTermEqualSelector("reason", reason).String()
	for {
		list, err := b.client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
		have := 0
		if err == nil {
			seen := map[string]bool{}
			for _, e := range list.Items {
				seen[e.InvolvedObject.Name] = true
			}
			for _, n := range names {
				if seen[n] {
					have++
				}
			}
			if have == len(names) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d Ingresses in %s have a %s event after %s (list error: %v)", have, len(names), ns, reason, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// durations returns the sorted durations of ts since start.
func durations(start time.Time, ts map[string]time.Time) []time.Duration {
	out := make([]time.Duration, 0, len(ts))
	for _, t := range ts {
		out = append(out, t.Sub(start))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// median of sorted ds.
func median(ds []time.Duration) time.Duration {
	n := len(ds)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return ds[n/2]
	}
	return (ds[n/2-1] + ds[n/2]) / 2
}

func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%03d", prefix, i+1)
	}
	return out
}
