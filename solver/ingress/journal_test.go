package ingress

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/ingress-acme/ingress-acme/core"
)

const solverSvc = "ingress-acme-solver"

// fxLayout renders ing's rules as "host: path>service, ...; host: ..." so a test
// can compare a whole Ingress's routing in one string.
func fxLayout(ing *networkingv1.Ingress) string {
	var rules []string
	for _, r := range ing.Spec.Rules {
		var paths []string
		if r.HTTP == nil {
			rules = append(rules, r.Host+": -")
			continue
		}
		for _, p := range r.HTTP.Paths {
			svc := "?"
			if p.Backend.Service != nil {
				svc = p.Backend.Service.Name
			}
			paths = append(paths, p.Path+">"+svc)
		}
		rules = append(rules, r.Host+": "+strings.Join(paths, ", "))
	}
	return strings.Join(rules, "; ")
}

func fxJournal(t *testing.T, ing *networkingv1.Ingress) []Entry {
	t.Helper()
	entries, err := readJournal(ing)
	if err != nil {
		t.Fatalf("read journal: %v", err)
	}
	return entries
}

func chal(token string) string { return core.ChallengePathPrefix + token }

func TestEntryPath(t *testing.T) {
	if got, want := (Entry{Token: "abc"}).Path(), "/.well-known/acme-challenge/abc"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestInsertPaths(t *testing.T) {
	a1 := Entry{Secret: "web-tls", Host: "a.example.com", Token: "tokA"}
	b1 := Entry{Secret: "web-tls", Host: "b.example.com", Token: "tokB"}
	tests := []struct {
		name       string
		ing        func() *networkingv1.Ingress
		entries    []Entry
		wantLayout string
	}{
		{
			name:       "first in the host's rule",
			ing:        func() *networkingv1.Ingress { return fxIngress("web", "a.example.com") },
			entries:    []Entry{a1},
			wantLayout: "a.example.com: " + chal("tokA") + ">" + solverSvc + ", />web",
		},
		{
			name: "first rule for the host that has HTTP",
			ing: func() *networkingv1.Ingress {
				ing := fxIngress("web")
				ing.Spec.Rules = []networkingv1.IngressRule{
					{Host: "a.example.com"}, // no HTTP
					fxRule("b.example.com", "/"),
					fxRule("a.example.com", "/api", "/"),
					fxRule("a.example.com", "/second"),
				}
				return ing
			},
			entries: []Entry{a1},
			wantLayout: "a.example.com: -; b.example.com: />web; a.example.com: " + chal("tokA") + ">" + solverSvc +
				", /api>web, />web; a.example.com: /second>web",
		},
		{
			name:       "host matched case-insensitively",
			ing:        func() *networkingv1.Ingress { return fxIngress("web", "A.Example.com") },
			entries:    []Entry{a1},
			wantLayout: "A.Example.com: " + chal("tokA") + ">" + solverSvc + ", />web",
		},
		{
			name:       "rule appended when the host has none",
			ing:        func() *networkingv1.Ingress { return fxIngress("web", "a.example.com") },
			entries:    []Entry{b1},
			wantLayout: "a.example.com: />web; b.example.com: " + chal("tokB") + ">" + solverSvc,
		},
		{
			name:       "two hosts",
			ing:        func() *networkingv1.Ingress { return fxIngress("web", "a.example.com") },
			entries:    []Entry{a1, b1},
			wantLayout: "a.example.com: " + chal("tokA") + ">" + solverSvc + ", />web; b.example.com: " + chal("tokB") + ">" + solverSvc,
		},
		{
			name:       "two tokens, one host: one rule",
			ing:        func() *networkingv1.Ingress { return fxIngress("web") },
			entries:    []Entry{a1, {Secret: "web-tls", Host: "a.example.com", Token: "tokA2"}},
			wantLayout: "a.example.com: " + chal("tokA2") + ">" + solverSvc + ", " + chal("tokA") + ">" + solverSvc,
		},
		{
			name:       "duplicate entry in one call: once",
			ing:        func() *networkingv1.Ingress { return fxIngress("web", "a.example.com") },
			entries:    []Entry{a1, a1},
			wantLayout: "a.example.com: " + chal("tokA") + ">" + solverSvc + ", />web",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ing := tt.ing()
			changed, err := insertPaths(ing, tt.entries, solverSvc, networkingv1.PathTypeImplementationSpecific)
			if err != nil {
				t.Fatal(err)
			}
			if !changed {
				t.Errorf("got changed false, want true")
			}
			if got := fxLayout(ing); got != tt.wantLayout {
				t.Errorf("got layout\n  %s\nwant\n  %s", got, tt.wantLayout)
			}
			want := slices.Compact(slices.Clone(tt.entries))
			if got := fxJournal(t, ing); !slices.Equal(got, want) {
				t.Errorf("got journal %v, want %v", got, want)
			}
			for _, r := range ing.Spec.Rules {
				if r.HTTP == nil {
					continue
				}
				for _, p := range r.HTTP.Paths {
					if p.Backend.Service == nil || p.Backend.Service.Name != solverSvc {
						continue
					}
					if p.PathType == nil || *p.PathType != networkingv1.PathTypeImplementationSpecific {
						t.Errorf("%s: got path type %v, want ImplementationSpecific", p.Path, p.PathType)
					}
					if p.Backend.Service.Port.Number != 80 || p.Backend.Service.Port.Name != "" {
						t.Errorf("%s: got port %+v, want number 80", p.Path, p.Backend.Service.Port)
					}
				}
			}

			// Idempotent.
			before := ing.DeepCopy()
			changed, err = insertPaths(ing, tt.entries, solverSvc, networkingv1.PathTypeImplementationSpecific)
			if err != nil || changed {
				t.Errorf("again: got %v, %v, want false, nil", changed, err)
			}
			if !equality.Semantic.DeepEqual(before, ing) {
				t.Errorf("again: got layout %s, want it unchanged", fxLayout(ing))
			}
		})
	}
}

