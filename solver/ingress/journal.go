package ingress

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/ingress-acme/ingress-acme/core"
)

// The journal is the annotation core.AnnotationChallenges on an Ingress: the
// challenge paths we inserted into it and have not removed yet. It is written
// in the same Update as the paths, so whoever finds it with no live order
// continues the order it names or removes exactly what it lists.

// Entry is one challenge path inserted into an Ingress, as journalled.
type Entry struct {
	Secret string `json:"secret"` // the certificate's Secret name, in the Ingress's namespace
	Host   string `json:"host"`
	Token  string `json:"token"`
	// Order is the URL of the order the token belongs to, so that whoever
	// finds the entry can continue that order instead of placing a new one.
	Order string `json:"order,omitempty"`
	// KeyAuth is the token's key authorization, which the CA fetches: public,
	// and what every replica needs to answer the challenge (see answer.go).
	KeyAuth string `json:"keyAuth,omitempty"`
}

// Path is the URL path the entry's challenge is served at.
func (e Entry) Path() string { return core.ChallengePathPrefix + e.Token }

// samePath reports whether e and o journal the same path for the same
// certificate (a journal written before keyAuth was recorded lacks it).
func (e Entry) samePath(o Entry) bool {
	return e.Secret == o.Secret && strings.EqualFold(e.Host, o.Host) && e.Token == o.Token
}

// readJournal returns the entries journalled on ing, none when it has no journal.
// An unparsable journal is an error.
func readJournal(ing *networkingv1.Ingress) ([]Entry, error) {
	raw, ok := ing.Annotations[core.AnnotationChallenges]
	if !ok {
		return nil, nil
	}
	var entries []Entry
	if err := json.Unmarshal([]byte(raw), &entries); err != nil {
		return nil, fmt.Errorf("annotation %s: %w", core.AnnotationChallenges, err)
	}
	return entries, nil
}

func writeJournal(ing *networkingv1.Ingress, entries []Entry) {
	if len(entries) == 0 {
		delete(ing.Annotations, core.AnnotationChallenges)
		return
	}
	raw, _ := json.Marshal(entries) // a slice of string structs always marshals
	if ing.Annotations == nil {
		ing.Annotations = map[string]string{}
	}
	ing.Annotations[core.AnnotationChallenges] = string(raw)
}

// insertPaths adds to ing, which the caller owns (a copy, not a lister's object), a
// path for each entry routed to service port 80, and journals them. The path goes
// first in the first rule for the entry's host that has HTTP paths, so controllers
// that match in order see it; where no such rule exists, a rule for the host is
// appended. Entries already present are skipped; what another order of the
// same certificate journalled is removed (entries all belong to one order). It
// returns whether ing changed; an unparsable journal is an error and leaves ing
// as it was.
func insertPaths(ing *networkingv1.Ingress, entries []Entry, service string, pathType networkingv1.PathType) (bool, error) {
	if _, err := readJournal(ing); err != nil {
		return false, err
	}
	// An order replaces any other of its certificate's (one that a process
	// that died left, or that the CA failed), in the same Update: the journal
	// names only the live order, which is the one a restart continues.
	changed := len(entries) > 0 && removeEntries(ing, service, func(e Entry) bool {
		return e.Secret == entries[0].Secret && e.Order != entries[0].Order
	})
	journal, _ := readJournal(ing)
	for _, e := range entries {
		if slices.ContainsFunc(journal, e.samePath) {
			continue
		}
		journal = append(journal, e)
		changed = true
		path := networkingv1.HTTPIngressPath{
			Path:     e.Path(),
			PathType: &pathType,
			Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
				Name: service,
				Port: networkingv1.ServiceBackendPort{Number: 80},
			}},
		}
		i := slices.IndexFunc(ing.Spec.Rules, func(r networkingv1.IngressRule) bool {
			return strings.EqualFold(r.Host, e.Host) && r.HTTP != nil
		})
		if i < 0 {
			ing.Spec.Rules = append(ing.Spec.Rules, networkingv1.IngressRule{
				Host:             e.Host,
				IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{}},
			})
			i = len(ing.Spec.Rules) - 1
		}
		http := ing.Spec.Rules[i].HTTP
		http.Paths = slices.Insert(http.Paths, 0, path)
	}
	if changed {
		writeJournal(ing, journal)
	}
	return changed, nil
}

// removePaths takes out of ing, which the caller owns, the journalled paths of the
// certificate secret (all certificates when secret is ""), drops the rules that
// held nothing else, and updates the journal. Everything else in ing, including
// edits made since the paths went in, is kept. With an unparsable journal it
// removes every challenge path routed to service and the journal. It returns
// whether ing changed.
func removePaths(ing *networkingv1.Ingress, secret, service string) bool {
	return removeEntries(ing, service, func(e Entry) bool { return secret == "" || e.Secret == secret })
}

// removeEntries is removePaths for the journal entries that match.
func removeEntries(ing *networkingv1.Ingress, service string, match func(Entry) bool) bool {
	journal, err := readJournal(ing)
	ours := func(p networkingv1.HTTPIngressPath, host string) bool {
		if p.Backend.Service == nil || p.Backend.Service.Name != service || !strings.HasPrefix(p.Path, core.ChallengePathPrefix) {
			return false
		}
		if err != nil {
			return true
		}
		return slices.ContainsFunc(journal, func(e Entry) bool {
			return match(e) && strings.EqualFold(e.Host, host) && e.Path() == p.Path
		})
	}
	changed := false
	rules := ing.Spec.Rules[:0]
	for _, r := range ing.Spec.Rules {
		if r.HTTP != nil {
			before := len(r.HTTP.Paths)
			r.HTTP.Paths = slices.DeleteFunc(r.HTTP.Paths, func(p networkingv1.HTTPIngressPath) bool { return ours(p, r.Host) })
			if len(r.HTTP.Paths) != before {
				changed = true
				if len(r.HTTP.Paths) == 0 {
					continue // the rule held only our paths: it was ours
				}
			}
		}
		rules = append(rules, r)
	}
	ing.Spec.Rules = rules

	kept := slices.DeleteFunc(slices.Clone(journal), match)
	if err != nil {
		kept = nil
	}
	if _, had := ing.Annotations[core.AnnotationChallenges]; had && len(kept) != len(journal) || err != nil {
		writeJournal(ing, kept)
		changed = true
	}
	return changed
}
