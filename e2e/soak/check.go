package soak

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// The soak's invariants, checked all the time by probers and pollers.
const (
	invAppPath       = "app-path"         // an app path answered with an error after it had answered
	invRouteMissing  = "route-missing"    // an app path never answered after it was written
	invHTTPS         = "https-in-time"    // a host that should have a certificate is not served a valid one within the bound
	invExpired       = "served-expired"   // an expired certificate was served where a renewal was possible
	invTokenOutlives = "token-outlives"   // a challenge path or journal entry outlived its order
	invForeign       = "foreign-touched"  // a Secret the controller does not own was modified or deleted
	invBudget        = "order-budget"     // more unjustified orders for a certificate in an hour than the budget
	invRSS           = "controller-rss"   // the controller's resident memory went over the bound
	invUserEdit      = "user-edit-lost"   // something the user wrote was changed or dropped
	invResurrected   = "resurrected"      // a deleted Ingress came back
	invControllerRun = "controller-start" // a replica did not come back after a fault
)

// soakBounds are the limits the invariants are checked against.
type soakBounds struct {
	Eligible     time.Duration // fault-free time from eligible to served over HTTPS
	Route        time.Duration // fault-free time from written to answering over HTTP
	Token        time.Duration // fault-free time a challenge path may outlive its order
	TokenMaxAge  time.Duration // fault-free time any challenge path may live
	ExpiryWindow time.Duration // fault-free time in a certificate's second half of life that makes its expiry in service a violation
	OrderBudget  int           // unjustified orders per certificate in any hour (--max-orders-per-hour)
	RSS          uint64        // bytes
}

// violation is one broken invariant, possibly seen many times.
type violation struct {
	Invariant string
	Objects   string
	First     time.Time
	Detail    string
	Count     int
}

// faultSpan is a time a fault was in play: from its start until it was undone
// plus the time the system may take to recover from it.
type faultSpan struct {
	Kind       string
	Start, End time.Time // End zero: still going
	Grace      time.Duration
}

// procRun is one run of a controller process.
type procRun struct {
	Replica    string
	Pid        int
	Start, End time.Time // End zero: running
}

// epoch is the time since a host became eligible for the certificate it
// should have now (that certificate, for that Secret, key type and profile).
type epoch struct {
	Host, Ingress, Secret string
	KeyType, Profile      string
	Sig                   string
	HasRule               bool
	EligibleAt            time.Time
	SatisfiedAt           time.Time
	Reported              bool
	LastProblem           string
}

// target is an app path the prober checks over HTTP.
type target struct {
	Host, Path, Ingress string
	ActivatedAt         time.Time
	Armed               bool // answered once: every later failure is a violation
	Reported            bool
}

// leafSeen is a certificate seen in a Secret.
type leafSeen struct {
	Secret              string
	Serial              *big.Int
	NotBefore, NotAfter time.Time
	FirstSeen           time.Time
}

func (l leafSeen) halfLife() time.Time { return l.NotBefore.Add(l.NotAfter.Sub(l.NotBefore) / 2) }

// violate records a violation and prints its first occurrence.
func (s *soak) violate(inv, objects, format string, args ...any) {
	detail := fmt.Sprintf(format, args...)
	key := inv + " " + objects
	s.vmu.Lock()
	v := s.violations[key]
	if v == nil {
		v = &violation{Invariant: inv, Objects: objects, First: time.Now(), Detail: detail}
		s.violations[key] = v
		s.violationOrder = append(s.violationOrder, key)
	}
	v.Count++
	first := v.Count == 1
	s.vmu.Unlock()
	if first {
		s.t.Logf("VIOLATION seed=%d t=+%.1fs %s [%s]: %s", s.plan.Seed, s.rel(time.Now()), inv, objects, detail)
	}
}

func (s *soak) rel(t time.Time) float64 { return t.Sub(s.start).Seconds() }

