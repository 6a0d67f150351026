package acme

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	acmelib "github.com/eggsampler/acme/v3"

	"github.com/ingress-acme/ingress-acme/core"
)

// This file is the only one that calls github.com/eggsampler/acme/v3, so what
// this package relies on from it is in one place, and lib_test.go fails when
// that changes: an OptionFunc applied to a copy of a Client changes only that
// copy's HTTP client; a looked-up account carries the thumbprint that
// FetchAuthorization prefills key authorizations with; ReplacementOrderExtension
// sends "replaces"; a CA's problem is returned as an acmelib.Problem;
// GetRenewalInfo fills RetryAfter. The library's polling is never used: the
// challenge is answered with one signed POST of our own (post.go), and
// FinalizeOrder runs with IgnorePolling and IgnoreRetryAfter.

// lib is the library's client and account for one directory. Its methods make
// one request each (plus a nonce when none is left) through the HTTP client it
// was bound with; it holds no lock and copies are independent.
type lib struct {
	c       acmelib.Client
	account acmelib.Account
}

// order is what this package uses of an ACME order.
type order struct {
	URL            string
	Status         string
	Hosts          []string
	Authorizations []string
	Finalize       string
	Certificate    string
	Replaces       string
	Err            error // the CA's problem on an invalid order; nil if none
}

// authz is what this package uses of an authorization: its challenge of
// the type asked for.
type authz struct {
	Host      string
	Status    string
	Challenge challenge // Token "" when the CA offers no challenge of that type
	Err       error     // that challenge's problem; nil if none
}

type challenge struct {
	URL, Status, Token, KeyAuth string
}

// dial reads the directory at url through hc.
func dial(url string, hc *http.Client) (lib, error) {
	c, err := acmelib.NewClient(url, acmelib.WithHTTPClient(hc), acmelib.WithRetryCount(8))
	return lib{c: c}, err
}

// with returns a copy of l whose requests go through hc.
func (l lib) with(hc *http.Client) lib {
	_ = acmelib.WithHTTPClient(hc)(&l.c) // fails only on a nil client
	return l
}

// lookUp returns l with the existing account of key; an error that is a
// problem of type accountDoesNotExist when there is none.
func (l lib) lookUp(key crypto.Signer) (lib, error) {
	a, err := l.c.NewAccountOptions(key, acmelib.NewAcctOptOnlyReturnExisting())
	l.account = a
	return l, err
}

// register returns l with a new account of key.
func (l lib) register(key crypto.Signer, email string, eab *EAB) (lib, error) {
	opts := []acmelib.NewAccountOptionFunc{acmelib.NewAcctOptAgreeTOS()}
	if email != "" {
		opts = append(opts, acmelib.NewAcctOptWithContacts("mailto:"+email))
	}
	if eab != nil {
		opts = append(opts, acmelib.NewAcctOptExternalAccountBinding(acmelib.ExternalAccountBinding{
			KeyIdentifier: eab.KeyID, MacKey: eab.HMAC, Algorithm: "HS256", HashFunc: crypto.SHA256,
		}))
	}
	a, err := l.c.NewAccountOptions(key, opts...)
	l.account = a
	return l, err
}

func (l lib) accountURL() string        { return l.account.URL }
func (l lib) accountKey() crypto.Signer { return l.account.PrivateKey }
func (l lib) nonceURL() string          { return l.c.Directory().NewNonce }
func (l lib) offersARI() bool           { return l.c.Directory().RenewalInfo != "" }

// newOrder places an order for hosts, a replacement of replaces when that is
// not nil, with the named profile unless it is "".
func (l lib) newOrder(hosts []string, replaces *x509.Certificate, profile string) (order, error) {
	if profile != "" {
		if _, ok := l.c.Directory().Meta.Profiles[profile]; !ok {
			return order{}, fmt.Errorf("the CA offers no profile %q (it offers: %s)", profile, l.profiles())
		}
	}
	ids := make([]acmelib.Identifier, len(hosts))
	for i, h := range hosts {
		ids[i] = acmelib.Identifier{Type: "dns", Value: h}
	}
	o, err := l.c.ReplacementOrderExtension(l.account, replaces, ids, acmelib.OrderExtension{Profile: profile})
	return orderOf(o), err
}

func (l lib) profiles() string {
	var names []string
	for n := range l.c.Directory().Meta.Profiles {
		names = append(names, n)
	}
	if len(names) == 0 {
		return "none"
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// fetchOrder reads the order at url.
func (l lib) fetchOrder(url string) (order, error) {
	o, err := l.c.FetchOrder(l.account, url)
	return orderOf(o), err
}

func orderOf(o acmelib.Order) order {
	out := order{URL: o.URL, Status: o.Status, Authorizations: o.Authorizations, Finalize: o.Finalize,
		Certificate: o.Certificate, Replaces: o.Replaces}
	for _, id := range o.Identifiers {
		out.Hosts = append(out.Hosts, id.Value)
	}
	if o.Error.Type != "" {
		out.Err = o.Error
	}
	return out
}

// fetchAuthz reads the authorization at url, with its challenge of type typ;
// the key authorization is the library's: token "." account thumbprint.
func (l lib) fetchAuthz(url, typ string) (authz, error) {
	a, err := l.c.FetchAuthorization(l.account, url)
	if err != nil {
		return authz{}, err
	}
	out := authz{Host: a.Identifier.Value, Status: a.Status}
	if ch, ok := a.ChallengeMap[typ]; ok {
		out.Challenge = challenge{URL: ch.URL, Status: ch.Status, Token: ch.Token, KeyAuth: ch.KeyAuthorization}
		if ch.Error.Type != "" {
			out.Err = ch.Error
		}
	}
	return out, nil
}

// finalize sends the CSR of o and returns the order as the CA answered, without
// waiting for it: in v3.8.1 IgnoreRetryAfter is what skips both of
// FinalizeOrder's polling loops (IgnorePolling is set for versions that use it).
func (l lib) finalize(o order, csr *x509.CertificateRequest) (order, error) {
	c := l.c
	c.IgnorePolling, c.IgnoreRetryAfter = true, true
	got, err := c.FinalizeOrder(l.account, acmelib.Order{URL: o.URL, Status: o.Status, Finalize: o.Finalize}, csr)
	if got.URL == "" {
		got.URL = o.URL
	}
	return orderOf(got), err
}

// certificates downloads the chain at url, leaf first.
func (l lib) certificates(url string) ([]*x509.Certificate, error) {
	return l.c.FetchCertificates(l.account, url)
}

// renewalInfo is the CA's window for cert; ok false when the CA offers none.
func (l lib) renewalInfo(cert *x509.Certificate) (w core.RenewalWindow, ok bool, err error) {
	ri, err := l.c.GetRenewalInfo(cert)
	if errors.Is(err, acmelib.ErrRenewalInfoNotSupported) {
		return core.RenewalWindow{}, false, nil
	}
	w = core.RenewalWindow{Start: ri.SuggestedWindow.Start, End: ri.SuggestedWindow.End, RetryAfter: ri.RetryAfter}
	return w, err == nil, err
}

// problem is an ACME problem document (RFC 8555, section 6.7), as the library
// returns it.
type problem = acmelib.Problem

// isProblem reports whether err is an ACME problem, of one of types when any are
// given (matched on the part after the last ':', e.g. "rateLimited").
func isProblem(err error, types ...string) bool {
	var p problem
	if !errors.As(err, &p) {
		return false
	}
	short := p.Type[strings.LastIndex(p.Type, ":")+1:]
	return len(types) == 0 || slices.Contains(types, short)
}
