package ingress

import (
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/ingress-acme/ingress-acme/core"
)

var pathTypes = []networkingv1.PathType{networkingv1.PathTypeExact, networkingv1.PathTypePrefix, networkingv1.PathTypeImplementationSpecific}

// optedIn reports whether ing asks for certificates.
func optedIn(ing *networkingv1.Ingress) bool {
	return strings.EqualFold(strings.TrimSpace(ing.Annotations[core.AnnotationTLSACME]), "true")
}

// certSpec is one certificate an Ingress asks for.
type certSpec struct {
	secret string
	hosts  []string // as written, deduplicated, in order
	// implicit is true when the Ingress has no spec.tls: the certificate is
	// "<ingress>-tls" for every rule host, and spec.tls is added once it exists.
	implicit bool
}

// certSpecs lists the certificates ing asks for: one per spec.tls entry with a
// secretName (its hosts, or every rule host when it lists none), or with no
// spec.tls, "<name>-tls" for every rule host. The entry we added (see
// core.AnnotationManagedTLS) asks for every rule host, like no spec.tls at all.
func certSpecs(ing *networkingv1.Ingress) []certSpec {
	ruleHosts := ruleHostsOf(ing)
	if len(ing.Spec.TLS) == 0 {
		return []certSpec{{secret: ing.Name + "-tls", hosts: ruleHosts, implicit: true}}
	}
	managed, _ := readManagedTLS(ing)
	var specs []certSpec
	for _, t := range ing.Spec.TLS {
		if t.SecretName == "" {
			continue
		}
		hosts := slices.Clone(ruleHosts) // appended to below: never share ruleHosts' array
		implicit := managed.owns(t)
		if len(t.Hosts) > 0 && !implicit {
			hosts = appendNew(nil, t.Hosts...)
		}
		i := slices.IndexFunc(specs, func(s certSpec) bool { return s.secret == t.SecretName })
		if i >= 0 { // two entries, one Secret: one certificate for both
			specs[i].hosts = appendNew(specs[i].hosts, hosts...)
			continue
		}
		specs = append(specs, certSpec{secret: t.SecretName, hosts: hosts, implicit: implicit})
	}
	return specs
}

func ruleHostsOf(ing *networkingv1.Ingress) []string {
	var hosts []string
	for _, r := range ing.Spec.Rules {
		if r.Host != "" {
			hosts = appendNew(hosts, r.Host)
		}
	}
	return hosts
}

// appendNew appends to dst each of hosts it does not hold yet, in order.
func appendNew(dst []string, hosts ...string) []string {
	for _, h := range hosts {
		if !slices.Contains(dst, h) {
			dst = append(dst, h)
		}
	}
	return dst
}

// managedTLS is the spec.tls entry we added, as core.AnnotationManagedTLS records it.
type managedTLS struct {
	Secret string   `json:"secret"`
	Hosts  []string `json:"hosts"`
}

// readManagedTLS returns ing's record of the spec.tls entry we added; ok is
// false when there is none (or it does not parse: then the entry is the user's).
func readManagedTLS(ing *networkingv1.Ingress) (m managedTLS, ok bool) {
	raw, has := ing.Annotations[core.AnnotationManagedTLS]
	if !has || json.Unmarshal([]byte(raw), &m) != nil || m.Secret == "" {
		return managedTLS{}, false
	}
	return m, true
}

// owns reports whether t is the entry m records, unchanged by the user.
func (m managedTLS) owns(t networkingv1.IngressTLS) bool {
	return m.Secret != "" && t.SecretName == m.Secret && core.SameHosts(t.Hosts, m.Hosts)
}

func writeManagedTLS(ing *networkingv1.Ingress, secret string, hosts []string) {
	raw, _ := json.Marshal(managedTLS{Secret: secret, Hosts: hosts}) // strings always marshal
	if ing.Annotations == nil {
		ing.Annotations = map[string]string{}
	}
	ing.Annotations[core.AnnotationManagedTLS] = string(raw)
}

