package e2e

import (
	"context"
	"crypto/x509"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// Watchers that record what happens to a namespace's Ingresses and Secrets
// while a test runs.

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