// clean is how much of [a, b] no fault was in play.
func (s *soak) clean(a, b time.Time) time.Duration {
	if !b.After(a) {
		return 0
	}
	s.fmu.Lock()
	spans := slices.Clone(s.faults)
	s.fmu.Unlock()
	type iv struct{ a, b time.Time }
	var ivs []iv
	for _, f := range spans {
		end := f.End
		if end.IsZero() {
			end = b.Add(time.Hour)
		} else {
			end = end.Add(f.Grace)
		}
		lo, hi := f.Start, end
		if lo.Before(a) {
			lo = a
		}
		if hi.After(b) {
			hi = b
		}
		if hi.After(lo) {
			ivs = append(ivs, iv{lo, hi})
		}
	}
	sort.Slice(ivs, func(i, j int) bool { return ivs[i].a.Before(ivs[j].a) })
	busy := time.Duration(0)
	var cur iv
	for i, x := range ivs {
		if i == 0 || x.a.After(cur.b) {
			if i > 0 {
				busy += cur.b.Sub(cur.a)
			}
			cur = x
			continue
		}
		if x.b.After(cur.b) {
			cur.b = x.b
		}
	}
	if len(ivs) > 0 {
		busy += cur.b.Sub(cur.a)
	}
	return b.Sub(a) - busy
}

// faultStart records a fault beginning now and returns its index for faultEnd.
func (s *soak) faultStart(kind string, grace time.Duration) int {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	s.faults = append(s.faults, faultSpan{Kind: kind, Start: time.Now(), Grace: grace})
	return len(s.faults) - 1
}

func (s *soak) faultEnd(i int) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	s.faults[i].End = time.Now()
}

// ownersDeadAt is when the controller process that led at t (by the Lease,
// else every process running at t) exited; zero when it still runs.
func (s *soak) ownersDeadAt(t time.Time) time.Time {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	holder := ""
	for _, l := range s.leaders {
		if l.At.After(t) {
			break
		}
		holder = l.Holder
	}
	var dead time.Time
	found := false
	for _, r := range s.runs {
		if r.Start.After(t) || (!r.End.IsZero() && r.End.Before(t)) || (holder != "" && r.Replica != holder) {
			continue
		}
		found = true
		if r.End.IsZero() {
			return time.Time{}
		}
		if r.End.After(dead) {
			dead = r.End
		}
	}
	if !found {
		return t
	}
	return dead
}

// refresh recomputes what the Ingress should have (certificates per host, app
// paths) after the user's write; s.mu must be held.
func (s *soak) refresh(li *liveIngress) {
	now := time.Now()
	want := s.shouldFor(li)
	for host, e := range s.epochs {
		if e.Ingress != li.key() {
			continue
		}
		if w, ok := want[host]; !ok || w.Sig != e.Sig {
			delete(s.epochs, host)
		}
	}
	for host, w := range want {
		if e, ok := s.epochs[host]; ok && e.Sig == w.Sig {
			e.HasRule = w.HasRule
			continue
		}
		w.EligibleAt = now
		s.epochs[host] = w
	}
	paths := s.pathsFor(li)
	for k, tg := range s.targets {
		if tg.Ingress == li.key() && !paths[k] {
			delete(s.targets, k)
		}
	}
	for k := range paths {
		if _, ok := s.targets[k]; !ok {
			host, path, _ := strings.Cut(k, " ")
			s.targets[k] = &target{Host: host, Path: path, Ingress: li.key(), ActivatedAt: now}
		}
	}
}

// dropTargets stops probing the Ingress's app paths that the plan next will
// not have (or all of them, when all), before the write that takes them away;
// s.mu must be held.
func (s *soak) dropTargets(li *liveIngress, next *planIngress, all bool) {
	keep := map[string]bool{}
	if !all {
		tmp := *li
		tmp.plan = next
		keep = s.pathsFor(&tmp)
	}
	for k, tg := range s.targets {
		if tg.Ingress == li.key() && !keep[k] {
			delete(s.targets, k)
		}
	}
}

// pathsFor lists "host path" of every app path Traefik should route for li.
func (s *soak) pathsFor(li *liveIngress) map[string]bool {
	out := map[string]bool{}
	if li.deleted || li.plan.Class == soakClassUnserved {
		return out
	}
	for _, h := range li.plan.Hosts {
		for _, p := range append([]string{"/"}, li.plan.Paths...) {
			out[s.host(li.plan, h)+" "+p] = true
		}
	}
	return out
}

