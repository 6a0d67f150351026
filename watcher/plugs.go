package watcher

import (
	"context"
	"crypto"
	"crypto/x509"

	corev1 "k8s.io/api/core/v1"

	"github.com/ingress-acme/ingress-acme/core"
)

// Issuer is where certificates come from (an ACME CA today; a second CA or an
// internal CA next): one method per step of an order. It must be safe for
// concurrent use. Any error after which the CA asked us to wait is, or wraps, a
// *core.RetryAfterError; the controller then backs off at least that long.
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
	// DirectoryURL identifies the CA; certificates record it, and a change of
	// CA re-issues them.
	DirectoryURL() string
}

// Secrets reads and writes certificate Secrets.
type Secrets interface {
	// Get reads a Secret from the API server, nil when there is none.
	Get(ctx context.Context, namespace, name string) (*corev1.Secret, error)
	// Read parses a certificate Secret: its leaf, key type and issuing
	// directory. Of a cached Secret, the leaf may carry only its validity,
	// serial, authority key ID and DNS names: what deciding and ARI read.
	Read(s *corev1.Secret) (leaf *x509.Certificate, keyType core.KeyType, directory string, err error)
	// Write stores chainPEM and key in namespace/name, recording the directory
	// and profile it was ordered with (core.AnnotationProfile), updating current
	// (as last seen, nil if none) and never a Secret that is not ours.
	Write(ctx context.Context, current *corev1.Secret, namespace, name string, chainPEM []byte, key crypto.Signer, directory, profile string) error
	// NewKey generates a private key of keyType.
	NewKey(keyType core.KeyType) (crypto.Signer, error)
}

// ChallengeServer answers the HTTP-01 challenges presented to it. Safe for
// concurrent use.
type ChallengeServer interface {
	Present(host, token, keyAuth string)
	Remove(token string)
}

// SolverService routes a namespace's challenge paths to the challenge server.
type SolverService interface {
	// Ensure makes the Service (and its endpoints) exist in namespace.
	Ensure(ctx context.Context, namespace string) error
	// Forget makes the next Ensure check again, after a challenge failed.
	Forget(namespace string)
	// Name is the Service's name.
	Name() string
}

// SelfChecker checks that a challenge answers through the ingress, the way the
// CA will ask for it. Check returns nil once it does; its error says what
// answered instead.
type SelfChecker interface {
	Check(ctx context.Context, host, token, keyAuth string) error
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
