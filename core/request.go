package core

import (
	"errors"
	"slices"
	"strings"
)

// ErrGone is returned by an edit of an object that no longer exists.
var ErrGone = errors.New("object no longer exists")

// Ref names an object: one that asks for a certificate, or where a challenge
// is presented. Kind is the object's kind ("Ingress").
type Ref struct {
	Kind, Namespace, Name string
}

// String is namespace/name.
func (r Ref) String() string { return r.Namespace + "/" + r.Name }

// Asker is an object that asks for a certificate, with what it asks for
// itself: what the source writes back to it once the certificate is stored.
type Asker struct {
	Ref
	// Hosts are the asker's own hosts for the certificate (the request's are
	// the union of every asker's), as written.
	Hosts []string
	// Implicit tells that the asker did not name the Secret itself (an Ingress
	// without spec.tls): the source makes it name the Secret once it exists.
	Implicit bool
}

// Problem is something wrong with an object, said in a Warning Event on it.
type Problem struct {
	Object  Ref
	Reason  string // the Event's reason, e.g. "InvalidAnnotation"
	Message string
}

// The challenge types a request may ask for (RFC 8555 section 8, and
// DNS-PERSIST-01: a persistent TXT record naming the CA and the account).
const (
	ChallengeHTTP01       = "http-01"
	ChallengeDNS01        = "dns-01"
	ChallengeDNSPersist01 = "dns-persist-01"
)

// Wildcard reports whether host is a wildcard ("*.example.com"), which only
// a DNS challenge can validate.
func Wildcard(host string) bool { return strings.HasPrefix(host, "*.") }

// Options are what a request asks of its certificate besides its hosts. The
// zero value of each field means the default. Options are comparable.
type Options struct {
	// Issuer names the issuer to ask; "": the default issuer.
	Issuer string
	// Profile is the CA's certificate profile; "": the CA's default.
	Profile string
	// KeyType is the certificate key's type.
	KeyType KeyType
	// Challenge is the challenge type to answer; "": the engine's default
	// (ChallengeDNS01 for a certificate with a wildcard host when the default
	// is ChallengeHTTP01).
	Challenge string
	// Present is how the challenge is presented, for the solver alone (for
	// HTTP-01 through an Ingress: the path type); opaque to everyone else.
	Present string
	// SecretKeys are the Secret's keys beyond tls.crt and tls.key, sorted and
	// comma-separated ("" for none).
	SecretKeys string
}

// Request is one certificate as the objects that ask for it want it: the
// neutral unit the engine works on, whatever kind of object asked. A source
// makes it afresh from its objects at every sync; it lives in memory only.
type Request struct {
	Namespace string
	Secret    string   // the Secret that holds the certificate, in Namespace
	Hosts     []string // lowercased, sorted, deduplicated
	Options   Options
	// Askers are the objects that ask for the certificate, sorted by name:
	// Events about it go to each, and what is written back to them.
	Askers []Asker
	// Presenters tells, per host, where its challenge is presented (for
	// HTTP-01 through an Ingress: the Ingress that routes it).
	Presenters map[string]Ref
	// Problems stop the certificate: no order is placed while there are any.
	Problems []Problem
	// Warnings do not stop it; each is said once per desired state.
	Warnings []Problem
}

// Key is the work queue key of the certificate: namespace/secret.
func (r Request) Key() string { return r.Namespace + "/" + r.Secret }

// Fingerprint identifies what r asks for, to tell when that changes.
func (r Request) Fingerprint() string {
	o := r.Options
	return strings.Join(r.Hosts, ",") + "|" + string(o.KeyType) + "|" + o.Present + "|" + o.Profile +
		"|" + o.Issuer + "|" + o.Challenge + "|" + o.SecretKeys
}

// SameHosts reports whether a and b hold the same hosts, in any order and case.
func SameHosts(a, b []string) bool {
	return slices.Equal(NormalHosts(a), NormalHosts(b))
}

// NormalHosts returns hosts lowercased, deduplicated and sorted, in a new slice.
func NormalHosts(hosts []string) []string {
	out := make([]string, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, strings.ToLower(h))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Outcome is how an order ended, for the solver that withdraws its challenges.
type Outcome int

const (
	// Failed: no certificate was stored.
	Failed Outcome = iota
	// Issued: the certificate is stored in its Secret; the askers may now name it.
	Issued
	// Abandoned: nobody asks for the certificate any more.
	Abandoned
)