func TestInsertPathsPathTypes(t *testing.T) {
	for _, pt := range pathTypes {
		t.Run(string(pt), func(t *testing.T) {
			ing := fxIngress("web", "a.example.com")
			if _, err := insertPaths(ing, []Entry{{Secret: "s", Host: "a.example.com", Token: "t"}}, solverSvc, pt); err != nil {
				t.Fatal(err)
			}
			p := ing.Spec.Rules[0].HTTP.Paths[0]
			if p.PathType == nil || *p.PathType != pt {
				t.Errorf("got %v, want %s", p.PathType, pt)
			}
		})
	}
}

func TestInsertPathsAppendsToJournal(t *testing.T) {
	ing := fxIngress("web", "a.example.com")
	first := Entry{Secret: "x-tls", Host: "a.example.com", Token: "t1"}
	second := Entry{Secret: "y-tls", Host: "a.example.com", Token: "t2"}
	if _, err := insertPaths(ing, []Entry{first}, solverSvc, networkingv1.PathTypeExact); err != nil {
		t.Fatal(err)
	}
	if _, err := insertPaths(ing, []Entry{first, second}, solverSvc, networkingv1.PathTypeExact); err != nil {
		t.Fatal(err)
	}
	if got, want := fxJournal(t, ing), []Entry{first, second}; !slices.Equal(got, want) {
		t.Errorf("got journal %v, want %v", got, want)
	}
	want := "a.example.com: " + chal("t2") + ">" + solverSvc + ", " + chal("t1") + ">" + solverSvc + ", />web"
	if got := fxLayout(ing); got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

// A new order of a certificate replaces, in the same edit, what another order
// of it journalled (one a dead process left, or that the CA failed): a restart
// then continues the new order, not the dead one (found by the kills bench,
// which ordered again for the dead order after every kill). Other
// certificates' entries stay.
func TestInsertPathsReplacesAnotherOrderOfTheCertificate(t *testing.T) {
	ing := fxIngress("web", "a.example.com")
	dead := Entry{Secret: "x-tls", Host: "a.example.com", Token: "t1", Order: "https://ca/order/1"}
	other := Entry{Secret: "y-tls", Host: "a.example.com", Token: "t9", Order: "https://ca/order/9"}
	live := Entry{Secret: "x-tls", Host: "a.example.com", Token: "t2", Order: "https://ca/order/2"}
	for _, es := range [][]Entry{{dead}, {other}} {
		if _, err := insertPaths(ing, es, solverSvc, networkingv1.PathTypeExact); err != nil {
			t.Fatal(err)
		}
	}
	if changed, err := insertPaths(ing, []Entry{live}, solverSvc, networkingv1.PathTypeExact); err != nil || !changed {
		t.Fatalf("insert: changed %v, %v", changed, err)
	}
	if got, want := fxJournal(t, ing), []Entry{other, live}; !slices.Equal(got, want) {
		t.Errorf("got journal %v, want %v", got, want)
	}
	want := "a.example.com: " + chal("t2") + ">" + solverSvc + ", " + chal("t9") + ">" + solverSvc + ", />web"
	if got := fxLayout(ing); got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	// The same order again (a resume) changes nothing.
	if changed, err := insertPaths(ing, []Entry{live}, solverSvc, networkingv1.PathTypeExact); err != nil || changed {
		t.Errorf("insert again: changed %v, %v; want no change", changed, err)
	}
}

func TestInsertPathsJournalFormat(t *testing.T) {
	ing := fxIngress("web", "a.example.com")
	ing.Annotations = nil
	if _, err := insertPaths(ing, []Entry{{Secret: "s", Host: "a.example.com", Token: "t"}}, solverSvc, networkingv1.PathTypeExact); err != nil {
		t.Fatal(err)
	}
	var raw []map[string]string
	if err := json.Unmarshal([]byte(ing.Annotations[core.AnnotationChallenges]), &raw); err != nil {
		t.Fatalf("got journal %q, want JSON: %v", ing.Annotations[core.AnnotationChallenges], err)
	}
	want := map[string]string{"secret": "s", "host": "a.example.com", "token": "t"}
	if len(raw) != 1 || len(raw[0]) != 3 || raw[0]["secret"] != want["secret"] || raw[0]["host"] != want["host"] || raw[0]["token"] != want["token"] {
		t.Errorf("got %v, want [%v]", raw, want)
	}
}

func TestInsertPathsUnparsableJournal(t *testing.T) {
	for _, journal := range []string{"{", "not json", `{"secret":"s"}`, `[{"secret":1}]`} {
		t.Run(journal, func(t *testing.T) {
			ing := fxAnnotate(fxIngress("web", "a.example.com"), core.AnnotationChallenges, journal)
			before := ing.DeepCopy()
			changed, err := insertPaths(ing, []Entry{{Secret: "s", Host: "a.example.com", Token: "t"}}, solverSvc, networkingv1.PathTypeExact)
			if err == nil {
				t.Errorf("got nil, want an error")
			}
			if changed {
				t.Errorf("got changed, want false")
			}
			if !equality.Semantic.DeepEqual(before, ing) {
				t.Errorf("got %s / %v, want the Ingress as it was", fxLayout(ing), ing.Annotations)
			}
		})
	}
}

func TestRemovePathsRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		ing     func() *networkingv1.Ingress
		entries []Entry
	}{
		{name: "into an existing rule", ing: func() *networkingv1.Ingress { return fxIngress("web", "a.example.com") },
			entries: []Entry{{Secret: "s", Host: "a.example.com", Token: "t"}}},
		{name: "appended rule", ing: func() *networkingv1.Ingress { return fxIngress("web", "a.example.com") },
			entries: []Entry{{Secret: "s", Host: "new.example.com", Token: "t"}}},
		{name: "several hosts and tokens", ing: func() *networkingv1.Ingress {
			ing := fxIngress("web", "a.example.com", "b.example.com")
			ing.Spec.Rules = append(ing.Spec.Rules, fxRule("a.example.com", "/more"))
			return ing
		}, entries: []Entry{
			{Secret: "s", Host: "a.example.com", Token: "t1"},
			{Secret: "s", Host: "b.example.com", Token: "t2"},
			{Secret: "s", Host: "c.example.com", Token: "t3"},
			{Secret: "s", Host: "a.example.com", Token: "t4"},
		}},
		{name: "no annotations before", ing: func() *networkingv1.Ingress {
			ing := fxIngress("web", "a.example.com")
			ing.Annotations = nil
			return ing
		}, entries: []Entry{{Secret: "s", Host: "a.example.com", Token: "t"}}},
	}
	for _, tt := range tests {
		for _, secret := range []string{"s", ""} {
			t.Run(tt.name+" secret="+secret, func(t *testing.T) {
				ing := tt.ing()
				orig := ing.DeepCopy()
				if _, err := insertPaths(ing, tt.entries, solverSvc, networkingv1.PathTypeExact); err != nil {
					t.Fatal(err)
				}
				if !removePaths(ing, secret, solverSvc) {
					t.Errorf("got changed false, want true")
				}
				if !equality.Semantic.DeepEqual(orig.Spec, ing.Spec) {
					t.Errorf("got layout %s, want %s", fxLayout(ing), fxLayout(orig))
				}
				if _, ok := ing.Annotations[core.AnnotationChallenges]; ok {
					t.Errorf("got journal %q, want it gone", ing.Annotations[core.AnnotationChallenges])
				}
				if !equality.Semantic.DeepEqual(orig.Annotations, ing.Annotations) {
					t.Errorf("got annotations %v, want %v", ing.Annotations, orig.Annotations)
				}
				// Idempotent.
				if removePaths(ing, secret, solverSvc) {
					t.Errorf("again: got changed true, want false")
				}
				if !equality.Semantic.DeepEqual(orig.Spec, ing.Spec) {
					t.Errorf("again: got layout %s, want %s", fxLayout(ing), fxLayout(orig))
				}
			})
		}
	}
}