// shouldFor lists the hosts li should have a certificate for, with what.
func (s *soak) shouldFor(li *liveIngress) map[string]*epoch {
	p := li.plan
	if li.deleted || p.OptIn != "true" || p.Class == soakClassUnserved {
		return nil
	}
	secret := li.ns + "/" + p.secret()
	if s.foreign[secret] != nil {
		return nil
	}
	hosts := p.Hosts
	if p.TLS != nil && p.TLS.Hosts != nil {
		hosts = p.TLS.Hosts
	}
	keyType, profile := p.KeyType, p.Profile
	if keyType == "" {
		keyType = "ecdsa-p256"
	}
	if profile == "" {
		profile = "default"
	}
	sig := fmt.Sprintf("%s|%s|%s|%s|%d", secret, keyType, profile, p.Class, s.secretGen[secret])
	out := map[string]*epoch{}
	for _, h := range hosts {
		host := s.host(p, h)
		out[host] = &epoch{Host: host, Ingress: li.key(), Secret: secret, KeyType: keyType, Profile: profile, Sig: sig, HasRule: slices.Contains(p.Hosts, h)}
	}
	return out
}

// --- HTTP: every app path answers, all the time ---

func (s *soak) probeHTTP(ctx context.Context) {
	client := s.bed.HTTPClient("")
	client.Timeout = 5 * time.Second
	for ctx.Err() == nil {
		s.mu.Lock()
		var list []*target
		for _, k := range soakSortedKeys(s.targets) {
			list = append(list, s.targets[k])
		}
		s.mu.Unlock()
		if len(list) == 0 {
			sleepCtx(ctx, 100*time.Millisecond)
		}
		for _, tg := range list {
			if ctx.Err() != nil {
				return
			}
			at := time.Now()
			msg := getApp(ctx, client, "http://"+tg.Host+tg.Path)
			if ctx.Err() != nil {
				return
			}
			s.mu.Lock()
			current := s.targets[tg.Host+" "+tg.Path] == tg
			switch {
			case !current:
			case msg == "":
				tg.Armed = true
				s.stats.httpOK++
			case tg.Armed:
				s.stats.httpFail++
				s.mu.Unlock()
				s.violate(invAppPath, tg.Ingress+" http://"+tg.Host+tg.Path, "request at +%.3fs failed: %s", s.rel(at), msg)
				s.mu.Lock()
			default:
				s.stats.httpNotYet++
				if !tg.Reported && s.clean(tg.ActivatedAt, at) > s.bounds.Route {
					tg.Reported = true
					s.mu.Unlock()
					s.violate(invRouteMissing, tg.Ingress+" http://"+tg.Host+tg.Path, "written at +%.1fs, still failing after %s without faults: %s", s.rel(tg.ActivatedAt), s.bounds.Route, msg)
					s.mu.Lock()
				}
			}
			s.mu.Unlock()
			sleepCtx(ctx, 15*time.Millisecond)
		}
	}
}

// getApp GETs url and returns "" when the app answered, else what went wrong.
func getApp(ctx context.Context, c *http.Client, url string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err.Error()
	}
	resp, err := c.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || string(body) != "backend web" {
		return fmt.Sprintf("status %d: %.80q", resp.StatusCode, body)
	}
	return ""
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// --- HTTPS: every host that should have a certificate is served a valid one ---

func (s *soak) probeHTTPS(ctx context.Context) {
	for ctx.Err() == nil {
		s.mu.Lock()
		var list []*epoch
		for _, h := range soakSortedKeys(s.epochs) {
			list = append(list, s.epochs[h])
		}
		s.mu.Unlock()
		if len(list) == 0 {
			sleepCtx(ctx, 100*time.Millisecond)
		}
		for _, e := range list {
			if ctx.Err() != nil {
				return
			}
			s.probeHost(ctx, e)
			sleepCtx(ctx, 30*time.Millisecond)
		}
	}
}

