package ingress

import (
	"net"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/ingress-acme/ingress-acme/core"
)

// FuzzParseOptions gives parseOptions arbitrary annotation values: it must never
// panic, and each annotation must either parse to a valid option or be reported
// as a problem, never silently defaulted.
func FuzzParseOptions(f *testing.F) {
	f.Add("ecdsa-p256", "Exact", "shortlived", "true", uint8(15))
	f.Add(" RSA-4096 ", "prefix", "tlsserver", "TRUE", uint8(15))
	f.Add("rsa-1024", "Regex", "short lived", "yes", uint8(15))
	f.Add("", "", "", "", uint8(15))
	f.Add("", "", "", "", uint8(0))
	f.Add("ecdsa-p384\x00", "ImplementationSpecific\n", strings.Repeat("p", 65), " false ", uint8(15))
	f.Add("ЕCDSA-P256", "Implementationſpecific", "prof\u00e9", "ｔｒｕｅ", uint8(15))
	f.Add(strings.Repeat("é", 30), "\xff\xfe", "a.b-c_d", "\t", uint8(5))

	const (
		hasKeyType = 1 << iota
		hasPathType
		hasProfile
		hasTLSACME
	)
	f.Fuzz(func(t *testing.T, keyType, pathType, profile, tlsACME string, present uint8) {
		ann := map[string]string{}
		if present&hasKeyType != 0 {
			ann[core.AnnotationKeyType] = keyType
		}
		if present&hasPathType != 0 {
			ann[core.AnnotationPathType] = pathType
		}
		if present&hasProfile != 0 {
			ann[core.AnnotationProfile] = profile
		}
		if present&hasTLSACME != 0 {
			ann[core.AnnotationTLSACME] = tlsACME
		}
		ing := &networkingv1.Ingress{}
		ing.Annotations = ann
		o, problems := parseOptions(ing)

		// Every option is valid, whatever the input.
		if !slices.Contains(core.KeyTypes(), o.keyType) {
			t.Fatalf("got key type %q, want one of %v", o.keyType, core.KeyTypes())
		}
		if !slices.Contains(pathTypes, o.pathType) {
			t.Fatalf("got path type %q, want one of %v", o.pathType, pathTypes)
		}
		if o.profile != "" && !fuzzValidProfile(o.profile) {
			t.Fatalf("got profile %q, want empty or 1-64 of [A-Za-z0-9._-]", o.profile)
		}
		for _, p := range problems {
			if !utf8.ValidString(p) {
				t.Fatalf("got problem %q that is not valid UTF-8 (it goes into an Event)", p)
			}
			if len(p) > 400 {
				t.Fatalf("got a %d-byte problem, want the value truncated", len(p))
			}
		}
		reported := func(annotation string) int {
			n := 0
			for _, p := range problems {
				if strings.HasPrefix(p, "annotation "+annotation+":") {
					n++
				}
			}
			return n
		}

		// Each annotation: parsed, or reported and left at the default.
		rejected := 0
		check := func(annotation string, set bool, value, got, def string) {
			n := reported(annotation)
			if n > 1 {
				t.Fatalf("%s: got %d problems, want at most 1", annotation, n)
			}
			switch {
			case !set:
				if n != 0 || got != def {
					t.Fatalf("%s absent: got %q and %d problems, want default %q and none", annotation, got, n, def)
				}
			case n == 1:
				rejected++
				if got != def {
					t.Fatalf("%s %q: reported, but got %q, want the default %q", annotation, value, got, def)
				}
			default:
				if !strings.EqualFold(strings.TrimSpace(value), got) {
					t.Fatalf("%s %q: got %q without a problem, want the value or a problem", annotation, value, got)
				}
			}
		}
		check(core.AnnotationKeyType, present&hasKeyType != 0, keyType, string(o.keyType), string(core.KeyTypes()[0]))
		check(core.AnnotationPathType, present&hasPathType != 0, pathType, string(o.pathType), string(networkingv1.PathTypeExact))
		check(core.AnnotationProfile, present&hasProfile != 0, profile, o.profile, "")

		// The opt-in annotation, when present: true or false, else reported.
		v := strings.TrimSpace(tlsACME)
		wantReported := present&hasTLSACME != 0 && !strings.EqualFold(v, "true") && !strings.EqualFold(v, "false")
		if n := reported(core.AnnotationTLSACME); (n == 1) != wantReported || n > 1 {
			t.Fatalf("%s %q: got %d problems, want reported %v", core.AnnotationTLSACME, tlsACME, n, wantReported)
		}
		if wantReported {
			rejected++
		}
		if len(problems) != rejected {
			t.Fatalf("got problems %q, want %d", problems, rejected)
		}
		if optedIn(ing) && (present&hasTLSACME == 0 || !strings.EqualFold(v, "true")) {
			t.Fatalf("%s %q: got opted in, want only for true", core.AnnotationTLSACME, tlsACME)
		}
	})
}

func fuzzValidProfile(p string) bool {
	if len(p) < 1 || len(p) > 64 {
		return false
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_.", c)) {
			return false
		}
	}
	return true
}

// fuzzHostOK is the specification validateHost implements: at most 253
// characters, dot-separated labels of 1 to 63 of [a-z0-9-] that neither start
// nor end with '-', and not an IP address.
func fuzzHostOK(host string) bool {
	if host == "" || len(host) > 253 || net.ParseIP(host) != nil {
		return false
	}
	for _, label := range strings.Split(host, ".") {
		if len(label) < 1 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// FuzzValidateHost: validateHost never panics, accepts exactly the hosts the
// specification allows (so never a wildcard, an IP, or more than 253
// characters), and says what is wrong in valid UTF-8 otherwise.
func FuzzValidateHost(f *testing.F) {
	for _, h := range []string{
		"example.com", "a-b.c1.example.com", "*.example.com", "a*.example.com", "*",
		"192.0.2.1", "::1", "[::1]", "1.2.3", "Example.com", "-a.example.com", "a-.example.com",
		"a..example.com", ".", "", "example.com.", "xn--bcher-kva.example", "bücher.example",
		strings.Repeat("a", 63) + ".com", strings.Repeat("a", 64) + ".com",
		strings.Repeat("abcdefghi.", 25) + "com", strings.Repeat("abcdefghi.", 25) + "comx",
		"\xff.example.com", "a\x00b.com", "ﬀ.com",
	} {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, host string) {
		msg := validateHost(host)
		if msg == "" {
			if len(host) > 253 {
				t.Fatalf("accepted a %d-character host", len(host))
			}
			if strings.Contains(host, "*") {
				t.Fatalf("accepted %q, a wildcard", host)
			}
			if !fuzzHostOK(host) {
				t.Fatalf("accepted %q, which the specification rejects", host)
			}
			return
		}
		if fuzzHostOK(host) {
			t.Fatalf("rejected %q (%s), which the specification accepts", host, msg)
		}
		if !utf8.ValidString(msg) {
			t.Fatalf("got message %q, want valid UTF-8 (it goes into an Event)", msg)
		}
		if len(msg) > 400 {
			t.Fatalf("got a %d-byte message, want the host truncated", len(msg))
		}
	})
}
