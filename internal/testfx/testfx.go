// Package testfx holds the fixtures that the unit tests of the engine, the
// Ingress source and the Ingress solver share: Ingresses as users write them,
// and a challenge server that records what it answers. Tests only.
package testfx

import (
	"maps"
	"sync"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ingress-acme/ingress-acme/core"
)

// Ingress is an opted-in Ingress in namespace "ns" with a rule for each host,
// each routing "/" to the user's Service "web".
func Ingress(name string, ruleHosts ...string) *networkingv1.Ingress {
	ing := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{
		Namespace:   "ns",
		Name:        name,
		Annotations: map[string]string{core.AnnotationTLSACME: "true"},
	}}
	for _, h := range ruleHosts {
		ing.Spec.Rules = append(ing.Spec.Rules, Rule(h, "/"))
	}
	return ing
}

// Rule is a rule for host routing each of paths (Prefix) to Service "web".
func Rule(host string, paths ...string) networkingv1.IngressRule {
	pt := networkingv1.PathTypePrefix
	r := networkingv1.IngressRule{Host: host, IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{}}}
	for _, p := range paths {
		r.HTTP.Paths = append(r.HTTP.Paths, networkingv1.HTTPIngressPath{
			Path:     p,
			PathType: &pt,
			Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
				Name: "web", Port: networkingv1.ServiceBackendPort{Number: 80},
			}},
		})
	}
	return r
}

// TLS adds a spec.tls entry to ing and returns it.
func TLS(ing *networkingv1.Ingress, secret string, hosts ...string) *networkingv1.Ingress {
	ing.Spec.TLS = append(ing.Spec.TLS, networkingv1.IngressTLS{SecretName: secret, Hosts: hosts})
	return ing
}

// Annotate sets annotations on ing, given as key, value pairs, and returns it.
func Annotate(ing *networkingv1.Ingress, kv ...string) *networkingv1.Ingress {
	if ing.Annotations == nil {
		ing.Annotations = map[string]string{}
	}
	for i := 0; i+1 < len(kv); i += 2 {
		ing.Annotations[kv[i]] = kv[i+1]
	}
	return ing
}

// Challenges is a challenge server that records the tokens it answers. Safe
// for concurrent use.
type Challenges struct {
	// mu guards live.
	mu   sync.Mutex
	live map[string]string // token -> key authorization
}

// NewChallenges answers no token yet.
func NewChallenges() *Challenges { return &Challenges{live: map[string]string{}} }

// Present answers token with keyAuth.
func (c *Challenges) Present(_, token, keyAuth string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.live[token] = keyAuth
}

// Remove stops answering token.
func (c *Challenges) Remove(token string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.live, token)
}

// WaitLive waits until c answers exactly want (token -> key authorization),
// for 5 s at most.
func (c *Challenges) WaitLive(t *testing.T, want map[string]string, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		got := maps.Clone(c.live)
		c.mu.Unlock()
		if maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: challenge server answers %v, want %v", what, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