func (s *soak) probeHost(ctx context.Context, e *epoch) {
	at := time.Now()
	var leaf *x509.Certificate
	var chain []*x509.Certificate
	problem := ""
	client := s.bed.HTTPClientWithRoots(e.Host, nil)
	client.Timeout = 5 * time.Second
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+e.Host+"/", nil)
	resp, err := client.Do(req)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		problem = "request: " + err.Error()
	} else {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
			problem = "no TLS"
		} else {
			chain = resp.TLS.PeerCertificates
			leaf = chain[0]
		}
		if problem == "" && e.HasRule && resp.StatusCode != http.StatusOK {
			problem = fmt.Sprintf("status %d", resp.StatusCode)
		}
	}
	roots := s.roots.get()
	ours := false
	if leaf != nil {
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: leaf.NotBefore.Add(time.Second)})
		ours = err == nil
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: e.Host, Roots: roots, Intermediates: inter, CurrentTime: at}); err != nil && problem == "" {
			problem = fmt.Sprintf("chain not valid at the request (serial %x, issuer %q, %s..%s): %v", leaf.SerialNumber, leaf.Issuer.CommonName,
				leaf.NotBefore.Format("15:04:05"), leaf.NotAfter.Format("15:04:05"), err)
		}
		if problem == "" && testbed.KeyTypeOf(leaf) != e.KeyType {
			problem = fmt.Sprintf("key type %s served, want %s", testbed.KeyTypeOf(leaf), e.KeyType)
		}
		if life := leaf.NotAfter.Sub(leaf.NotBefore); problem == "" && (e.Profile == "shortlived") != (life < time.Hour) {
			problem = fmt.Sprintf("validity %s served, want the %s profile", life.Round(time.Second), e.Profile)
		}
	}
	s.mu.Lock()
	if s.epochs[e.Host] != e {
		s.mu.Unlock()
		return
	}
	if problem == "" {
		e.LastProblem = ""
		s.stats.httpsOK++
		if e.SatisfiedAt.IsZero() {
			e.SatisfiedAt = at
			s.stats.eligibleToServed = append(s.stats.eligibleToServed, at.Sub(e.EligibleAt))
		}
		s.mu.Unlock()
		return
	}
	s.stats.httpsBad++
	e.LastProblem = problem
	// An expired certificate of ours is judged by invExpired, which spares
	// expiries that faults caused (a CA cut off through the renewal, say);
	// here its successor gets the bound of fault-free time from the expiry.
	from := e.EligibleAt
	if leaf != nil && ours && leaf.NotAfter.After(from) && at.After(leaf.NotAfter) {
		from = leaf.NotAfter
	}
	report := !e.Reported && s.clean(from, at) > s.bounds.Eligible
	if report && s.capped(e.Ingress, at) {
		// The user changed this certificate so often that the order budget
		// (--max-orders-per-hour) is spent: waiting is what the README promises.
		report = false
		e.LastProblem += " (order budget spent by the user's changes)"
		s.stats.capped[e.Host] = true
	}
	if report {
		e.Reported = true
	}
	s.mu.Unlock()
	if report {
		since := "never served validly"
		if !e.SatisfiedAt.IsZero() {
			since = fmt.Sprintf("served validly from +%.1fs, then", s.rel(e.SatisfiedAt))
		}
		s.violate(invHTTPS, e.Ingress+" "+e.Host+" secret "+e.Secret,
			"eligible since +%.1fs (%s, %s); %s at +%.1fs: %s", s.rel(e.EligibleAt), e.KeyType, e.Profile, since, s.rel(at), problem)
	}
	if leaf != nil && ours && at.After(leaf.NotAfter) {
		half := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
		if !e.EligibleAt.After(half) && s.clean(half, leaf.NotAfter) >= s.bounds.ExpiryWindow {
			s.violate(invExpired, e.Ingress+" "+e.Host+" secret "+e.Secret,
				"certificate %x (valid %s..%s) served at +%.1fs, %.1fs after it expired; its second half of life had %s without faults",
				leaf.SerialNumber, leaf.NotBefore.Format("15:04:05"), leaf.NotAfter.Format("15:04:05"), s.rel(at), at.Sub(leaf.NotAfter).Seconds(),
				s.clean(half, leaf.NotAfter).Round(100*time.Millisecond))
		}
	}
}