// mentioned reports whether ing carries the opt-in annotation with any value
// but "false": a malformed value must reach sync to be reported, not be skipped.
func mentioned(ing *networkingv1.Ingress) bool {
	v, ok := ing.Annotations[core.AnnotationTLSACME]
	return ok && !strings.EqualFold(strings.TrimSpace(v), "false")
}

// certKeys are the work queue keys (namespace/secret) of the certificates ing
// asks for (or, with a malformed opt-in value, would ask for), none when it
// has not opted in.
func certKeys(ing *networkingv1.Ingress) []string {
	if !mentioned(ing) {
		return nil
	}
	var keys []string
	for _, s := range certSpecs(ing) {
		keys = append(keys, ing.Namespace+"/"+s.secret)
	}
	return keys
}

// validateHost says what is wrong with host as an HTTP-01 identifier, "" if nothing.
func validateHost(host string) string {
	switch {
	case host == "":
		return "empty host"
	case strings.HasPrefix(host, "*."):
		return fmt.Sprintf("%s: wildcard hosts need a DNS-01 challenge; HTTP-01 cannot validate them", quoted(host, 80))
	case len(host) > 253:
		return fmt.Sprintf("%s: longer than 253 characters", quoted(host, 40))
	case net.ParseIP(host) != nil:
		return fmt.Sprintf("%s: IP addresses are not supported", quoted(host, 80))
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Sprintf("%s: each dot-separated label must be 1 to 63 characters", quoted(host, 80))
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Sprintf("%s: a label may not start or end with '-'", quoted(host, 80))
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Sprintf("%s: only lowercase letters, digits, '-' and '.' are allowed", quoted(host, 80))
			}
		}
	}
	return ""
}

// quoted is s as a Go string literal in ASCII (so any input, even invalid
// UTF-8, makes a safe Event message), cut to about n characters.
func quoted(s string, n int) string {
	q := strconv.QuoteToASCII(s)
	if len(q) <= n {
		return q
	}
	return q[:n] + `..."`
}

// options are an Ingress's choices for its certificates.
type options struct {
	keyType  core.KeyType
	pathType networkingv1.PathType
	profile  string
}

// parseOptions reads ing's option annotations. Every problem is reported, none
// is silently defaulted.
func parseOptions(ing *networkingv1.Ingress) (options, []string) {
	o := options{keyType: core.KeyTypes()[0], pathType: networkingv1.PathTypeExact}
	var problems []string
	if v, ok := ing.Annotations[core.AnnotationKeyType]; ok {
		if kt, err := core.ParseKeyType(v); err == nil {
			o.keyType = kt
		} else {
			problems = append(problems, fmt.Sprintf("annotation %s: %s is not one of %s", core.AnnotationKeyType, quoted(v, 40), core.KeyTypeNames()))
		}
	}
	if v, ok := ing.Annotations[core.AnnotationPathType]; ok {
		i := slices.IndexFunc(pathTypes, func(p networkingv1.PathType) bool { return strings.EqualFold(string(p), strings.TrimSpace(v)) })
		if i >= 0 {
			o.pathType = pathTypes[i]
		} else {
			problems = append(problems, fmt.Sprintf("annotation %s: %s is not one of Exact, Prefix, ImplementationSpecific", core.AnnotationPathType, quoted(v, 40)))
		}
	}
	if v, ok := ing.Annotations[core.AnnotationProfile]; ok {
		p := strings.TrimSpace(v)
		if validProfile(p) {
			o.profile = p
		} else {
			problems = append(problems, fmt.Sprintf("annotation %s: %s is not a profile name (1 to 64 letters, digits, '-', '_' or '.')", core.AnnotationProfile, quoted(v, 40)))
		}
	}
	if v, ok := ing.Annotations[core.AnnotationTLSACME]; ok && !strings.EqualFold(strings.TrimSpace(v), "true") && !strings.EqualFold(strings.TrimSpace(v), "false") {
		problems = append(problems, fmt.Sprintf("annotation %s: %s is neither \"true\" (opt in) nor \"false\"", core.AnnotationTLSACME, quoted(v, 40)))
	}
	return o, problems
}

