package watcher

import (
	"crypto/x509"
	"strings"
	"testing"

	"k8s.io/client-go/tools/cache"

	"github.com/ingress-acme/ingress-acme/core"
)

// requestSource asks for the requests it holds, by key.
type requestSource struct {
	Source
	reqs map[string]core.Request
}

func (s requestSource) Request(key string) (core.Request, bool) {
	r, ok := s.reqs[key]
	return r, ok
}

// typeSolver solves the challenges of one type.
type typeSolver struct {
	Solver
	typ string
}

func (s typeSolver) Solves(req core.Request) bool { return req.Options.Challenge == s.typ }

func (typeSolver) Watch(func(string)) (cache.InformerSynced, error) {
	return func() bool { return true }, nil
}

// namedIssuer is an Issuer with an identity.
type namedIssuer struct {
	Issuer
	id string
}

func (i namedIssuer) Identity() string { return i.id }

func TestWantPlugsIssuerAndSolver(t *testing.T) {
	asker := []core.Asker{{Ref: core.Ref{Kind: "Ingress", Namespace: "ns", Name: "web"}}}
	req := func(o core.Options) core.Request {
		return core.Request{Namespace: "ns", Secret: "web-tls", Hosts: []string{"a.test"}, Options: o, Askers: asker}
	}
	staging := namedIssuer{id: "https://staging.test/dir"}
	tests := []struct {
		name        string
		sources     []Source
		wantIssuer  Issuer
		wantProblem string
	}{
		{"defaults", []Source{requestSource{reqs: map[string]core.Request{"ns/web-tls": req(core.Options{})}}}, namedIssuer{id: "https://ca.test/dir"}, ""},
		{"named issuer", []Source{requestSource{reqs: map[string]core.Request{"ns/web-tls": req(core.Options{Issuer: "staging"})}}}, staging, ""},
		{"unknown issuer", []Source{requestSource{reqs: map[string]core.Request{"ns/web-tls": req(core.Options{Issuer: "nope"})}}}, nil, "UnknownIssuer"},
		{"no solver for the challenge", []Source{requestSource{reqs: map[string]core.Request{"ns/web-tls": req(core.Options{Challenge: core.ChallengeDNS01})}}}, namedIssuer{id: "https://ca.test/dir"}, "NoSolver"},
		{"two sources", []Source{requestSource{reqs: map[string]core.Request{"ns/web-tls": req(core.Options{})}}, requestSource{reqs: map[string]core.Request{"ns/web-tls": req(core.Options{})}}}, namedIssuer{id: "https://ca.test/dir"}, "ConflictingSources"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Controller{cfg: withDefaults(Config{Sources: tt.sources, Solvers: []Solver{typeSolver{typ: core.ChallengeHTTP01}},
				Issuers: map[string]Issuer{"default": namedIssuer{id: "https://ca.test/dir"}, "staging": staging}, DefaultIssuer: "default", DefaultProfile: "tlsserver"})}
			w, ok := c.want("ns/web-tls")
			if !ok {
				t.Fatal("want: got none, want the request")
			}
			if w.issuer != tt.wantIssuer {
				t.Errorf("issuer: got %v, want %v", w.issuer, tt.wantIssuer)
			}
			var reasons []string
			for _, p := range w.req.Problems {
				reasons = append(reasons, p.Reason)
			}
			if tt.wantProblem == "" && len(reasons) != 0 || tt.wantProblem != "" && (len(reasons) != 1 || reasons[0] != tt.wantProblem) {
				t.Errorf("problems: got %v, want %q", reasons, tt.wantProblem)
			}
			if o := w.req.Options; o.Profile != "tlsserver" || o.Issuer == "" || o.Challenge == "" {
				t.Errorf("options: got %+v, want the defaults filled in", o)
			}
		})
	}
	c := &Controller{cfg: withDefaults(Config{Sources: []Source{requestSource{}}})}
	if _, ok := c.want("ns/other-tls"); ok {
		t.Error("a key no source asks for: got a request, want none")
	}
}