// capped reports whether the Ingress's certificate had as many orders that
// were not renewals (no "replaces") in the hour before at as the controller's
// --max-orders-per-hour allows;
// s.mu must be held.
func (s *soak) capped(ing string, at time.Time) bool {
	n := 0
	for _, o := range s.rec.snapshot() {
		if o.Replaces == "" && at.Sub(o.Created) < time.Hour && !o.Created.After(at) && s.ownerOf(o) == ing {
			n++
		}
	}
	return n >= soakControllerCap
}

// --- Ingresses: user edits kept, deleted ones stay deleted, challenge paths short-lived ---

func (s *soak) pollIngresses(ctx context.Context) {
	firstSeen := map[string]time.Time{} // ns/ingress/token
	for ctx.Err() == nil {
		sleepCtx(ctx, 250*time.Millisecond)
		listStart := time.Now()
		var items []networkingv1.Ingress
		failed := false
		for _, ns := range s.nsNames {
			l, err := s.bed.Client().NetworkingV1().Ingresses(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				failed = true
				break
			}
			items = append(items, l.Items...)
		}
		if failed {
			continue
		}
		now := time.Now()
		seen := map[string]bool{}
		waiting := 0 // on Ingresses nobody serves: their self-checks wait out their timeout
		for i := range items {
			ing := &items[i]
			key := ing.Namespace + "/" + ing.Name
			s.checkUserEdits(ing, listStart)
			for _, tok := range challengeTokens(ing) {
				k := key + "/" + tok
				seen[k] = true
				if c := ing.Spec.IngressClassName; c != nil && *c == soakClassUnserved {
					waiting++
				}
				if _, ok := firstSeen[k]; !ok {
					firstSeen[k] = now
				}
				s.checkToken(key, tok, firstSeen[k], now)
			}
		}
		for k := range firstSeen {
			if !seen[k] {
				delete(firstSeen, k)
			}
		}
		s.mu.Lock()
		s.stats.tokensLive = len(firstSeen) - waiting
		s.stats.ingressPolls++
		s.mu.Unlock()
	}
}

