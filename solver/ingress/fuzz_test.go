package ingress

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/ingress-acme/ingress-acme/core"
)

// fuzzJournalIngress is the Ingress FuzzJournal starts from: the user's own
// routes, including a challenge path of their own to their own Service.
func fuzzJournalIngress() *networkingv1.Ingress {
	ing := fxIngress("web", "a.example.com", "b.example.com")
	ing.Spec.Rules = append(ing.Spec.Rules, fxRule("a.example.com", "/second", core.ChallengePathPrefix+"users-own"))
	ing.Spec.Rules = append(ing.Spec.Rules, networkingv1.IngressRule{Host: "c.example.com"})
	return ing
}

// userPaths lists the paths not routed to service, by rule host.
func userPaths(ing *networkingv1.Ingress, service string) []string {
	var out []string
	for _, r := range ing.Spec.Rules {
		if r.HTTP == nil {
			out = append(out, r.Host+" -")
			continue
		}
		for _, p := range r.HTTP.Paths {
			if p.Backend.Service == nil || p.Backend.Service.Name != service {
				out = append(out, r.Host+" "+p.Path)
			}
		}
	}
	return out
}

// FuzzJournal inserts and removes challenge paths on an Ingress with an arbitrary
// journal annotation: nothing may panic; an unparsable journal fails the
// insertion and leaves the Ingress alone; after removePaths(ing, "", service) no
// challenge path to our Service is left, none of the user's paths is lost, and a
// second removal changes nothing.
func FuzzJournal(f *testing.F) {
	f.Add("", false, "a.example.com", "tok1", "web-tls", "new.example.com", "tok2")
	f.Add(`[{"secret":"web-tls","host":"a.example.com","token":"tok1"}]`, true, "a.example.com", "tok1", "web-tls", "b.example.com", "tok2")
	f.Add(`[{"secret":"other","host":"x.example.com","token":"old"}]`, true, "A.EXAMPLE.COM", "tok1", "web-tls", "a.example.com", "tok1")
	f.Add(`[]`, true, "c.example.com", "t", "s", "", "t")
	f.Add(`null`, true, "", "", "", "", "")
	f.Add(`{"secret":"s"}`, true, "a.example.com", "t", "s", "b.example.com", "u")
	f.Add(`[{"secret":1}]`, true, "a.example.com", "t", "s", "b.example.com", "u")
	f.Add(`[{`, true, "a.example.com", "users-own", "s", "b.example.com", "../x")
	f.Add(`[{"SECRET":"s","Host":"a.example.com","TOKEN":"t"},{}]`, true, "a.example.com", "t", "s", "a.example.com", "")

	f.Fuzz(func(t *testing.T, journal string, hasJournal bool, host1, token1, secret1, host2, token2 string) {
		for _, s := range []string{journal, host1, token1, secret1, host2, token2} {
			if !utf8.ValidString(s) {
				// The journal is JSON, which carries only valid UTF-8; real hosts
				// are validated and tokens come from the CA's JSON.
				t.Skip()
			}
		}
		ing := fuzzJournalIngress()
		if hasJournal {
			ing.Annotations[core.AnnotationChallenges] = journal
		}
		user := userPaths(ing, solverSvc)
		var prior []Entry
		priorErr := json.Unmarshal([]byte(journal), &prior)
		parsable := !hasJournal || priorErr == nil

		entries := []Entry{{Secret: secret1, Host: host1, Token: token1}, {Secret: "other-tls", Host: host2, Token: token2}}
		before := ing.DeepCopy()
		changed, err := insertPaths(ing, entries, solverSvc, networkingv1.PathTypeExact)
		if (err == nil) != parsable {
			t.Fatalf("journal %q: got err %v, want error %v", journal, err, !parsable)
		}
		if err != nil {
			if changed || fxLayout(ing) != fxLayout(before) || ing.Annotations[core.AnnotationChallenges] != journal {
				t.Fatalf("got the Ingress changed after an error")
			}
		} else {
			got, err := readJournal(ing)
			if err != nil {
				t.Fatalf("got an unparsable journal after insertion: %v", err)
			}
			for _, e := range entries {
				if !slices.Contains(got, e) {
					t.Fatalf("got journal %v, want it to hold %v", got, e)
				}
				// An entry journalled already is taken as inserted already.
				if !slices.Contains(prior, e) && !hasPath(ing, e.Host, e.Path(), solverSvc) {
					t.Fatalf("got %s, want %s on a rule for %q", fxLayout(ing), e.Path(), e.Host)
				}
			}
		}
		if !slices.Equal(userPaths(ing, solverSvc), user) {
			t.Fatalf("insertion: got user paths %v, want %v", userPaths(ing, solverSvc), user)
		}

		removePaths(ing, secret1, solverSvc)
		removePaths(ing, "", solverSvc)

		for _, r := range ing.Spec.Rules {
			if r.HTTP == nil {
				continue
			}
			if len(r.HTTP.Paths) == 0 {
				t.Fatalf("got an empty rule for %q left, want it dropped", r.Host)
			}
			for _, p := range r.HTTP.Paths {
				if p.Backend.Service != nil && p.Backend.Service.Name == solverSvc && strings.HasPrefix(p.Path, core.ChallengePathPrefix) {
					t.Fatalf("got %s on %q left after removing everything: %s", p.Path, r.Host, fxLayout(ing))
				}
			}
		}
		if got := userPaths(ing, solverSvc); !slices.Equal(got, user) {
			t.Fatalf("got user paths %v, want %v", got, user)
		}
		if left, err := readJournal(ing); err != nil || len(left) != 0 {
			t.Fatalf("got journal %v, %v, want empty", left, err)
		}
		after := ing.DeepCopy()
		if removePaths(ing, "", solverSvc) {
			t.Fatalf("second removal: got changed true, want false")
		}
		if fxLayout(ing) != fxLayout(after) {
			t.Fatalf("second removal: got %s, want %s", fxLayout(ing), fxLayout(after))
		}
	})
}

func hasPath(ing *networkingv1.Ingress, host, path, service string) bool {
	for _, r := range ing.Spec.Rules {
		if !strings.EqualFold(r.Host, host) || r.HTTP == nil {
			continue
		}
		for _, p := range r.HTTP.Paths {
			if p.Path == path && p.Backend.Service != nil && p.Backend.Service.Name == service {
				return true
			}
		}
	}
	return false
}