func validProfile(p string) bool {
	if p == "" || len(p) > 64 {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// problem is something wrong with an Ingress that stops its certificate.
type problem struct {
	ingress *networkingv1.Ingress
	reason  string // Event reason
	message string
}

// desired is what one certificate should be, from every opted-in Ingress that
// names its Secret.
type desired struct {
	namespace, secret string
	hosts             []string // union over the Ingresses, lowercased, sorted
	options           options
	ingresses         []*networkingv1.Ingress // sorted by name
	// hostIngress is, for each host, the Ingress that gets its challenge path:
	// the first that has a rule for the host, else the first Ingress.
	hostIngress map[string]*networkingv1.Ingress
	// ownHosts is, for each Ingress, its own hosts for this certificate (for the
	// spec.tls entry it may get), and whether that entry is implicit.
	ownHosts map[string]certSpec
	// mismatch is set when the Ingresses ask for different host sets.
	mismatch bool
}

// desiredFor computes the certificate namespace/secret wants from ings (the
// opted-in Ingresses naming it). Problems that stop the certificate are returned;
// with any, no order may be placed.
func desiredFor(namespace, secret string, ings []*networkingv1.Ingress) (desired, []problem) {
	ings = slices.Clone(ings)
	slices.SortFunc(ings, func(a, b *networkingv1.Ingress) int { return strings.Compare(a.Name, b.Name) })
	d := desired{namespace: namespace, secret: secret, ingresses: ings,
		hostIngress: map[string]*networkingv1.Ingress{}, ownHosts: map[string]certSpec{}}
	var problems []problem
	var firstHosts []string
	for i, ing := range ings {
		opts, optProblems := parseOptions(ing)
		for _, p := range optProblems {
			problems = append(problems, problem{ing, "InvalidAnnotation", p})
		}
		if i == 0 {
			d.options = opts
		} else if opts != d.options && len(optProblems) == 0 {
			problems = append(problems, problem{ing, "ConflictingOptions", fmt.Sprintf(
				"Ingresses %s and %s name Secret %s with different %s, %s or %s options", ings[0].Name, ing.Name, secret, core.AnnotationKeyType, core.AnnotationPathType, core.AnnotationProfile)})
		}
		for _, s := range certSpecs(ing) {
			if s.secret != secret {
				continue
			}
			d.ownHosts[ing.Name] = s
			var hosts []string
			for _, h := range s.hosts {
				h = strings.ToLower(h)
				if msg := validateHost(h); msg != "" {
					problems = append(problems, problem{ing, "InvalidHost", "host " + msg})
					continue
				}
				hosts = append(hosts, h)
				d.hosts = appendNew(d.hosts, h)
			}
			slices.Sort(hosts)
			if i == 0 {
				firstHosts = hosts
			} else if !slices.Equal(hosts, firstHosts) {
				d.mismatch = true
			}
		}
	}
	slices.Sort(d.hosts)
	if len(d.hosts) == 0 && len(problems) == 0 && len(ings) > 0 {
		problems = append(problems, problem{ings[0], "NoHosts", fmt.Sprintf("no host to put in certificate %s: add a host to a rule or to spec.tls", secret)})
	}
	for _, h := range d.hosts {
		for _, ing := range ings {
			if slices.ContainsFunc(ing.Spec.Rules, func(r networkingv1.IngressRule) bool { return strings.EqualFold(r.Host, h) }) {
				d.hostIngress[h] = ing
				break
			}
		}
		if d.hostIngress[h] == nil && len(ings) > 0 {
			d.hostIngress[h] = ings[0]
		}
	}
	return d, problems
}

// ensureTLS makes ing's spec.tls name secret: an Ingress with no spec.tls gets
// one entry for hosts, recorded as ours; the entry we added follows hosts. It
// returns whether ing changed.
func ensureTLS(ing *networkingv1.Ingress, secret string, spec certSpec) bool {
	i := slices.IndexFunc(ing.Spec.TLS, func(t networkingv1.IngressTLS) bool { return t.SecretName == secret })
	if i >= 0 {
		managed, ok := readManagedTLS(ing)
		t := ing.Spec.TLS[i]
		if !ok || !managed.owns(t) || len(spec.hosts) == 0 || core.SameHosts(t.Hosts, spec.hosts) {
			return false
		}
		ing.Spec.TLS[i].Hosts = slices.Clone(spec.hosts)
		writeManagedTLS(ing, secret, spec.hosts)
		return true
	}
	if len(ing.Spec.TLS) > 0 || !spec.implicit || len(spec.hosts) == 0 {
		return false // the user's spec.tls names other Secrets: not ours to change
	}
	ing.Spec.TLS = append(ing.Spec.TLS, networkingv1.IngressTLS{Hosts: slices.Clone(spec.hosts), SecretName: secret})
	writeManagedTLS(ing, secret, spec.hosts)
	return true
}

// releaseTLS drops the record of the spec.tls entry we added once the user has
// edited or removed that entry: from then on it is theirs. It returns whether
// ing changed.
func releaseTLS(ing *networkingv1.Ingress) bool {
	if _, has := ing.Annotations[core.AnnotationManagedTLS]; !has {
		return false
	}
	managed, ok := readManagedTLS(ing)
	if ok && slices.ContainsFunc(ing.Spec.TLS, managed.owns) {
		return false
	}
	delete(ing.Annotations, core.AnnotationManagedTLS)
	return true
}

// hostsWithoutTLS lists the rule hosts of ing that no spec.tls entry covers;
// none when ing has no spec.tls (it gets one) or is not opted in.
func hostsWithoutTLS(ing *networkingv1.Ingress) []string {
	if !optedIn(ing) || len(ing.Spec.TLS) == 0 {
		return nil
	}
	if managed, ok := readManagedTLS(ing); ok && slices.ContainsFunc(ing.Spec.TLS, managed.owns) {
		return nil // our entry: it follows the rule hosts
	}
	var out []string
	for _, h := range ruleHostsOf(ing) {
		covered := slices.ContainsFunc(ing.Spec.TLS, func(t networkingv1.IngressTLS) bool {
			return len(t.Hosts) == 0 && t.SecretName != "" || slices.ContainsFunc(t.Hosts, func(x string) bool { return strings.EqualFold(x, h) })
		})
		if !covered {
			out = append(out, strings.ToLower(h))
		}
	}
	return out
}

// request is d as the engine takes it, with problems (nil for none) that stop it.
func (d desired) request(problems []problem) core.Request {
	req := core.Request{
		Namespace: d.namespace, Secret: d.secret, Hosts: d.hosts,
		Options:    core.Options{KeyType: d.options.keyType, Profile: d.options.profile, Present: string(d.options.pathType)},
		Presenters: make(map[string]core.Ref, len(d.hostIngress)),
	}
	for _, ing := range d.ingresses {
		own := d.ownHosts[ing.Name]
		req.Askers = append(req.Askers, core.Asker{Ref: refOf(ing), Hosts: own.hosts, Implicit: own.implicit})
	}
	for h, ing := range d.hostIngress {
		req.Presenters[h] = refOf(ing)
	}
	for _, p := range problems {
		req.Problems = append(req.Problems, core.Problem{Object: refOf(p.ingress), Reason: p.reason, Message: p.message})
	}
	if d.mismatch {
		req.Warnings = []core.Problem{{Object: refOf(d.ingresses[0]), Reason: "HostsDiffer", Message: fmt.Sprintf(
			"Ingresses naming Secret %s ask for different hosts: one certificate for all of them is ordered (%s)", d.secret, strings.Join(d.hosts, ", "))}}
	}
	return req
}

// Kind is the kind of object this source watches, as its core.Refs name it.
const Kind = "Ingress"

func refOf(ing *networkingv1.Ingress) core.Ref {
	return core.Ref{Kind: Kind, Namespace: ing.Namespace, Name: ing.Name}
}

// specOf is the asker's own certificate spec, as the request recorded it.
func specOf(a core.Asker, secret string) certSpec {
	return certSpec{secret: secret, hosts: a.Hosts, implicit: a.Implicit}
}
