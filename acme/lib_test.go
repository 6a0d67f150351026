package acme

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/http"
	"testing"
	"time"

	acmelib "github.com/eggsampler/acme/v3"

	"github.com/ingress-acme/ingress-acme/core"
)

// TestLibraryBehaviour fails when github.com/eggsampler/acme/v3 stops doing
// what lib.go relies on.
func TestLibraryBehaviour(t *testing.T) {
	ca := newFakeCA(t, true)
	ca.retryAfter = "3600"
	tr := &transport{base: http.DefaultTransport, directory: ca.url("/dir")}
	l, err := dial(ca.url("/dir"), tr.bound(context.Background(), 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := l.register(key, "", nil); err != nil {
		t.Fatal(err)
	}
	l, err = l.lookUp(key)
	if err != nil {
		t.Fatal(err)
	}
	thumb, _ := acmelib.JWKThumbprint(key.Public())
	old := issue(t, ca, l, []string{"old.example"})

	t.Run("ReplacementOrderExtension sends replaces", func(t *testing.T) {
		if _, err := l.newOrder([]string{"a.example"}, old, ""); err != nil {
			t.Fatal(err)
		}
		want, _ := acmelib.GenerateARICertID(old)
		ca.mu.Lock()
		got := ca.newOrders[len(ca.newOrders)-1]["replaces"]
		ca.mu.Unlock()
		if got != want {
			t.Errorf("got replaces %v, want %q", got, want)
		}
	})
	t.Run("a looked-up account prefills key authorizations", func(t *testing.T) {
		o, _ := l.newOrder([]string{"b.example"}, nil, "")
		a, err := l.fetchAuthz(o.Authorizations[0], core.ChallengeHTTP01)
		if err != nil {
			t.Fatal(err)
		}
		if want := a.Challenge.Token + "." + thumb; a.Challenge.KeyAuth != want || thumb == "" {
			t.Errorf("got %q, want %q", a.Challenge.KeyAuth, want)
		}
	})
	t.Run("problems keep their type", func(t *testing.T) {
		ca.setProblem("/order-plz", fakeProb{status: http.StatusConflict, typ: "alreadyReplaced"})
		defer ca.clearProblems()
		_, err := l.newOrder([]string{"c.example"}, old, "")
		if !isProblem(err, "alreadyReplaced") {
			t.Errorf("got %v, want an alreadyReplaced problem", err)
		}
	})
	t.Run("GetRenewalInfo fills RetryAfter", func(t *testing.T) {
		w, ok, err := l.renewalInfo(old)
		if err != nil || !ok {
			t.Fatalf("got %v, %v, want a window", ok, err)
		}
		if d := time.Until(w.RetryAfter); d < 59*time.Minute || d > time.Hour {
			t.Errorf("got RetryAfter in %v, want in an hour", d)
		}
	})
	t.Run("an option applied to a copy binds only the copy", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		before := ca.count("POST /order/")
		if _, err := l.with(tr.bound(ctx, time.Second)).fetchOrder(ca.url("/order/1")); err == nil {
			t.Errorf("got no error through a cancelled context, want one")
		}
		if _, err := l.fetchOrder(ca.url("/order/1")); err != nil {
			t.Errorf("got %v from the original, want it unaffected", err)
		}
		if got := ca.count("POST /order/") - before; got != 1 {
			t.Errorf("got %d requests, want 1 (none through the cancelled copy)", got)
		}
	})
	t.Run("one POST per challenge and no polling", func(t *testing.T) {
		o, _ := l.newOrder([]string{"d.example"}, nil, "")
		a, _ := l.fetchAuthz(o.Authorizations[0], core.ChallengeHTTP01)
		before := ca.count("POST /chal/")
		if err := respond(tr.bound(context.Background(), time.Second), l, a.Challenge.URL); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if got := ca.count("POST /chal/") - before; got != 1 {
			t.Errorf("got %d POSTs to the challenge, want 1", got)
		}
	})
	t.Run("FinalizeOrder with IgnoreRetryAfter does not poll", func(t *testing.T) {
		ca.mu.Lock()
		ca.processing = true
		ca.mu.Unlock()
		defer func() { ca.mu.Lock(); ca.processing = false; ca.mu.Unlock() }()
		o := readyOrder(t, ca, l, "e.example")
		before := ca.count("POST /order/")
		csr, _ := newCSR([]string{"e.example"}, key)
		got, err := l.finalize(o, csr)
		if err != nil || got.Status != "processing" {
			t.Fatalf("got %q, %v, want processing and no error", got.Status, err)
		}
		if n := ca.count("POST /order/") - before; n != 0 {
			t.Errorf("got %d order fetches, want none", n)
		}
	})
	t.Run("a problem is an acmelib.Problem", func(t *testing.T) {
		var p acmelib.Problem
		if !errors.As(error(problem{Type: "x"}), &p) {
			t.Errorf("got no acmelib.Problem, want one")
		}
	})
}

// readyOrder places an order for host and validates it.
func readyOrder(t *testing.T, ca *fakeCA, l lib, host string) order {
	t.Helper()
	o, err := l.newOrder([]string{host}, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range o.Authorizations {
		a, _ := l.fetchAuthz(u, core.ChallengeHTTP01)
		tr := &transport{base: http.DefaultTransport}
		if err := respond(tr.bound(context.Background(), time.Second), l, a.Challenge.URL); err != nil {
			t.Fatal(err)
		}
		_, _ = l.fetchAuthz(u, core.ChallengeHTTP01)
	}
	o, err = l.fetchOrder(o.URL)
	if err != nil || o.Status != "ready" {
		t.Fatalf("got %q, %v, want a ready order", o.Status, err)
	}
	return o
}

// issue returns a certificate for hosts from ca.
func issue(t *testing.T, ca *fakeCA, l lib, hosts []string) *x509.Certificate {
	t.Helper()
	o := readyOrder(t, ca, l, hosts[0])
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := newCSR(hosts, key)
	o, err := l.finalize(o, csr)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := l.certificates(o.Certificate)
	if err != nil || len(certs) == 0 {
		t.Fatalf("got %d certificates, %v, want a chain", len(certs), err)
	}
	return certs[0]
}
