package ingress

import (
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ingress-acme/ingress-acme/core"
	"github.com/ingress-acme/ingress-acme/internal/testfx"
)

// The shared fixtures (see testfx), by the names these tests use.
var (
	fxIngress  = testfx.Ingress
	fxRule     = testfx.Rule
	fxTLS      = testfx.TLS
	fxAnnotate = testfx.Annotate
)

func TestOptedIn(t *testing.T) {
	tests := []struct {
		name  string
		value *string
		want  bool
	}{
		{name: "true", value: fxPtr("true"), want: true},
		{name: "TRUE", value: fxPtr("TRUE"), want: true},
		{name: "True with spaces", value: fxPtr(" True\n"), want: true},
		{name: "false", value: fxPtr("false"), want: false},
		{name: "empty", value: fxPtr(""), want: false},
		{name: "yes", value: fxPtr("yes"), want: false},
		{name: "1", value: fxPtr("1"), want: false},
		{name: "truex", value: fxPtr("truex"), want: false},
		{name: "missing", value: nil, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ing := &networkingv1.Ingress{}
			if tt.value != nil {
				ing.Annotations = map[string]string{core.AnnotationTLSACME: *tt.value}
			}
			if got := optedIn(ing); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func fxPtr[T any](v T) *T { return &v }

func TestParseOptions(t *testing.T) {
	tests := []struct {
		name         string
		ann          []string
		wantKeyType  core.KeyType
		wantPathType networkingv1.PathType
		wantProfile  string
		wantProblems []string // substrings, one per problem, in order
	}{
		{name: "defaults", wantKeyType: "ecdsa-p256", wantPathType: networkingv1.PathTypeExact},
		{name: "every key type", ann: []string{core.AnnotationKeyType, "rsa-4096"}, wantKeyType: "rsa-4096", wantPathType: networkingv1.PathTypeExact},
		{name: "key type case and spaces", ann: []string{core.AnnotationKeyType, " ECDSA-P384 "}, wantKeyType: "ecdsa-p384", wantPathType: networkingv1.PathTypeExact},
		{name: "bad key type", ann: []string{core.AnnotationKeyType, "rsa-1024"}, wantKeyType: "ecdsa-p256", wantPathType: networkingv1.PathTypeExact,
			wantProblems: []string{core.AnnotationKeyType}},
		{name: "empty key type is a problem", ann: []string{core.AnnotationKeyType, ""}, wantKeyType: "ecdsa-p256", wantPathType: networkingv1.PathTypeExact,
			wantProblems: []string{core.AnnotationKeyType}},
		{name: "path type Prefix", ann: []string{core.AnnotationPathType, "Prefix"}, wantKeyType: "ecdsa-p256", wantPathType: networkingv1.PathTypePrefix},
		{name: "path type any case", ann: []string{core.AnnotationPathType, "implementationspecific"}, wantKeyType: "ecdsa-p256", wantPathType: networkingv1.PathTypeImplementationSpecific},
		{name: "path type exact with spaces", ann: []string{core.AnnotationPathType, " EXACT "}, wantKeyType: "ecdsa-p256", wantPathType: networkingv1.PathTypeExact},
		{name: "bad path type", ann: []string{core.AnnotationPathType, "Regex"}, wantKeyType: "ecdsa-p256", wantPathType: networkingv1.PathTypeExact,
			wantProblems: []string{core.AnnotationPathType}},
		{name: "profile", ann: []string{core.AnnotationProfile, " shortlived "}, wantKeyType: "ecdsa-p256", wantPathType: networkingv1.PathTypeExact, wantProfile: "shortlived"},
		{name: "bad profile", ann: []string{core.AnnotationProfile, "short lived"}, wantKeyType: "ecdsa-p256", wantPathType: networkingv1.PathTypeExact,
			wantProblems: []string{core.AnnotationProfile}},
		{name: "tls-acme false is fine", ann: []string{core.AnnotationTLSACME, "False"}, wantKeyType: "ecdsa-p256", wantPathType: networkingv1.PathTypeExact},
		{name: "tls-acme neither", ann: []string{core.AnnotationTLSACME, "yes"}, wantKeyType: "ecdsa-p256", wantPathType: networkingv1.PathTypeExact,
			wantProblems: []string{core.AnnotationTLSACME}},
		{name: "tls-acme empty", ann: []string{core.AnnotationTLSACME, " "}, wantKeyType: "ecdsa-p256", wantPathType: networkingv1.PathTypeExact,
			wantProblems: []string{core.AnnotationTLSACME}},
		{name: "every problem reported", ann: []string{core.AnnotationKeyType, "dsa", core.AnnotationPathType, "Glob", core.AnnotationTLSACME, "on"},
			wantKeyType: "ecdsa-p256", wantPathType: networkingv1.PathTypeExact,
			wantProblems: []string{core.AnnotationKeyType, core.AnnotationPathType, core.AnnotationTLSACME}},
		{name: "long value truncated", ann: []string{core.AnnotationKeyType, strings.Repeat("x", 500)}, wantKeyType: "ecdsa-p256", wantPathType: networkingv1.PathTypeExact,
			wantProblems: []string{"..."}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ing := fxAnnotate(&networkingv1.Ingress{}, tt.ann...)
			o, problems := parseOptions(ing)
			if o.keyType != tt.wantKeyType {
				t.Errorf("got key type %q, want %q", o.keyType, tt.wantKeyType)
			}
			if o.pathType != tt.wantPathType {
				t.Errorf("got path type %q, want %q", o.pathType, tt.wantPathType)
			}
			if o.profile != tt.wantProfile {
				t.Errorf("got profile %q, want %q", o.profile, tt.wantProfile)
			}
			if len(problems) != len(tt.wantProblems) {
				t.Fatalf("got problems %q, want %d", problems, len(tt.wantProblems))
			}
			for i, want := range tt.wantProblems {
				if !strings.Contains(problems[i], want) {
					t.Errorf("problem %d: got %q, want it to contain %q", i, problems[i], want)
				}
				if len(problems[i]) > 300 {
					t.Errorf("problem %d: got %d characters, want the value truncated", i, len(problems[i]))
				}
			}
		})
	}
}

func specsString(specs []certSpec) string {
	var b strings.Builder
	for i, s := range specs {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(s.secret + "=" + strings.Join(s.hosts, ","))
		if s.implicit {
			b.WriteString(" (implicit)")
		}
	}
	return b.String()
}

func TestCertSpecs(t *testing.T) {
	tests := []struct {
		name string
		ing  *networkingv1.Ingress
		want string
	}{
		{name: "no spec.tls: <name>-tls for every rule host", ing: fxIngress("web", "a.example.com", "b.example.com"),
			want: "web-tls=a.example.com,b.example.com (implicit)"},
		{name: "no spec.tls: rule hosts deduplicated, empty host skipped", ing: fxIngress("web", "a.example.com", "", "a.example.com", "b.example.com"),
			want: "web-tls=a.example.com,b.example.com (implicit)"},
		{name: "no spec.tls, no hosts", ing: fxIngress("web", ""), want: "web-tls= (implicit)"},
		{name: "spec.tls with hosts", ing: fxTLS(fxIngress("web", "a.example.com", "b.example.com"), "a-tls", "a.example.com"),
			want: "a-tls=a.example.com"},
		{name: "spec.tls hosts deduplicated", ing: fxTLS(fxIngress("web"), "a-tls", "a.example.com", "a.example.com", "c.example.com"),
			want: "a-tls=a.example.com,c.example.com"},
		{name: "spec.tls entry without hosts: every rule host", ing: fxTLS(fxIngress("web", "a.example.com", "b.example.com"), "all-tls"),
			want: "all-tls=a.example.com,b.example.com"},
		{name: "entry without secretName skipped", ing: fxTLS(fxTLS(fxIngress("web", "a.example.com"), "", "a.example.com"), "b-tls", "b.example.com"),
			want: "b-tls=b.example.com"},
		{name: "only entries without secretName: nothing", ing: fxTLS(fxIngress("web", "a.example.com"), "", "a.example.com"),
			want: ""},
		{name: "two entries, two Secrets", ing: fxTLS(fxTLS(fxIngress("web"), "a-tls", "a.example.com"), "b-tls", "b.example.com"),
			want: "a-tls=a.example.com; b-tls=b.example.com"},
		{name: "two entries, one Secret: merged", ing: fxTLS(fxTLS(fxIngress("web"), "x-tls", "a.example.com", "b.example.com"), "x-tls", "b.example.com", "c.example.com"),
			want: "x-tls=a.example.com,b.example.com,c.example.com"},
		{name: "one Secret, one entry without hosts", ing: fxTLS(fxTLS(fxIngress("web", "r.example.com"), "x-tls"), "x-tls", "a.example.com"),
			want: "x-tls=r.example.com,a.example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := specsString(certSpecs(tt.ing)); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCertSpecsDoesNotModifyIngress(t *testing.T) {
	ing := fxTLS(fxTLS(fxIngress("web", "a.example.com", "b.example.com", "c.example.com"), "x-tls"), "x-tls", "d.example.com")
	before := ing.DeepCopy()
	_ = certSpecs(ing)
	for i := range ing.Spec.TLS {
		if !slices.Equal(ing.Spec.TLS[i].Hosts, before.Spec.TLS[i].Hosts) {
			t.Errorf("spec.tls[%d]: got hosts %v, want %v", i, ing.Spec.TLS[i].Hosts, before.Spec.TLS[i].Hosts)
		}
	}
	for i := range ing.Spec.Rules {
		if ing.Spec.Rules[i].Host != before.Spec.Rules[i].Host {
			t.Errorf("rule %d: got host %q, want %q", i, ing.Spec.Rules[i].Host, before.Spec.Rules[i].Host)
		}
	}
}

func TestCertKeys(t *testing.T) {
	tests := []struct {
		name string
		ing  *networkingv1.Ingress
		want []string
	}{
		{name: "opted in, implicit", ing: fxIngress("web", "a.example.com"), want: []string{"ns/web-tls"}},
		{name: "opted in, two Secrets", ing: fxTLS(fxTLS(fxIngress("web"), "a-tls", "a.example.com"), "b-tls", "b.example.com"), want: []string{"ns/a-tls", "ns/b-tls"}},
		{name: "not opted in", ing: fxAnnotate(fxIngress("web", "a.example.com"), core.AnnotationTLSACME, "false"), want: nil},
		{name: "not opted in, any case", ing: fxAnnotate(fxIngress("web", "a.example.com"), core.AnnotationTLSACME, " FALSE "), want: nil},
		{name: "malformed opt-in: queued to be reported", ing: fxAnnotate(fxIngress("web", "a.example.com"), core.AnnotationTLSACME, "yes"), want: []string{"ns/web-tls"}},
		{name: "empty opt-in: queued to be reported", ing: fxAnnotate(fxIngress("web", "a.example.com"), core.AnnotationTLSACME, ""), want: []string{"ns/web-tls"}},
		{name: "no annotations", ing: &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"}}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := certKeys(tt.ing); !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestValidateHost(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	// 253 characters: four labels of 63 and one of 1, with four dots.
	host253 := strings.Join([]string{label63, label63, label63, strings.Repeat("b", 61)}, ".")
	if len(host253) != 253 {
		t.Fatalf("test setup: got %d characters, want 253", len(host253))
	}
	tests := []struct {
		name    string
		host    string
		wantMsg string // "" for valid, else a substring of the problem
	}{
		{name: "plain", host: "example.com"},
		{name: "sub", host: "a-b.c1.example.com"},
		{name: "single label", host: "localhost"},
		{name: "digits", host: "123.example.com"},
		{name: "punycode", host: "xn--bcher-kva.example"},
		{name: "63-character label", host: label63 + ".example.com"},
		{name: "253 characters", host: host253},
		{name: "empty", host: "", wantMsg: "empty"},
		{name: "wildcard", host: "*.example.com", wantMsg: "DNS-01"},
		{name: "star inside", host: "a*.example.com", wantMsg: "only lowercase"},
		{name: "star alone", host: "*", wantMsg: "only lowercase"},
		{name: "254 characters", host: host253 + "c", wantMsg: "longer than 253"},
		{name: "64-character label", host: label63 + "a.example.com", wantMsg: "1 to 63"},
		{name: "IPv4", host: "192.0.2.1", wantMsg: "IP addresses"},
		{name: "IPv6", host: "2001:db8::1", wantMsg: "IP addresses"},
		{name: "IPv6 loopback", host: "::1", wantMsg: "IP addresses"},
		{name: "bracketed IPv6", host: "[::1]", wantMsg: "only lowercase"},
		{name: "uppercase (callers lowercase first)", host: "Example.com", wantMsg: "only lowercase"},
		{name: "leading hyphen", host: "-a.example.com", wantMsg: "start or end"},
		{name: "trailing hyphen", host: "a-.example.com", wantMsg: "start or end"},
		{name: "empty label", host: "a..example.com", wantMsg: "1 to 63"},
		{name: "leading dot", host: ".example.com", wantMsg: "1 to 63"},
		{name: "trailing dot", host: "example.com.", wantMsg: "1 to 63"},
		{name: "underscore", host: "a_b.example.com", wantMsg: "only lowercase"},
		{name: "space", host: "a b.example.com", wantMsg: "only lowercase"},
		{name: "port", host: "example.com:80", wantMsg: "only lowercase"},
		{name: "unicode", host: "bücher.example", wantMsg: "only lowercase"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := validateHost(tt.host)
			if tt.wantMsg == "" {
				if got != "" {
					t.Errorf("got %q, want valid", got)
				}
				return
			}
			if got == "" {
				t.Fatalf("got valid, want a problem containing %q", tt.wantMsg)
			}
			if !strings.Contains(got, tt.wantMsg) {
				t.Errorf("got %q, want it to contain %q", got, tt.wantMsg)
			}
			if len(got) > 200 {
				t.Errorf("got a %d-character message, want the host truncated", len(got))
			}
		})
	}
}

func TestDesiredFor(t *testing.T) {
	t.Run("one Ingress", func(t *testing.T) {
		ing := fxIngress("web", "B.example.com", "a.example.com")
		d, problems := desiredFor("ns", "web-tls", []*networkingv1.Ingress{ing})
		if len(problems) != 0 {
			t.Fatalf("got problems %v, want none", problems)
		}
		if want := []string{"a.example.com", "b.example.com"}; !slices.Equal(d.hosts, want) {
			t.Errorf("got hosts %v, want %v (lowercased, sorted)", d.hosts, want)
		}
		if d.namespace != "ns" || d.secret != "web-tls" {
			t.Errorf("got %s/%s, want ns/web-tls", d.namespace, d.secret)
		}
		if d.mismatch {
			t.Errorf("got mismatch, want none")
		}
		if d.options.keyType != "ecdsa-p256" || d.options.pathType != networkingv1.PathTypeExact {
			t.Errorf("got options %+v, want the defaults", d.options)
		}
		for _, h := range d.hosts {
			if d.hostIngress[h] != ing {
				t.Errorf("host %s: got Ingress %v, want web", h, d.hostIngress[h])
			}
		}
		if s, ok := d.ownHosts["web"]; !ok || !s.implicit || s.secret != "web-tls" {
			t.Errorf("got own hosts %+v, want web's implicit spec", d.ownHosts)
		}
	})

	t.Run("union of hosts across Ingresses and mismatch", func(t *testing.T) {
		a := fxTLS(fxIngress("a", "a.example.com"), "shared-tls", "a.example.com")
		b := fxTLS(fxIngress("b", "b.example.com"), "shared-tls", "b.example.com", "a.example.com")
		d, problems := desiredFor("ns", "shared-tls", []*networkingv1.Ingress{b, a})
		if len(problems) != 0 {
			t.Fatalf("got problems %v, want none", problems)
		}
		if want := []string{"a.example.com", "b.example.com"}; !slices.Equal(d.hosts, want) {
			t.Errorf("got hosts %v, want %v", d.hosts, want)
		}
		if !d.mismatch {
			t.Errorf("got no mismatch, want one: a asks for 1 host, b for 2")
		}
		if len(d.ingresses) != 2 || d.ingresses[0].Name != "a" || d.ingresses[1].Name != "b" {
			t.Errorf("got ingresses %v, want sorted by name", fxNames(d.ingresses))
		}
		if got := d.hostIngress["a.example.com"]; got != a {
			t.Errorf("a.example.com: got %v, want a (first with a rule)", got.Name)
		}
		if got := d.hostIngress["b.example.com"]; got != b {
			t.Errorf("b.example.com: got %v, want b (the only one with a rule)", got.Name)
		}
		if got := d.ownHosts["b"].hosts; !slices.Equal(got, []string{"b.example.com", "a.example.com"}) {
			t.Errorf("b's own hosts: got %v, want as written", got)
		}
	})

	t.Run("same hosts in another order and case: no mismatch", func(t *testing.T) {
		a := fxTLS(fxIngress("a"), "shared-tls", "a.example.com", "b.example.com")
		b := fxTLS(fxIngress("b"), "shared-tls", "B.example.com", "A.example.com")
		d, problems := desiredFor("ns", "shared-tls", []*networkingv1.Ingress{a, b})
		if len(problems) != 0 {
			t.Fatalf("got problems %v, want none", problems)
		}
		if d.mismatch {
			t.Errorf("got mismatch, want none")
		}
	})

	t.Run("host with no rule goes to the first Ingress", func(t *testing.T) {
		z := fxTLS(fxIngress("z", "z.example.com"), "shared-tls", "only-tls.example.com", "z.example.com")
		m := fxTLS(fxIngress("m", "m.example.com"), "shared-tls", "only-tls.example.com", "z.example.com")
		d, _ := desiredFor("ns", "shared-tls", []*networkingv1.Ingress{z, m})
		if got := d.hostIngress["only-tls.example.com"]; got != m {
			t.Errorf("got %v, want m (first by name)", got.Name)
		}
		if got := d.hostIngress["z.example.com"]; got != z {
			t.Errorf("got %v, want z (the one with the rule)", got.Name)
		}
	})

	t.Run("rule host matched case-insensitively", func(t *testing.T) {
		a := fxTLS(fxIngress("a", "other.example.com"), "shared-tls", "x.example.com")
		b := fxTLS(fxIngress("b", "X.Example.com"), "shared-tls", "x.example.com")
		d, _ := desiredFor("ns", "shared-tls", []*networkingv1.Ingress{a, b})
		if got := d.hostIngress["x.example.com"]; got != b {
			t.Errorf("got %v, want b", got.Name)
		}
	})

	t.Run("conflicting options", func(t *testing.T) {
		a := fxAnnotate(fxTLS(fxIngress("a", "a.example.com"), "shared-tls"), core.AnnotationKeyType, "rsa-2048")
		b := fxTLS(fxIngress("b", "a.example.com"), "shared-tls")
		d, problems := desiredFor("ns", "shared-tls", []*networkingv1.Ingress{b, a})
		if len(problems) != 1 || problems[0].reason != "ConflictingOptions" {
			t.Fatalf("got %v, want one ConflictingOptions", problems)
		}
		if problems[0].ingress != b {
			t.Errorf("got the problem on %s, want on b (a comes first)", problems[0].ingress.Name)
		}
		if d.options.keyType != "rsa-2048" {
			t.Errorf("got key type %q, want the first Ingress's rsa-2048", d.options.keyType)
		}
	})

	t.Run("same options spelled differently do not conflict", func(t *testing.T) {
		a := fxAnnotate(fxTLS(fxIngress("a", "a.example.com"), "shared-tls"), core.AnnotationPathType, "prefix")
		b := fxAnnotate(fxTLS(fxIngress("b", "a.example.com"), "shared-tls"), core.AnnotationPathType, " Prefix ")
		if _, problems := desiredFor("ns", "shared-tls", []*networkingv1.Ingress{a, b}); len(problems) != 0 {
			t.Errorf("got %v, want none", problems)
		}
	})

	t.Run("invalid annotation", func(t *testing.T) {
		a := fxAnnotate(fxIngress("a", "a.example.com"), core.AnnotationKeyType, "dsa")
		_, problems := desiredFor("ns", "a-tls", []*networkingv1.Ingress{a})
		if len(problems) != 1 || problems[0].reason != "InvalidAnnotation" || problems[0].ingress != a {
			t.Errorf("got %v, want one InvalidAnnotation on a", problems)
		}
	})

	t.Run("invalid hosts are left out and reported", func(t *testing.T) {
		a := fxIngress("a", "ok.example.com", "*.example.com", "192.0.2.1")
		d, problems := desiredFor("ns", "a-tls", []*networkingv1.Ingress{a})
		if want := []string{"ok.example.com"}; !slices.Equal(d.hosts, want) {
			t.Errorf("got hosts %v, want %v", d.hosts, want)
		}
		if len(problems) != 2 {
			t.Fatalf("got %v, want two InvalidHost", problems)
		}
		for _, p := range problems {
			if p.reason != "InvalidHost" {
				t.Errorf("got reason %q, want InvalidHost", p.reason)
			}
		}
	})

	t.Run("uppercase hosts are lowercased, not rejected", func(t *testing.T) {
		a := fxIngress("a", "WWW.Example.COM")
		d, problems := desiredFor("ns", "a-tls", []*networkingv1.Ingress{a})
		if len(problems) != 0 || !slices.Equal(d.hosts, []string{"www.example.com"}) {
			t.Errorf("got %v, %v, want [www.example.com] and no problems", d.hosts, problems)
		}
	})

	t.Run("no hosts", func(t *testing.T) {
		a := fxIngress("a", "")
		d, problems := desiredFor("ns", "a-tls", []*networkingv1.Ingress{a})
		if len(problems) != 1 || problems[0].reason != "NoHosts" || problems[0].ingress != a {
			t.Fatalf("got %v, want one NoHosts on a", problems)
		}
		if !strings.Contains(problems[0].message, "a-tls") {
			t.Errorf("got %q, want it to name the Secret", problems[0].message)
		}
		if len(d.hosts) != 0 {
			t.Errorf("got hosts %v, want none", d.hosts)
		}
	})

	t.Run("only invalid hosts: InvalidHost, not NoHosts", func(t *testing.T) {
		_, problems := desiredFor("ns", "a-tls", []*networkingv1.Ingress{fxIngress("a", "*.example.com")})
		if len(problems) != 1 || problems[0].reason != "InvalidHost" {
			t.Errorf("got %v, want one InvalidHost", problems)
		}
	})

	t.Run("no Ingresses", func(t *testing.T) {
		d, problems := desiredFor("ns", "a-tls", nil)
		if len(problems) != 0 || len(d.hosts) != 0 || len(d.hostIngress) != 0 {
			t.Errorf("got %v, %v, want nothing", d, problems)
		}
	})

	t.Run("input slice not reordered", func(t *testing.T) {
		in := []*networkingv1.Ingress{fxIngress("z", "a.example.com"), fxIngress("a", "a.example.com")}
		fxTLS(in[0], "s-tls")
		fxTLS(in[1], "s-tls")
		_, _ = desiredFor("ns", "s-tls", in)
		if in[0].Name != "z" || in[1].Name != "a" {
			t.Errorf("got %v, want the caller's order kept", fxNames(in))
		}
	})
}

func fxNames(ings []*networkingv1.Ingress) []string {
	var out []string
	for _, i := range ings {
		out = append(out, i.Name)
	}
	return out
}

func TestEnsureTLS(t *testing.T) {
	tests := []struct {
		name        string
		ing         *networkingv1.Ingress
		spec        certSpec
		wantChanged bool
		wantTLS     string // secret=hosts; ...
	}{
		{name: "implicit: entry added", ing: fxIngress("web", "a.example.com", "b.example.com"),
			spec:        certSpec{secret: "web-tls", hosts: []string{"a.example.com", "b.example.com"}, implicit: true},
			wantChanged: true, wantTLS: "web-tls=a.example.com,b.example.com"},
		{name: "already named", ing: fxTLS(fxIngress("web", "a.example.com"), "web-tls", "a.example.com"),
			spec:        certSpec{secret: "web-tls", hosts: []string{"a.example.com", "b.example.com"}, implicit: true},
			wantChanged: false, wantTLS: "web-tls=a.example.com"},
		{name: "user's spec.tls names other Secrets", ing: fxTLS(fxIngress("web", "a.example.com"), "theirs-tls", "a.example.com"),
			spec:        certSpec{secret: "web-tls", hosts: []string{"a.example.com"}, implicit: true},
			wantChanged: false, wantTLS: "theirs-tls=a.example.com"},
		{name: "not implicit", ing: fxIngress("web", "a.example.com"),
			spec:        certSpec{secret: "web-tls", hosts: []string{"a.example.com"}},
			wantChanged: false, wantTLS: ""},
		{name: "no hosts", ing: fxIngress("web"),
			spec:        certSpec{secret: "web-tls", implicit: true},
			wantChanged: false, wantTLS: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ensureTLS(tt.ing, tt.spec.secret, tt.spec); got != tt.wantChanged {
				t.Errorf("got changed %v, want %v", got, tt.wantChanged)
			}
			var tls []string
			for _, e := range tt.ing.Spec.TLS {
				tls = append(tls, e.SecretName+"="+strings.Join(e.Hosts, ","))
			}
			if got := strings.Join(tls, "; "); got != tt.wantTLS {
				t.Errorf("got spec.tls %q, want %q", got, tt.wantTLS)
			}
		})
	}
	t.Run("hosts are copied", func(t *testing.T) {
		hosts := []string{"a.example.com"}
		ing := fxIngress("web", "a.example.com")
		ensureTLS(ing, "web-tls", certSpec{secret: "web-tls", hosts: hosts, implicit: true})
		hosts[0] = "changed.example.com"
		if got := ing.Spec.TLS[0].Hosts[0]; got != "a.example.com" {
			t.Errorf("got %q, want a.example.com (not aliased to the spec)", got)
		}
	})
}

// Two Secrets, each named by one spec.tls entry without hosts (all rule hosts)
// and one with a host of its own: neither may get the other's host.
func TestCertSpecsDoNotShareHosts(t *testing.T) {
	ing := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Name: "i", Namespace: "ns"}}
	for _, h := range []string{"a.example.com", "b.example.com", "c.example.com"} {
		ing.Spec.Rules = append(ing.Spec.Rules, networkingv1.IngressRule{Host: h})
	}
	ing.Spec.TLS = []networkingv1.IngressTLS{
		{SecretName: "s1"}, {SecretName: "s2"},
		{SecretName: "s1", Hosts: []string{"x.example.com"}},
		{SecretName: "s2", Hosts: []string{"y.example.com"}},
	}
	got := map[string]string{}
	for _, s := range certSpecs(ing) {
		got[s.secret] = strings.Join(s.hosts, ",")
	}
	want := map[string]string{
		"s1": "a.example.com,b.example.com,c.example.com,x.example.com",
		"s2": "a.example.com,b.example.com,c.example.com,y.example.com",
	}
	for k := range want {
		if got[k] != want[k] {
			t.Errorf("%s: got %s, want %s", k, got[k], want[k])
		}
	}
}
