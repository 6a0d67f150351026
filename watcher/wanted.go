package watcher

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/ingress-acme/ingress-acme/core"
)

// wanted is a certificate as a source asks for it, with the plugs that serve
// it: the issuer its request names and the solver that presents its challenges.
type wanted struct {
	req    core.Request
	src    Source
	issuer Issuer
	solver Solver
}

// want asks the sources for key; ok is false when none asks for it. What
// stops the request (two sources asking, an issuer or a challenge nobody
// serves) is added to its Problems.
func (c *Controller) want(key string) (w wanted, ok bool) {
	for _, s := range c.cfg.Sources {
		req, asks := s.Request(key)
		if !asks {
			continue
		}
		if ok {
			w.req.Problems = append(w.req.Problems, core.Problem{Object: firstAsker(req), Reason: "ConflictingSources",
				Message: fmt.Sprintf("Secret %s is asked for by objects of two kinds: none of them gets it", req.Secret)})
			continue
		}
		w, ok = wanted{req: req, src: s}, true
	}
	if !ok {
		return w, false
	}
	c.plug(&w)
	return w, true
}

// plug fills in w's issuer and solver, with the defaults its request leaves
// to the engine, or a problem saying why there is none.
func (c *Controller) plug(w *wanted) {
	o := &w.req.Options
	if o.Profile == "" {
		o.Profile = c.cfg.DefaultProfile
	}
	if o.Issuer == "" {
		o.Issuer = c.cfg.DefaultIssuer
	}
	if o.Challenge == "" {
		o.Challenge = c.challenge(w.req.Hosts)
	}
	if w.issuer = c.cfg.Issuers[o.Issuer]; w.issuer == nil {
		w.req.Problems = append(w.req.Problems, core.Problem{Object: firstAsker(w.req), Reason: "UnknownIssuer",
			Message: fmt.Sprintf("no issuer is named %q", o.Issuer)})
	}
	for _, s := range c.cfg.Solvers {
		if s.Solves(w.req) {
			w.solver = s
			return
		}
	}
	if len(w.req.Problems) == 0 {
		msg := fmt.Sprintf("no way to present a %s challenge for certificate %s is configured", o.Challenge, w.req.Secret)
		if slices.ContainsFunc(w.req.Hosts, core.Wildcard) {
			msg += " (its wildcard hosts need a DNS challenge)"
		}
		w.req.Problems = append(w.req.Problems, core.Problem{Object: firstAsker(w.req), Reason: "NoSolver", Message: msg})
	}
}

// challenge is the challenge type for a request with hosts that names none:
// the configured default, or DNS-01 where HTTP-01 cannot validate a host.
func (c *Controller) challenge(hosts []string) string {
	d := cmp.Or(c.cfg.DefaultChallenge, core.ChallengeHTTP01)
	if d == core.ChallengeHTTP01 && slices.ContainsFunc(hosts, core.Wildcard) {
		return core.ChallengeDNS01
	}
	return d
}

func firstAsker(req core.Request) core.Ref {
	if len(req.Askers) == 0 {
		return core.Ref{Namespace: req.Namespace}
	}
	return req.Askers[0].Ref
}
