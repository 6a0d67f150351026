package watcher

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ingress-acme/ingress-acme/core"
	"github.com/ingress-acme/ingress-acme/secrets"
)

// overlapIssuer's Validate (the wait on the CA) returns only once the new key
// is being made, and overlapKeys' NewKey only once the CA is validating: they
// finish only if the key is made while the order waits on the CA.
type overlapIssuer struct {
	*fakeIssuer
	keyStarted, validating chan struct{}
}

func (o overlapIssuer) Validate(ctx context.Context, ord core.Order) error {
	close(o.validating)
	select {
	case <-o.keyStarted:
		return o.fakeIssuer.Validate(ctx, ord)
	case <-time.After(2 * time.Second):
		return errors.New("the new key was not being made while the CA validated")
	}
}

type overlapKeys struct {
	Secrets
	keyStarted, validating chan struct{}
}

func (o overlapKeys) NewKey(kt core.KeyType) (crypto.Signer, error) {
	close(o.keyStarted)
	select {
	case <-o.validating:
		return o.Secrets.NewKey(kt)
	case <-time.After(2 * time.Second):
		return nil, errors.New("the CA was not validating while the key was made")
	}
}

// The new key (seconds for RSA 4096) is made while the order waits on the
// ingress and the CA, not after: a short-lived certificate's renewal lost
// that much of its margin (found by the soak, seed 84).
func TestNewKeyWhileTheCAValidates(t *testing.T) {
	f := newFixture(t, ingress("shop", optIn, "a.test"))
	keyStarted, validating := make(chan struct{}), make(chan struct{})
	f.c.cfg.Issuers[defaultIssuer] = overlapIssuer{fakeIssuer: f.issuer, keyStarted: keyStarted, validating: validating}
	f.c.cfg.Secrets = overlapKeys{Secrets: f.c.cfg.Secrets, keyStarted: keyStarted, validating: validating}
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	if got := f.issuer.count(); got != 1 {
		t.Fatalf("orders: got %d, want 1", got)
	}
	if _, err := f.client.CoreV1().Secrets("ns").Get(context.Background(), "shop-tls", metav1.GetOptions{}); err != nil {
		t.Fatalf("no certificate stored: %v", err)
	}
}

// The key the Issuer can make again for an order (so that an order finalized
// before a crash is finished by the next process) is the one the certificate
// gets; the fresh key is only for key types it cannot.
func TestOrderKeyFromTheIssuer(t *testing.T) {
	f := newFixture(t, ingress("shop", optIn, "a.test"))
	want, err := secrets.GenerateKey(core.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	f.issuer.orderKeys = map[string]crypto.Signer{"https://ca.test/order/1": want}
	keys := &countingKeys{Secrets: f.c.cfg.Secrets}
	f.c.cfg.Secrets = keys
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	if n := keys.made.Load(); n != 0 {
		t.Errorf("%d fresh keys made, want none: the Issuer's key is the order's", n)
	}
	sec, err := f.c.cfg.Client.CoreV1().Secrets("ns").Get(context.Background(), "shop-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := secrets.Parse(sec)
	if err != nil {
		t.Fatal(err)
	}
	if !want.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(c.Leaf.PublicKey) {
		t.Error("the Secret's key is not the one the Issuer made for the order")
	}
}

// countingKeys counts the fresh keys made.
type countingKeys struct {
	Secrets
	made atomic.Int32
}

func (c *countingKeys) NewKey(kt core.KeyType) (crypto.Signer, error) {
	c.made.Add(1)
	return c.Secrets.NewKey(kt)
}

// An order is placed only while fewer than maxUnjournalled orders are between
// placing and journalling: a crash loses those, and only those.
func TestOrdersWaitForAJournalSlot(t *testing.T) {
	f := newFixture(t, ingress("shop", optIn, "a.test"))
	for range maxUnjournalled {
		f.c.unjournalled <- struct{}{}
	}
	f.waitCaches(t)
	done := make(chan error, 1)
	go func() {
		r := f.c.sync(context.Background(), "ns/shop-tls")
		f.c.flights.wait()
		done <- r.err
	}()
	select {
	case err := <-done:
		t.Fatalf("the order ran with every slot taken (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	if n := f.issuer.count(); n != 0 {
		t.Fatalf("%d orders placed with every slot taken, want 0", n)
	}
	<-f.c.unjournalled
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := f.issuer.count(); n != 1 {
		t.Errorf("orders: got %d, want 1 once a slot was free", n)
	}
	if n := len(f.c.unjournalled); n != maxUnjournalled-1 {
		t.Errorf("slots taken after the order: %d, want %d (its own given back)", n, maxUnjournalled-1)
	}
}

// recordingOutput records what it was told was stored.
type recordingOutput struct {
	mu      sync.Mutex // guards serials
	serials []string
	err     error
}

func (r *recordingOutput) Stored(_ context.Context, req core.Request, cert *x509.Certificate) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.serials = append(r.serials, req.Key()+" "+cert.SerialNumber.String())
	return r.err
}

// Outputs run once the certificate is stored, once per certificate, in
// order; one that fails says so and the certificate stays stored.
func TestOutputsRunAfterStore(t *testing.T) {
	f := newFixture(t, ingress("shop", optIn, "a.test"))
	first, second := &recordingOutput{err: errors.New("rollout refused")}, &recordingOutput{}
	f.c.cfg.Outputs = []Output{first, second}
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	sec, err := f.client.CoreV1().Secrets("ns").Get(context.Background(), "shop-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stored, err := f.c.cfg.Secrets.Read(sec)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ns/shop-tls " + stored.Leaf.SerialNumber.String()}
	if !slices.Equal(first.serials, want) || !slices.Equal(second.serials, want) {
		t.Errorf("outputs told: got %v and %v, want %v each", first.serials, second.serials, want)
	}
	if evs := strings.Join(f.events(), "\n"); !strings.Contains(evs, "Warning OutputFailed") || !strings.Contains(evs, "Normal Issued") {
		t.Errorf("events: got %q, want OutputFailed and Issued", evs)
	}
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	if len(second.serials) != 1 {
		t.Errorf("outputs told on a sync that ordered nothing: got %v, want once in all", second.serials)
	}
}
