package watcher

import (
	"context"
	"crypto"
	"crypto/x509"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/ingress-acme/ingress-acme/core"
)

// The engine's plug points: the small interfaces it drives certificates
// through. main plugs the concrete types in; a new capability is a new
// implementation of one of them, never a branch in the engine.

// Source is one kind of object that asks for certificates (Ingresses today):
// it watches its objects, turns them into requests, and is told how each
// certificate fares, to write back to its objects. Safe for concurrent use.
type Source interface {
	// Watch registers the source's informer handlers; from then on queue is
	// called with the key (namespace/secret) of every certificate a change of
	// its objects concerns. New calls it once, before the informers start;
	// synced reports once the handlers have seen the initial objects.
	Watch(queue func(key string)) (synced cache.InformerSynced, err error)
	// Request is the certificate key as the source's objects ask for it; ok
	// is false when none of them does.
	Request(key string) (req core.Request, ok bool)
	// Wants reports whether an object of the source still asks for key, for an
	// order that ends: nobody wanting it any more abandons it.
	Wants(key string) bool
	// Sync writes back to req's askers what they should hold, with a
	// certificate stored in req's Secret (stored) or not yet; it also lets go
	// of what their users have taken over. It writes nothing that is already so.
	Sync(ctx context.Context, req core.Request, stored bool) error
	// Event records an Event on obj, one of the source's objects; nothing
	// when it no longer exists.
	Event(obj core.Ref, eventType, reason, message string)
}

// Solver presents an order's challenges where the CA will look for them, one
// implementation per way of presenting (HTTP-01 through an Ingress today). It
// journals what it changes, so that a crash at any step leaves nothing behind:
// whoever finds its journal without a live order continues the order or
// removes exactly what it lists. Safe for concurrent use, one order per
// certificate at a time.
type Solver interface {
	// Watch registers the solver's informer handlers: queue is called with the
	// key of every certificate whose journal a change concerns; synced, as
	// for Source.
	Watch(queue func(key string)) (synced cache.InformerSynced, err error)
	// Solves reports whether it can present req's challenges: their type
	// (req.Options.Challenge) and where each host's is presented.
	Solves(req core.Request) bool
	// Prepare readies what presenting needs, before the order is placed.
	Prepare(ctx context.Context, req core.Request) error
	// Present makes every challenge of o answer for req, journalled.
	Present(ctx context.Context, req core.Request, o core.Order) error
	// Check returns once every challenge of o answers the way the CA will ask;
	// its error says what answered instead.
	Check(ctx context.Context, req core.Request, o core.Order) error
	// Withdraw takes back what Present did (presented: Present was called,
	// even if it failed) once the order has ended with outcome.
	Withdraw(ctx context.Context, req core.Request, o core.Order, presented bool, outcome core.Outcome) error
	// Journalled is the URL of the order journalled for key, "" for none.
	Journalled(key string) string
	// Leftovers removes what is journalled for key while no order of it is
	// live (a failed attempt, or a process that died).
	Leftovers(ctx context.Context, key string) error
}

// Issuer is where certificates come from (an ACME CA today), kept by name:
// one method per step of an order. It must be safe for concurrent use. Any
// error after which the CA asked us to wait is, or wraps, a
// *core.RetryAfterError; the controller then backs off at least that long.
//
// A CA without challenges (an internal CA) fits as it is: its orders have no
// Challenges, Validate returns at once and Finalize signs. A fallback CA is an
// Issuer that tries others in turn and says which signed (Order.SignedBy).
// Revocation needs no method here: it is not a step of an order, so a leaf
// of its own revokes through an interface it declares (the ACME client gains
// Revoke then), and a certificate recorded as revoked is one Secrets.Read
// refuses, which the engine re-issues as unusable.
type Issuer interface {
	// Order places an order for req, or continues req.Resume while the CA can
	// still finish it (pending or ready, or finalized with the key OrderKey
	// makes for req.KeyType). An order it can no longer finish (invalid,
	// expired, unknown to the CA, or finalized with another key) is replaced
	// by a new one. A replacement the CA refuses
	// because of req.Replaces is placed again without it (Order.Replacing false).
	Order(ctx context.Context, req core.OrderRequest) (core.Order, error)
	// Validate tells the CA that o's challenges answer and waits until it has
	// validated every authorization of o.
	Validate(ctx context.Context, o core.Order) error
	// OrderKey is the private key for o's certificate when the Issuer can make
	// the same one again in any process (ok), so that an order finalized before
	// a crash is resumed; ok is false for a key type it cannot, whose caller
	// makes a fresh key.
	OrderKey(ctx context.Context, o core.Order, keyType core.KeyType) (key crypto.Signer, ok bool, err error)
	// Finalize sends the CA a request for o's hosts signed with key (for a
	// resumed order finalized before, it only waits), waits for the
	// certificate and returns its PEM chain, leaf first.
	Finalize(ctx context.Context, o core.Order, key crypto.Signer) (chainPEM []byte, err error)
	// RenewalWindow is the CA's renewal information for cert; a window that is
	// not Offered, and no error, when the CA offers none.
	RenewalWindow(ctx context.Context, cert *x509.Certificate) (core.RenewalWindow, error)
	// Identity identifies the CA (an ACME directory URL): certificates record
	// the identity of the issuer they were asked of, and a change of it
	// re-issues them.
	Identity() string
}

