// Package core holds the names and small values that several of ingress-acme's
// packages must agree on: the label and annotation keys, the challenge path, the
// key types, the challenge and order values that cross from the CA to the
// solver, the fault points, and the error that carries a CA's Retry-After. It
// imports only the standard library and holds no state.
package core

import (
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ChallengePathPrefix is where HTTP-01 challenges live (RFC 8555, section 8.3).
const ChallengePathPrefix = "/.well-known/acme-challenge/"

// Labels on every object ingress-acme creates; Selector matches exactly them.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "ingress-acme"
	Selector       = LabelManagedBy + "=" + ManagedBy
)

// AnnotationPrefix is the prefix of every annotation of ours.
const AnnotationPrefix = "ingress-acme.io/"

// AnnotationKeyType chooses a certificate's private key type on an Ingress, and
// records it on the Secret that holds the certificate.
const AnnotationKeyType = AnnotationPrefix + "key-type"

// AnnotationProfile asks for a CA profile on an Ingress, and records on the
// Secret the profile its certificate was ordered with ("" for the CA's default).
const AnnotationProfile = AnnotationPrefix + "profile"

// KeyType names a certificate private key algorithm.
type KeyType string

// The key types a certificate can have; ECDSAP256 is the default.
const (
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
	RSA2048   KeyType = "rsa-2048"
	RSA4096   KeyType = "rsa-4096"
)

// KeyTypes lists every key type, the default first. Each call returns a new slice.
func KeyTypes() []KeyType { return []KeyType{ECDSAP256, ECDSAP384, RSA2048, RSA4096} }

// ParseKeyType returns the key type named s (any case, trimmed), or an error
// naming the valid ones.
func ParseKeyType(s string) (KeyType, error) {
	kt := KeyType(strings.ToLower(strings.TrimSpace(s)))
	if slices.Contains(KeyTypes(), kt) {
		return kt, nil
	}
	names := make([]string, 0, 4)
	for _, k := range KeyTypes() {
		names = append(names, string(k))
	}
	return "", fmt.Errorf("unknown key type %q (want one of %s)", s, strings.Join(names, ", "))
}

// Challenge is an HTTP-01 challenge to present: GET
// http://Host/.well-known/acme-challenge/Token must answer KeyAuth.
type Challenge struct {
	Host    string
	Token   string
	KeyAuth string
}

// Path is the URL path the challenge is served at.
func (c Challenge) Path() string { return ChallengePathPrefix + c.Token }

// OrderRequest asks a CA for a certificate.
type OrderRequest struct {
	Hosts []string
	// Replaces, when not nil, is the certificate this order renews: the CA is
	// told so (an ARI replacement order) when it offers renewal information.
	Replaces *x509.Certificate
	// Profile is the CA's named certificate profile; "": the CA's default.
	Profile string
	// Resume is the URL of an order placed earlier (by this or another
	// process) to continue instead of placing a new one; "" for none.
	Resume string
	// KeyType is the certificate key's type: an order finalized before is
	// continued only when the Issuer can make its key again.
	KeyType KeyType
}

// Order is an order at the CA, as far as its certificate's owner needs it.
type Order struct {
	URL   string
	Hosts []string
	// Challenges are those the CA still wants answered before it issues; none
	// when every authorization is already valid.
	Challenges []Challenge
	// Resumed tells that the order was placed earlier, not by this request.
	Resumed bool
	// Replacing tells that the CA took it as a replacement of OrderRequest.Replaces.
	Replacing bool
}

// RenewalWindow is the CA's renewal information (ARI) for one certificate.
type RenewalWindow struct {
	// Start and End bound the window the CA suggests; both zero when the CA
	// offers no renewal information.
	Start, End time.Time
	// RetryAfter is when the CA wants to be asked again; zero: not said.
	RetryAfter time.Time
}

// Offered reports whether the CA suggested a window.
func (w RenewalWindow) Offered() bool { return !w.Start.IsZero() }

// RetryAfterError is an error after which the party that answered asked not to
// be asked again before At (an HTTP 429 or 503 with Retry-After).
type RetryAfterError struct {
	Err error
	At  time.Time
}

func (e *RetryAfterError) Error() string { return e.Err.Error() }
func (e *RetryAfterError) Unwrap() error { return e.Err }

// Points in an order where a fault hook is called; tests built with the faults
// tag make the process crash there.
const (
	FaultPathsInserted = "paths-inserted" // challenge paths are in the Ingress
	FaultSelfChecked   = "self-checked"   // they answer; the CA is told next
	FaultValidating    = "validating"     // the CA has been told to validate
	FaultFinalized     = "finalized"      // the order is valid, the certificate not yet downloaded
	FaultSecretWritten = "secret-written" // the certificate is stored
	FaultBeforeRestore = "before-restore" // the paths are about to come out
)

// FaultPoints lists every fault point, in the order an order passes them.
func FaultPoints() []string {
	return []string{FaultPathsInserted, FaultSelfChecked, FaultValidating, FaultFinalized, FaultSecretWritten, FaultBeforeRestore}
}