func TestRemovePathsKeepsOthers(t *testing.T) {
	ours := Entry{Secret: "x-tls", Host: "a.example.com", Token: "tx"}
	oursNewHost := Entry{Secret: "x-tls", Host: "n.example.com", Token: "tx2"}
	theirs := Entry{Secret: "y-tls", Host: "a.example.com", Token: "ty"}

	setup := func(t *testing.T) *networkingv1.Ingress {
		t.Helper()
		ing := fxIngress("web", "a.example.com")
		if _, err := insertPaths(ing, []Entry{ours, oursNewHost, theirs}, solverSvc, networkingv1.PathTypeExact); err != nil {
			t.Fatal(err)
		}
		return ing
	}

	t.Run("other certificate's entries", func(t *testing.T) {
		ing := setup(t)
		if !removePaths(ing, "x-tls", solverSvc) {
			t.Errorf("got changed false, want true")
		}
		want := "a.example.com: " + chal("ty") + ">" + solverSvc + ", />web"
		if got := fxLayout(ing); got != want {
			t.Errorf("got %s, want %s", got, want)
		}
		if got := fxJournal(t, ing); !slices.Equal(got, []Entry{theirs}) {
			t.Errorf("got journal %v, want [%v]", got, theirs)
		}
	})

	t.Run("a path the user added after insertion, in our appended rule", func(t *testing.T) {
		ing := setup(t)
		// The user adds a path to the rule we appended for n.example.com.
		for i := range ing.Spec.Rules {
			if ing.Spec.Rules[i].Host == "n.example.com" {
				ing.Spec.Rules[i].HTTP.Paths = append(ing.Spec.Rules[i].HTTP.Paths, fxRule("", "/user").HTTP.Paths[0])
			}
		}
		removePaths(ing, "", solverSvc)
		want := "a.example.com: />web; n.example.com: /user>web"
		if got := fxLayout(ing); got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	})

	t.Run("user edits elsewhere", func(t *testing.T) {
		ing := setup(t)
		ing.Spec.Rules = append(ing.Spec.Rules, fxRule("later.example.com", "/"))
		ing.Spec.Rules[0].HTTP.Paths = append(ing.Spec.Rules[0].HTTP.Paths, fxRule("", "/added").HTTP.Paths[0])
		ing.Annotations["user"] = "note"
		removePaths(ing, "", solverSvc)
		want := "a.example.com: />web, /added>web; later.example.com: />web"
		if got := fxLayout(ing); got != want {
			t.Errorf("got %s, want %s", got, want)
		}
		if ing.Annotations["user"] != "note" || ing.Annotations[core.AnnotationTLSACME] != "true" {
			t.Errorf("got annotations %v, want the user's kept", ing.Annotations)
		}
	})

	t.Run("challenge paths not in the journal", func(t *testing.T) {
		ing := setup(t)
		r := &ing.Spec.Rules[0]
		// A challenge path of another solver, and one to our Service that we did
		// not journal (e.g. the user copied it): both are the user's.
		other := fxRule("", chal("foreign")).HTTP.Paths[0]
		copied := fxRule("", chal("copied")).HTTP.Paths[0]
		copied.Backend.Service.Name = solverSvc
		r.HTTP.Paths = append(r.HTTP.Paths, other, copied)
		removePaths(ing, "", solverSvc)
		want := "a.example.com: />web, " + chal("foreign") + ">web, " + chal("copied") + ">" + solverSvc
		if got := fxLayout(ing); got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	})

	t.Run("journalled token on another host is not ours there", func(t *testing.T) {
		ing := setup(t)
		p := fxRule("", chal("tx")).HTTP.Paths[0]
		p.Backend.Service.Name = solverSvc
		ing.Spec.Rules = append(ing.Spec.Rules, networkingv1.IngressRule{Host: "b.example.com",
			IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{Paths: []networkingv1.HTTPIngressPath{p}}}})
		removePaths(ing, "", solverSvc)
		want := "a.example.com: />web; b.example.com: " + chal("tx") + ">" + solverSvc
		if got := fxLayout(ing); got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	})

	t.Run("journalled path routed elsewhere by the user is kept", func(t *testing.T) {
		ing := setup(t)
		for _, p := range ing.Spec.Rules[0].HTTP.Paths {
			if p.Path == chal("tx") {
				p.Backend.Service.Name = "web"
			}
		}
		removePaths(ing, "x-tls", solverSvc)
		want := "a.example.com: " + chal("ty") + ">" + solverSvc + ", " + chal("tx") + ">web, />web"
		if got := fxLayout(ing); got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	})

	t.Run("unknown secret changes nothing", func(t *testing.T) {
		ing := setup(t)
		before := ing.DeepCopy()
		if removePaths(ing, "z-tls", solverSvc) {
			t.Errorf("got changed true, want false")
		}
		if !equality.Semantic.DeepEqual(before, ing) {
			t.Errorf("got %s, want it unchanged", fxLayout(ing))
		}
	})
}

