package ingress

import (
	networkingv1 "k8s.io/api/networking/v1"
)

// answer keeps the challenge server in line with the journals on Ingresses, so
// that every replica, leader or not, answers every live token: the solver
// Service may route the CA's request to any of them, and a new leader finishes
// an order whose challenges the old one presented. It is called for each change
// of an Ingress (old nil when added, ing nil when deleted). Tokens are
// independent of one another, so the leader's own Present and Remove around an
// order and this mirror never undo each other: a token leaves the server here
// only once the journal no longer lists it, which is after the order is done.
func (s *Solver) answer(old, ing *networkingv1.Ingress) {
	live := map[string]bool{}
	if ing != nil {
		entries, _ := readJournal(ing) // unparsable: nothing to answer
		for _, e := range entries {
			if e.KeyAuth == "" { // journalled by a version that did not record it
				continue
			}
			s.cfg.Challenges.Present(e.Host, e.Token, e.KeyAuth)
			live[e.Token] = true
		}
	}
	if old == nil {
		return
	}
	entries, _ := readJournal(old)
	for _, e := range entries {
		if !live[e.Token] && e.KeyAuth != "" {
			s.cfg.Challenges.Remove(e.Token)
		}
	}
}
