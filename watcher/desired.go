package watcher

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

// The annotations a user puts on an Ingress.
const (
	// AnnotationTLSACME opts an Ingress in, with the value "true" (the convention
	// kube-lego started).
	AnnotationTLSACME = "kubernetes.io/tls-acme"
	// AnnotationPrefix is the prefix of every option of ours.
	AnnotationPrefix = core.AnnotationPrefix
	// AnnotationKeyType chooses the private key type: ecdsa-p256 (default),
	// ecdsa-p384, rsa-2048 or rsa-4096.
	AnnotationKeyType = core.AnnotationKeyType
	// AnnotationPathType chooses the pathType of the challenge paths: Exact
	// (default), Prefix or ImplementationSpecific, for controllers that need it.
	AnnotationPathType = AnnotationPrefix + "path-type"
	// AnnotationProfile asks the CA for a certificate profile it offers (e.g.
	// Let's Encrypt's "shortlived" or "tlsserver"); default: the CA's default.
	AnnotationProfile = core.AnnotationProfile
	// AnnotationManagedTLS records the spec.tls entry ingress-acme added to an
	// Ingress that had none (JSON: the Secret and the hosts written), so that
	// the entry keeps following the rule hosts until the user edits it.
	AnnotationManagedTLS = AnnotationPrefix + "managed-tls"
)

var pathTypes = []networkingv1.PathType{networkingv1.PathTypeExact, networkingv1.PathTypePrefix, networkingv1.PathTypeImplementationSpecific}

// optedIn reports whether ing asks for certificates.
func optedIn(ing *networkingv1.Ingress) bool {
	return strings.EqualFold(strings.TrimSpace(ing.Annotations[AnnotationTLSACME]), "true")
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
// AnnotationManagedTLS) asks for every rule host, like no spec.tls at all.
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
			hosts = dedupe(t.Hosts)
		}
		i := slices.IndexFunc(specs, func(s certSpec) bool { return s.secret == t.SecretName })
		if i >= 0 { // two entries, one Secret: one certificate for both
			for _, h := range hosts {
				if !slices.Contains(specs[i].hosts, h) {
					specs[i].hosts = append(specs[i].hosts, h)
				}
			}
			continue
		}
		specs = append(specs, certSpec{secret: t.SecretName, hosts: hosts, implicit: implicit})
	}
	return specs
}

func ruleHostsOf(ing *networkingv1.Ingress) []string {
	var hosts []string
	for _, r := range ing.Spec.Rules {
		if r.Host != "" && !slices.Contains(hosts, r.Host) {
			hosts = append(hosts, r.Host)
		}
	}
	return hosts
}

