package core

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"time"
)

// ChallengePathPrefix is where HTTP-01 challenges live (RFC 8555, section 8.3).
const ChallengePathPrefix = "/.well-known/acme-challenge/"

// Challenge is one challenge to present for Host, of Type (ChallengeHTTP01:
// GET http://Host/.well-known/acme-challenge/Token answers KeyAuth;
// ChallengeDNS01: a TXT record _acme-challenge.Host holds Digest()).
type Challenge struct {
	Type    string
	Host    string
	Token   string
	KeyAuth string
}

// Path is the URL path an HTTP-01 challenge is served at.
func (c Challenge) Path() string { return ChallengePathPrefix + c.Token }

// Digest is what a DNS-01 challenge publishes: the key authorization's
// SHA-256, base64url without padding (RFC 8555, section 8.4).
func (c Challenge) Digest() string {
	sum := sha256.Sum256([]byte(c.KeyAuth))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

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
	// Challenge is the type of challenge to answer (ChallengeHTTP01 if "").
	Challenge string
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
	// SignedBy is the identity of the CA the order was placed with when that
	// is not the issuer asked of (an issuer that falls back to another CA);
	// "" for the issuer asked of.
	SignedBy string
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

// Certificate is a certificate to store, with what it was asked of.
type Certificate struct {
	ChainPEM []byte        // leaf first
	Key      crypto.Signer // the leaf's private key
	// Issuer and Directory are the name and the identity of the issuer the
	// certificate was asked of (see Stored).
	Issuer, Directory string
	// SignedBy is the identity of the CA that signed it.
	SignedBy string
}

// Stored is what a certificate Secret of ours holds and records, as far as
// deciding on it needs.
type Stored struct {
	// Leaf is the certificate; read from a cache it has only its validity,
	// serial, authority key ID and DNS names.
	Leaf    *x509.Certificate
	KeyType KeyType // "" for a key of a type not in KeyTypes
	// Issuer is the name of the issuer it was asked of; "" when stored before
	// issuers had names (then: the default issuer).
	Issuer string
	// Directory is the identity of the issuer it was asked of.
	Directory string
	// Profile is the profile it was ordered with; ProfileRecorded is false
	// for a Secret stored before profiles were recorded.
	Profile         string
	ProfileRecorded bool
	// SecretKeys are its keys beyond tls.crt and tls.key (see Options.SecretKeys).
	SecretKeys string
}