func TestRemovePathsNoJournal(t *testing.T) {
	ing := fxIngress("web", "a.example.com")
	p := fxRule("", chal("t")).HTTP.Paths[0]
	p.Backend.Service.Name = solverSvc
	ing.Spec.Rules[0].HTTP.Paths = append(ing.Spec.Rules[0].HTTP.Paths, p)
	before := ing.DeepCopy()
	if removePaths(ing, "", solverSvc) {
		t.Errorf("got changed true, want false")
	}
	if !equality.Semantic.DeepEqual(before, ing) {
		t.Errorf("got %s, want it unchanged: without a journal nothing is ours", fxLayout(ing))
	}
}

func TestRemovePathsUnparsableJournal(t *testing.T) {
	ing := fxIngress("web", "a.example.com")
	if _, err := insertPaths(ing, []Entry{
		{Secret: "x-tls", Host: "a.example.com", Token: "t1"},
		{Secret: "y-tls", Host: "b.example.com", Token: "t2"},
	}, solverSvc, networkingv1.PathTypeExact); err != nil {
		t.Fatal(err)
	}
	// Another solver's challenge path and a user's path stay.
	ing.Spec.Rules[0].HTTP.Paths = append(ing.Spec.Rules[0].HTTP.Paths, fxRule("", chal("other")).HTTP.Paths[0])
	ing.Annotations[core.AnnotationChallenges] = "[{broken"

	if !removePaths(ing, "x-tls", solverSvc) {
		t.Errorf("got changed false, want true")
	}
	want := "a.example.com: />web, " + chal("other") + ">web"
	if got := fxLayout(ing); got != want {
		t.Errorf("got %s, want %s (every challenge path to our Service removed)", got, want)
	}
	if _, ok := ing.Annotations[core.AnnotationChallenges]; ok {
		t.Errorf("got journal %q, want it removed", ing.Annotations[core.AnnotationChallenges])
	}
	if removePaths(ing, "x-tls", solverSvc) {
		t.Errorf("again: got changed true, want false")
	}
}

func TestRemovePathsHostCase(t *testing.T) {
	ing := fxIngress("web", "A.Example.COM")
	if _, err := insertPaths(ing, []Entry{{Secret: "s", Host: "a.example.com", Token: "t"}}, solverSvc, networkingv1.PathTypeExact); err != nil {
		t.Fatal(err)
	}
	removePaths(ing, "s", solverSvc)
	if got, want := fxLayout(ing), "A.Example.COM: />web"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