func dedupe(hosts []string) []string {
	var out []string
	for _, h := range hosts {
		if !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out
}

// managedTLS is the spec.tls entry we added, as AnnotationManagedTLS records it.
type managedTLS struct {
	Secret string   `json:"secret"`
	Hosts  []string `json:"hosts"`
}

// readManagedTLS returns ing's record of the spec.tls entry we added; ok is
// false when there is none (or it does not parse: then the entry is the user's).
func readManagedTLS(ing *networkingv1.Ingress) (m managedTLS, ok bool) {
	raw, has := ing.Annotations[AnnotationManagedTLS]
	if !has || json.Unmarshal([]byte(raw), &m) != nil || m.Secret == "" {
		return managedTLS{}, false
	}
	return m, true
}

// owns reports whether t is the entry m records, unchanged by the user.
func (m managedTLS) owns(t networkingv1.IngressTLS) bool {
	return m.Secret != "" && t.SecretName == m.Secret && sameHosts(t.Hosts, m.Hosts)
}

func writeManagedTLS(ing *networkingv1.Ingress, secret string, hosts []string) {
	raw, _ := json.Marshal(managedTLS{Secret: secret, Hosts: hosts}) // strings always marshal
	if ing.Annotations == nil {
		ing.Annotations = map[string]string{}
	}
	ing.Annotations[AnnotationManagedTLS] = string(raw)
}

// sameHosts reports whether a and b hold the same hosts, in any order and case.
func sameHosts(a, b []string) bool {
	norm := func(hs []string) []string {
		out := make([]string, 0, len(hs))
		for _, h := range hs {
			if h = strings.ToLower(h); !slices.Contains(out, h) {
				out = append(out, h)
			}
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(norm(a), norm(b))
}

// mentioned reports whether ing carries the opt-in annotation with any value
// but "false": a malformed value must reach sync to be reported, not be skipped.
func mentioned(ing *networkingv1.Ingress) bool {
	v, ok := ing.Annotations[AnnotationTLSACME]
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

// journalKeys are the keys of the certificates with challenge paths journalled on
// ing. An unparsable journal yields every certificate ing asks for, so that the
// paths are cleaned up anyway.
func journalKeys(ing *networkingv1.Ingress) []string {
	entries, err := readJournal(ing)
	if err != nil {
		var keys []string
		for _, s := range certSpecs(ing) {
			keys = append(keys, ing.Namespace+"/"+s.secret)
		}
		return keys
	}
	var keys []string
	for _, e := range entries {
		k := ing.Namespace + "/" + e.Secret
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
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
	if v, ok := ing.Annotations[AnnotationKeyType]; ok {
		if kt, err := core.ParseKeyType(v); err == nil {
			o.keyType = kt
		} else {
			problems = append(problems, fmt.Sprintf("annotation %s: %s is not one of %s", AnnotationKeyType, quoted(v, 40), keyTypeNames()))
		}
	}
	if v, ok := ing.Annotations[AnnotationPathType]; ok {
		i := slices.IndexFunc(pathTypes, func(p networkingv1.PathType) bool { return strings.EqualFold(string(p), strings.TrimSpace(v)) })
		if i >= 0 {
			o.pathType = pathTypes[i]
		} else {
			problems = append(problems, fmt.Sprintf("annotation %s: %s is not one of Exact, Prefix, ImplementationSpecific", AnnotationPathType, quoted(v, 40)))
		}
	}
	if v, ok := ing.Annotations[AnnotationProfile]; ok {
		p := strings.TrimSpace(v)
		if validProfile(p) {
			o.profile = p
		} else {
			problems = append(problems, fmt.Sprintf("annotation %s: %s is not a profile name (1 to 64 letters, digits, '-', '_' or '.')", AnnotationProfile, quoted(v, 40)))
		}
	}
	if v, ok := ing.Annotations[AnnotationTLSACME]; ok && !strings.EqualFold(strings.TrimSpace(v), "true") && !strings.EqualFold(strings.TrimSpace(v), "false") {
		problems = append(problems, fmt.Sprintf("annotation %s: %s is neither \"true\" (opt in) nor \"false\"", AnnotationTLSACME, quoted(v, 40)))
	}
	return o, problems
}

func keyTypeNames() string {
	var names []string
	for _, k := range core.KeyTypes() {
		names = append(names, string(k))
	}
	return strings.Join(names, ", ")
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
				"Ingresses %s and %s name Secret %s with different %s, %s or %s options", ings[0].Name, ing.Name, secret, AnnotationKeyType, AnnotationPathType, AnnotationProfile)})
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
				if !slices.Contains(d.hosts, h) {
					d.hosts = append(d.hosts, h)
				}
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
		if !ok || !managed.owns(t) || len(spec.hosts) == 0 || sameHosts(t.Hosts, spec.hosts) {
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
	if _, has := ing.Annotations[AnnotationManagedTLS]; !has {
		return false
	}
	managed, ok := readManagedTLS(ing)
	if ok && slices.ContainsFunc(ing.Spec.TLS, managed.owns) {
		return false
	}
	delete(ing.Annotations, AnnotationManagedTLS)
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