// A request that names no challenge gets the configured default, and DNS-01
// when it has a wildcard host and the default is HTTP-01; one that names a
// challenge keeps it; a wildcard nobody can present says why.
func TestWantChallengeDefaults(t *testing.T) {
	tests := []struct {
		name, def, asked string
		hosts            []string
		want, problem    string
	}{
		{"http-01 by default", "", "", []string{"a.test"}, core.ChallengeHTTP01, ""},
		{"wildcard gets dns-01", "", "", []string{"*.a.test", "a.test"}, core.ChallengeDNS01, ""},
		{"configured default", core.ChallengeDNS01, "", []string{"a.test"}, core.ChallengeDNS01, ""},
		{"persistent default covers wildcards", core.ChallengeDNSPersist01, "", []string{"*.a.test"}, core.ChallengeDNSPersist01, ""},
		{"asked for stays", core.ChallengeDNS01, core.ChallengeHTTP01, []string{"a.test"}, core.ChallengeHTTP01, ""},
		{"wildcard without dns", "", "", []string{"*.a.test"}, core.ChallengeDNS01, "wildcard hosts need a DNS challenge"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := core.Request{Namespace: "ns", Secret: "web-tls", Hosts: tt.hosts, Options: core.Options{Challenge: tt.asked}}
			solvers := []Solver{typeSolver{typ: core.ChallengeHTTP01}, typeSolver{typ: core.ChallengeDNS01}, typeSolver{typ: core.ChallengeDNSPersist01}}
			if tt.problem != "" {
				solvers = solvers[:1]
			}
			c := &Controller{cfg: withDefaults(Config{Sources: []Source{requestSource{reqs: map[string]core.Request{"ns/web-tls": req}}},
				Solvers: solvers, Issuers: map[string]Issuer{"default": namedIssuer{id: "https://ca.test/dir"}},
				DefaultIssuer: "default", DefaultChallenge: tt.def})}
			w, _ := c.want("ns/web-tls")
			if w.req.Options.Challenge != tt.want {
				t.Errorf("challenge: got %q, want %q", w.req.Options.Challenge, tt.want)
			}
			var msgs []string
			for _, p := range w.req.Problems {
				msgs = append(msgs, p.Message)
			}
			if tt.problem == "" && len(msgs) != 0 || tt.problem != "" && (len(msgs) != 1 || !strings.Contains(msgs[0], tt.problem)) {
				t.Errorf("problems: got %q, want one saying %q", msgs, tt.problem)
			}
		})
	}
}

// A certificate is judged by the issuer it was asked of: a change of the
// issuer's name or identity re-issues it; one recorded before issuers had
// names is the default's.
func TestDiffersByIssuerAskedOf(t *testing.T) {
	c := &Controller{cfg: Config{DefaultIssuer: "default"}}
	leaf := &x509.Certificate{DNSNames: []string{"a.test"}}
	stored := func(issuer, dir string) core.Stored {
		return core.Stored{Leaf: leaf, KeyType: core.ECDSAP256, Issuer: issuer, Directory: dir, ProfileRecorded: true}
	}
	w := func(issuer, dir string) wanted {
		return wanted{req: core.Request{Hosts: []string{"a.test"}, Options: core.Options{Issuer: issuer, KeyType: core.ECDSAP256}},
			issuer: namedIssuer{id: dir}}
	}
	tests := []struct {
		name   string
		stored core.Stored
		w      wanted
		want   reason
	}{
		{"same", stored("default", "https://a/dir"), w("default", "https://a/dir"), reasonNone},
		{"recorded before names: the default", stored("", "https://a/dir"), w("default", "https://a/dir"), reasonNone},
		{"recorded before names, another issuer asked", stored("", "https://a/dir"), w("staging", "https://a/dir"), reasonIssuer},
		{"another issuer asked", stored("default", "https://a/dir"), w("staging", "https://s/dir"), reasonIssuer},
		{"the issuer's directory changed", stored("default", "https://a/dir"), w("default", "https://b/dir"), reasonDirectory},
		{"another profile", core.Stored{Leaf: leaf, KeyType: core.ECDSAP256, Issuer: "default", Directory: "https://a/dir", Profile: "shortlived", ProfileRecorded: true}, w("default", "https://a/dir"), reasonProfile},
		{"no profile recorded", core.Stored{Leaf: leaf, KeyType: core.ECDSAP256, Issuer: "default", Directory: "https://a/dir", Profile: ""}, w("default", "https://a/dir"), reasonNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := c.differs(tt.w, tt.stored); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}