// Output runs after a certificate is stored (consumer rollout, CA bundles).
// Safe for concurrent use.
type Output interface {
	// Stored is told that req's Secret now holds cert. An error is logged and
	// said in a Warning Event; the certificate stays stored.
	Stored(ctx context.Context, req core.Request, cert *x509.Certificate) error
}

// Informers is a set of informers the engine starts and stops: a client-go
// informer factory, or a leaf's own (one that starts its informers only once
// their API exists).
type Informers interface {
	// Start starts the informers not started yet, until stop is closed.
	Start(stop <-chan struct{})
	// Shutdown waits for the informers Start started to stop.
	Shutdown()
}

// Secrets reads and writes certificate Secrets.
type Secrets interface {
	// Get reads a Secret from the API server, nil when there is none.
	Get(ctx context.Context, namespace, name string) (*corev1.Secret, error)
	// Summarize is the Secret informer's transform: what the cache keeps of
	// each Secret, which Read understands.
	Summarize(obj any) (any, error)
	// Read parses a certificate Secret, as the API server or the cache has it.
	Read(s *corev1.Secret) (core.Stored, error)
	// Write stores cert in req's Secret with the contents req's options ask
	// for, updating current (as last seen, nil if none) and never a Secret
	// that is not ours. It returns the certificate stored.
	Write(ctx context.Context, current *corev1.Secret, req core.Request, cert core.Certificate) (*x509.Certificate, error)
	// Rewrite gives current (ours, as last seen) the contents req's options
	// ask for, with the certificate it holds.
	Rewrite(ctx context.Context, current *corev1.Secret, req core.Request) error
	// NewKey generates a private key of keyType.
	NewKey(keyType core.KeyType) (crypto.Signer, error)
}

// Metrics is what the engine reports. Safe for concurrent use.
type Metrics interface {
	// SetCertificate records a certificate's expiry, next renewal and readiness.
	SetCertificate(namespace, secret string, notAfter, renewAt time.Time, ready bool)
	// DeleteCertificate drops what SetCertificate recorded.
	DeleteCertificate(namespace, secret string)
	// Issuance counts an order that ended.
	Issuance(kind, outcome string, took time.Duration)
	// Problem counts a certificate not ordered for reason.
	Problem(reason string)
	// Workqueue is the work queue's metrics.
	Workqueue() workqueue.MetricsProvider
}

// StateStore keeps a small record per certificate (key namespace/secretName)
// that must outlive the process: its failures, backoff and recent orders.
type StateStore interface {
	// Load returns every record, by key.
	Load(ctx context.Context) (map[string][]byte, error)
	// Save stores data as the record of key.
	Save(ctx context.Context, key string, data []byte) error
	// Delete removes the record of key; none is no error.
	Delete(ctx context.Context, key string) error
}

// Step is a point an order passes, where Config.AtStep is called (test
// builds crash the process there, to prove that any step is resumable).
type Step string

// The steps, in the order an order passes them.
const (
	StepPresented      Step = "paths-inserted" // the challenges are presented
	StepSelfChecked    Step = "self-checked"   // they answer; the CA is told next
	StepStored         Step = "secret-written" // the certificate is stored
	StepBeforeWithdraw Step = "before-restore" // the challenges are about to be withdrawn
)

// Steps lists every Step, in the order an order passes them.
func Steps() []Step {
	return []Step{StepPresented, StepSelfChecked, StepStored, StepBeforeWithdraw}
}