// challengeTokens returns the tokens of the challenge paths in ing's rules and
// of the entries of its journal.
func challengeTokens(ing *networkingv1.Ingress) []string {
	var out []string
	for _, r := range ing.Spec.Rules {
		if r.HTTP == nil {
			continue
		}
		for _, p := range r.HTTP.Paths {
			if tok, ok := strings.CutPrefix(p.Path, challengePrefix); ok {
				out = append(out, tok)
			}
		}
	}
	if raw, ok := ing.Annotations[journalAnnotation]; ok {
		var v any
		if json.Unmarshal([]byte(raw), &v) == nil {
			collectTokens(v, &out)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func collectTokens(v any, out *[]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, y := range x {
			if s, ok := y.(string); ok && k == "token" {
				*out = append(*out, s)
			} else {
				collectTokens(y, out)
			}
		}
	case []any:
		for _, y := range x {
			collectTokens(y, out)
		}
	}
}

func (s *soak) checkToken(ing, tok string, firstSeen, now time.Time) {
	if age := s.clean(firstSeen, now); age > s.bounds.TokenMaxAge {
		s.violate(invTokenOutlives, ing+" token "+tok, "challenge path or journal entry present since +%.1fs (%s without faults), longer than any order may take (%s)",
			s.rel(firstSeen), age.Round(time.Second), s.bounds.TokenMaxAge)
		return
	}
	o, ok := s.rec.orderOf(tok)
	if !ok {
		return
	}
	last := o.LastActivity
	if last.IsZero() {
		last = o.Created
	}
	end := o.end()
	why := "order " + o.Status
	if dead := s.ownersDeadAt(last); !dead.IsZero() && (end.IsZero() || dead.Before(end)) {
		end, why = dead, "every process that worked on the order exited"
	}
	if !o.Lost.IsZero() && o.Lost.Equal(end) {
		why = "the CA restarted and forgot the order"
	}
	if end.IsZero() {
		return
	}
	if gone := s.clean(end, now); gone > s.bounds.Token {
		s.violate(invTokenOutlives, ing+" token "+tok, "still present at +%.1fs; its order %s ended at +%.1fs (%s), %s of fault-free time before",
			s.rel(now), o.URL, s.rel(end), why, gone.Round(100*time.Millisecond))
	}
}

// userView is what the user owns of an Ingress, as comparable text.
func userView(ing *networkingv1.Ingress, optedInEver bool, userTLS *planTLS, ownSecret string, host func(string) string) (view []string) {
	for _, k := range []string{"kubernetes.io/tls-acme", "ingress-acme.io/key-type", "ingress-acme.io/profile"} {
		if v, ok := ing.Annotations[k]; ok {
			view = append(view, fmt.Sprintf("annotation %s=%q", k, v))
		}
	}
	if c := ing.Spec.IngressClassName; c != nil {
		view = append(view, "class "+*c)
	}
	for _, r := range ing.Spec.Rules {
		if r.HTTP == nil {
			view = append(view, "rule "+r.Host+" (no paths)")
			continue
		}
		for _, p := range r.HTTP.Paths {
			if strings.HasPrefix(p.Path, challengePrefix) {
				continue
			}
			pt, svc := "", ""
			if p.PathType != nil {
				pt = string(*p.PathType)
			}
			if p.Backend.Service != nil {
				svc = fmt.Sprintf("%s:%d", p.Backend.Service.Name, p.Backend.Service.Port.Number)
			}
			view = append(view, fmt.Sprintf("path %s%s %s %s", r.Host, p.Path, pt, svc))
		}
	}
	for _, t := range ing.Spec.TLS {
		hosts := slices.Clone(t.Hosts)
		slices.Sort(hosts)
		switch {
		case userTLS != nil && t.SecretName == userTLS.Secret:
			view = append(view, fmt.Sprintf("tls %s [%s]", t.SecretName, strings.Join(hosts, " ")))
		case userTLS == nil && optedInEver && t.SecretName == ownSecret:
			// ours to write (README: spec.tls added once the Secret exists)
		default:
			view = append(view, fmt.Sprintf("tls %s [%s] (not written by the user)", t.SecretName, strings.Join(hosts, " ")))
		}
	}
	slices.Sort(view)
	return view
}

// expectedView is userView of the Ingress as the user last wrote it.
func (s *soak) expectedView(li *liveIngress) []string {
	p := li.plan
	ing := testbed.Ingress(li.ns, p.name(), "web", p.OptIn == "true", s.hostsOf(p)...)
	s.applyPlan(ing, p)
	return userView(ing, li.optedInEver, p.TLS, p.name()+"-tls", nil)
}

func (s *soak) checkUserEdits(ing *networkingv1.Ingress, listStart time.Time) {
	s.mu.Lock()
	li := s.byName[ing.Namespace+"/"+ing.Name]
	if li == nil {
		s.mu.Unlock()
		return
	}
	if li.deleted {
		deletedAt := li.deletedAt
		s.mu.Unlock()
		if !deletedAt.IsZero() && listStart.After(deletedAt) {
			s.violate(invResurrected, li.key(), "deleted at +%.1fs, listed again at +%.1fs (uid %s)", s.rel(deletedAt), s.rel(listStart), ing.UID)
		}
		return
	}
	rv, _ := strconv.ParseInt(ing.ResourceVersion, 10, 64)
	if li.writing > 0 || li.lastWriteEnd.After(listStart) || rv < li.lastRV {
		s.mu.Unlock()
		return
	}
	want := s.expectedView(li)
	got := userView(ing, li.optedInEver, li.plan.TLS, li.plan.name()+"-tls", nil)
	lastWrite := li.lastWriteEnd
	s.mu.Unlock()
	if !slices.Equal(got, want) {
		var missing, extra []string
		for _, w := range want {
			if !slices.Contains(got, w) {
				missing = append(missing, w)
			}
		}
		for _, g := range got {
			if !slices.Contains(want, g) {
				extra = append(extra, g)
			}
		}
		s.violate(invUserEdit, li.key(), "resourceVersion %s (user's last write at +%.1fs): missing %q, not written by the user %q",
			ing.ResourceVersion, s.rel(lastWrite), missing, extra)
	}
}

// --- Secrets: certificates seen (for the order budget), foreign ones untouched ---

func (s *soak) pollSecrets(ctx context.Context) {
	for ctx.Err() == nil {
		sleepCtx(ctx, 400*time.Millisecond)
		now := time.Now()
		byKey := map[string]*corev1.Secret{}
		failed := false
		for _, ns := range s.nsNames {
			l, err := s.bed.Client().CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				failed = true
				break
			}
			for i := range l.Items {
				byKey[ns+"/"+l.Items[i].Name] = &l.Items[i]
			}
		}
		if failed {
			continue
		}
		s.mu.Lock()
		for key, sec := range byKey {
			if s.foreign[key] != nil {
				continue
			}
			leaf, err := testbed.VerifyChainPEM(sec.Data[corev1.TLSCertKey], s.roots.get())
			if err != nil {
				if leaf, err = parseLeafPEM(sec.Data[corev1.TLSCertKey]); err != nil {
					continue
				}
			}
			serial := leaf.SerialNumber.Text(16)
			if _, ok := s.leaves[serial]; !ok {
				s.leaves[serial] = leafSeen{Secret: key, Serial: leaf.SerialNumber, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, FirstSeen: now}
				s.secretLeaves[key] = append(s.secretLeaves[key], serial)
			}
		}
		type pair struct {
			key       string
			want, got *corev1.Secret
		}
		var foreign []pair
		for key, want := range s.foreign {
			if !s.foreignAt[key].Before(now) {
				continue // created while the list was taken: the list may predate it
			}
			foreign = append(foreign, pair{key, want, byKey[key]})
		}
		s.mu.Unlock()
		for _, f := range foreign {
			switch {
			case f.got == nil:
				s.violate(invForeign, "secret "+f.key, "deleted (created by the user at resourceVersion %s)", f.want.ResourceVersion)
			case f.got.ResourceVersion != f.want.ResourceVersion || f.got.Type != f.want.Type ||
				!mapsEqualBytes(f.got.Data, f.want.Data) || !mapsEqual(f.got.Labels, f.want.Labels) || !mapsEqual(f.got.Annotations, f.want.Annotations):
				s.violate(invForeign, "secret "+f.key, "modified: resourceVersion %s -> %s, labels %v -> %v, annotations %d -> %d, data equal %v",
					f.want.ResourceVersion, f.got.ResourceVersion, f.want.Labels, f.got.Labels, len(f.want.Annotations), len(f.got.Annotations), mapsEqualBytes(f.got.Data, f.want.Data))
			}
		}
	}
}

// parseLeafPEM returns the first certificate of a PEM chain.
func parseLeafPEM(b []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return nil, errors.New("no certificate")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func mapsEqualBytes(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || string(w) != string(v) {
			return false
		}
	}
	return true
}

// --- Controller memory ---

func (s *soak) sampleRSS(ctx context.Context) {
	for ctx.Err() == nil {
		sleepCtx(ctx, time.Second)
		for _, c := range s.replicas {
			pid := c.Pid()
			if pid == 0 {
				continue
			}
			st, err := testbed.ReadProcStats(pid)
			if err != nil {
				continue
			}
			s.mu.Lock()
			if st.RSS > s.stats.peakRSS[c.name] {
				s.stats.peakRSS[c.name] = st.RSS
			}
			s.mu.Unlock()
			if st.RSS > s.bounds.RSS {
				s.violate(invRSS, "replica "+c.name, "RSS %.1f MiB (pid %d), bound %.0f MiB", float64(st.RSS)/(1<<20), pid, float64(s.bounds.RSS)/(1<<20))
			}
		}
	}
}

// --- Orders: within the budget per certificate and hour ---

// orderVerdict is how the budget check judged one order.
type orderVerdict struct {
	Order caOrder
	Why   string // justification, or "" when unjustified
}

// checkBudget judges every order the CA saw so far: an order is justified by a
// user change to its certificate not yet paid for by an order, by the CA
// having forgotten an earlier order (restart), or by the certificate being due
// (in its second half of life); unjustified orders (retries after failures,
// re-orders after restarts, early renewals) may number at most the budget per
// certificate in any hour.
func (s *soak) checkBudget(final bool) map[string][]orderVerdict {
	orders := s.rec.snapshot()
	s.mu.Lock()
	defer s.mu.Unlock()
	credits := map[string][]time.Time{}
	for k, v := range s.credits {
		credits[k] = slices.Clone(v)
	}
	verdicts := map[string][]orderVerdict{}
	renewed := map[string]bool{}
	for _, o := range orders {
		owner := ""
		mixed := false
		for _, h := range o.Hosts {
			ow := s.hostOwner[h]
			if owner != "" && ow != owner {
				mixed = true
			}
			if ow != "" {
				owner = ow
			}
		}
		if owner == "" {
			owner = "unknown hosts " + strings.Join(o.Hosts, ",")
		}
		if mixed && !s.budgetReported[o.URL] {
			s.budgetReported[o.URL] = true
			s.mu.Unlock()
			s.violate(invBudget, owner, "order %s mixes hosts of several Ingresses: %v", o.URL, o.Hosts)
			s.mu.Lock()
		}
		v := orderVerdict{Order: o}
		cs := credits[owner]
		if i := slices.IndexFunc(cs, func(t time.Time) bool { return !t.After(o.Created) }); i >= 0 {
			v.Why = fmt.Sprintf("user change at +%.1fs", s.rel(cs[i]))
			credits[owner] = slices.Delete(cs, i, i+1)
		} else if why := s.renewalDue(o, renewed); why != "" {
			v.Why = why
		}
		verdicts[owner] = append(verdicts[owner], v)
	}
	for owner, vs := range verdicts {
		var bad []caOrder
		for _, v := range vs {
			if v.Why == "" {
				bad = append(bad, v.Order)
			}
		}
		for i := range bad {
			j := i
			for j < len(bad) && bad[j].Created.Sub(bad[i].Created) < time.Hour {
				j++
			}
			if j-i > s.bounds.OrderBudget && !s.budgetReported[owner] {
				s.budgetReported[owner] = true
				var lines []string
				for _, v := range vs {
					why := v.Why
					if why == "" {
						why = "UNJUSTIFIED"
					}
					lines = append(lines, fmt.Sprintf("+%.1fs %v replaces=%v -> %s (%s)", s.rel(v.Order.Created), v.Order.Hosts, v.Order.Replaces != "", v.Order.Status, why))
				}
				s.mu.Unlock()
				s.violate(invBudget, owner, "%d unjustified orders within an hour from +%.1fs, budget %d; its orders:\n    %s",
					j-i, s.rel(bad[i].Created), s.bounds.OrderBudget, strings.Join(lines, "\n    "))
				s.mu.Lock()
				break
			}
		}
	}
	return verdicts
}

// renewalDue says why o renews a certificate that was due (in the renewal
// window the CA suggested, or without one in its second half of life) and not
// renewed before, or "" when it does not; s.mu must be held. renewed holds the
// serials already renewed by a justified order.
func (s *soak) renewalDue(o caOrder, renewed map[string]bool) string {
	var l leafSeen
	found := false
	if o.Replaces != "" {
		if serial, ok := ariSerial(o.Replaces); ok {
			l, found = s.leaves[serial.Text(16)]
		}
	} else if li := s.byName[s.ownerOf(o)]; li != nil {
		// The newest certificate seen in its Secret before the order.
		for _, key := range []string{li.ns + "/" + li.plan.secret(), li.ns + "/" + li.plan.name() + "-tls"} {
			serials := s.secretLeaves[key]
			for i := len(serials) - 1; i >= 0 && !found; i-- {
				if c := s.leaves[serials[i]]; !c.FirstSeen.After(o.Created) {
					l, found = c, true
				}
			}
		}
	}
	if !found {
		return ""
	}
	serial := l.Serial.Text(16)
	if renewed[serial] {
		return ""
	}
	if start, ok := s.rec.renewalWindowStart(serial); ok && !o.Created.Before(start.Add(-time.Second)) {
		renewed[serial] = true
		return fmt.Sprintf("renews %s in the CA's renewal window", serial)
	}
	if !o.Created.Before(l.halfLife().Add(-time.Second)) {
		renewed[serial] = true
		return fmt.Sprintf("renews %s in its second half of life", serial)
	}
	return ""
}

// ownerOf is the Ingress (ns/name) whose hosts o is for; s.mu must be held.
func (s *soak) ownerOf(o caOrder) string {
	for _, h := range o.Hosts {
		if ow := s.hostOwner[h]; ow != "" {
			return ow
		}
	}
	return ""
}

func soakSortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
