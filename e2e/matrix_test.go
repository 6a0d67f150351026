package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// pathTypeAnnotation chooses the pathType of the challenge paths we insert.
const pathTypeAnnotation = "ingress-acme.io/path-type"

// redirectAnnotations make an Ingress redirect HTTP to HTTPS on each data plane,
// the way its users write it. skipper has none the testbed can exercise: its
// redirect (zalando.org/skipper-ingress-redirect, on by default) acts on the
// X-Forwarded-Proto header of the load balancer it expects in front of it.
var redirectAnnotations = map[string]map[string]string{
	testbed.DataPlaneTraefik:      {"traefik.ingress.kubernetes.io/router.middlewares": "redirect-to-https@file"},
	testbed.DataPlaneTraefikNGINX: {"nginx.ingress.kubernetes.io/ssl-redirect": "true", "nginx.ingress.kubernetes.io/force-ssl-redirect": "true"},
	testbed.DataPlaneHAProxy:      {"haproxy-ingress.github.io/ssl-redirect": "true"},
}

// knownFailures are the cases a data plane fails, each with what the
// controller's self-check must say about it (the README's compatibility table
// lists them with the setting that avoids them). The case checks exactly that:
// no certificate, and that diagnosis.
var knownFailures = map[string]string{
	// skipper makes an ImplementationSpecific path a regular expression
	// route, which its own Prefix route for / outranks.
	testbed.DataPlaneSkipper + "/PathType/ImplementationSpecific": "answers the same: the app's own path catches the challenge path",
	// Traefik's kubernetesIngressNGINX provider drops an Ingress whose
	// spec.tls names a Secret that does not exist yet (ingress-nginx serves it
	// with its default certificate).
	testbed.DataPlaneTraefikNGINX + "/Redirect": "answers the same: the Ingress is not served at all",
}

// matrixPlane is one data plane's share of TestMatrix: a namespace with its
// controller and backend, and Ingresses of the data plane's class.
type matrixPlane struct {
	dp  *testbed.DataPlane
	ns  string
	ctl *controller
}

// knownFailure returns the diagnosis expected for case name on this data
// plane, "" when the case must succeed.
func (m *matrixPlane) knownFailure(name string) string {
	return knownFailures[m.dp.Name+"/"+name]
}

// expectFailure waits until the controller gives up on Secret secret with a
// self-check error containing want, and checks that no Secret was written.
func (m *matrixPlane) expectFailure(t *testing.T, secret, want string) {
	t.Helper()
	key := m.ns + "/" + secret
	waitFor(t, 90*time.Second, "self-check failure for "+key+" saying "+want, func() (bool, string) {
		last := "no failure logged"
		for _, rec := range m.ctl.logs() {
			if rec["secret"] != key {
				continue
			}
			if err, _ := rec["err"].(string); strings.HasPrefix(err, "self-check ") {
				if strings.Contains(err, want) {
					t.Logf("as expected: %s", err)
					return true, ""
				}
				last = err
			}
		}
		return false, last
	})
	if s := getSecret(t, m.ns, secret); s != nil {
		t.Errorf("Secret %s written, want none", key)
	}
}

// ingress is an Ingress of this data plane's class for hosts, routed there.
func (m *matrixPlane) ingress(t *testing.T, name string, acme bool, hosts ...string) *networkingv1.Ingress {
	t.Helper()
	if err := bed.Route(context.Background(), m.dp, hosts...); err != nil {
		t.Fatal(err)
	}
	ing := newIngress(m.ns, name, "web", acme, hosts...)
	ing.Spec.IngressClassName = &m.dp.Class
	return ing
}

// TestMatrix runs the promise on every data plane (testbed.DataPlanes), each on
// its own loopback address with its own IngressClass and one controller: the
// core issuance, zero downtime across issuance and renewal, each challenge
// pathType, and an Ingress that already redirects HTTP to HTTPS. The data
// planes start on first use, so other tests pay nothing for them. Cases run
// concurrently (they wait on the CA and the renewal clock, not on the CPU).
func TestMatrix(t *testing.T) {
	t.Parallel()
	runConcurrently(t, testbed.DataPlanes(), func(t *testing.T, name string) {
		dp, err := bed.DataPlane(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		m := &matrixPlane{dp: dp, ns: newNamespace(t)}
		// The self-check goes where the CA goes: the data plane's address (port
		// 80 there, and 443 for a redirect to HTTPS).
		m.ctl = startController(t, m.ns, "--self-check-address", dp.HTTP)
		startBackend(t, m.ns, "web")
		cases := map[string]func(*testing.T){
			"Issue":        m.testIssue,
			"ZeroDowntime": m.testZeroDowntime,
			"Redirect":     m.testRedirect,
		}
		for _, pt := range []networkingv1.PathType{networkingv1.PathTypeExact, networkingv1.PathTypePrefix, networkingv1.PathTypeImplementationSpecific} {
			cases["PathType/"+string(pt)] = func(t *testing.T) { m.testPathType(t, pt) }
		}
		names := make([]string, 0, len(cases))
		for n := range cases {
			names = append(names, n)
		}
		runConcurrently(t, names, func(t *testing.T, n string) { cases[n](t) })
	})
}

// runConcurrently runs f for each name as a subtest, all at once (subtests
// started from goroutines, not t.Parallel, so that -parallel, which defaults to
// the number of CPUs, does not serialize cases that mostly wait).
func runConcurrently(t *testing.T, names []string, f func(t *testing.T, name string)) {
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Go(func() { t.Run(n, func(t *testing.T) { f(t, n) }) })
	}
	wg.Wait()
}

// Two hosts, no spec.tls: one certificate for both, spec.tls added, served by
// the data plane, and the rules left as they were.
func (m *matrixPlane) testIssue(t *testing.T) {
	a, b := host(m.ns, "issue-a"), host(m.ns, "issue-b")
	created := createIngress(t, m.ingress(t, "issue", true, a, b))
	_, leaf := waitCertificate(t, m.ns, "issue-tls", 90*time.Second, a, b)
	waitFor(t, 10*time.Second, "spec.tls added", func() (bool, string) {
		names := tlsNames(getIngress(t, m.ns, "issue"))
		want := "issue-tls:" + strings.Join(slices.Sorted(slices.Values([]string{a, b})), ",")
		return len(names) == 1 && names[0] == want, fmt.Sprintf("%v, want [%s]", names, want)
	})
	assertClean(t, getIngress(t, m.ns, "issue"), created.Spec.Rules)
	waitServed(t, a, leaf, 20*time.Second)
	waitServed(t, b, leaf, 20*time.Second)
}

// Every request to the app's own path succeeds, over HTTP and (once served)
// HTTPS, while the Ingress opts in, gets its certificate, and has it renewed.
func (m *matrixPlane) testZeroDowntime(t *testing.T) {
	h := host(m.ns, "live")
	ing := m.ingress(t, "live", false, h)
	ing.Annotations[profileAnnotation] = "shortlived"
	createIngress(t, ing)
	waitHTTP(t, h)

	p := startProber(t, h)
	time.Sleep(200 * time.Millisecond) // requests before the opt-in
	updateIngress(t, m.ns, "live", func(i *networkingv1.Ingress) { i.Annotations["kubernetes.io/tls-acme"] = "true" })
	sec, leaf := waitCertificate(t, m.ns, "live-tls", 90*time.Second, h)
	waitServed(t, h, leaf, 20*time.Second)
	p.https.Store(true)

	renewedSec, renewed := waitRenewed(t, m.ns, "live-tls", leaf, 3*shortLived, h)
	if renewedSec.UID != sec.UID {
		t.Errorf("renewal replaced the Secret (uid %s -> %s), want an update in place", sec.UID, renewedSec.UID)
	}
	waitServed(t, h, renewed, 20*time.Second)
	time.Sleep(200 * time.Millisecond) // requests after the renewal is served
	p.check(t)
}

// The challenge path with the given pathType answers through the data plane:
// the certificate is issued and served, and the rules are left as they were.
func (m *matrixPlane) testPathType(t *testing.T, pt networkingv1.PathType) {
	name := "pt-" + strings.ToLower(string(pt))
	h := host(m.ns, name)
	ing := m.ingress(t, name, true, h)
	ing.Annotations[pathTypeAnnotation] = string(pt)
	created := createIngress(t, ing)
	if want := m.knownFailure("PathType/" + string(pt)); want != "" {
		m.expectFailure(t, name+"-tls", want)
		return
	}
	_, leaf := waitCertificate(t, m.ns, name+"-tls", 90*time.Second, h)
	waitFor(t, 10*time.Second, "challenge paths removed", func() (bool, string) {
		ing := getIngress(t, m.ns, name)
		_, journal := ing.Annotations[journalAnnotation]
		return !journal && len(ing.Spec.TLS) == 1, fmt.Sprintf("journal %v, tls %v", journal, tlsNames(ing))
	})
	assertClean(t, getIngress(t, m.ns, name), created.Spec.Rules)
	waitServed(t, h, leaf, 20*time.Second)
}

// An Ingress that already redirects HTTP to HTTPS (with spec.tls naming a
// Secret that does not exist yet) gets its certificate: the CA follows the
// redirect as RFC 8555 8.3 allows, or the data plane exempts the challenge
// path; the redirect of the app's own path stays.
func (m *matrixPlane) testRedirect(t *testing.T) {
	ann, ok := redirectAnnotations[m.dp.Name]
	if !ok {
		t.Skipf("%s: its HTTPS redirect needs X-Forwarded-Proto from a load balancer in front, which the testbed does not have", m.dp.Name)
	}
	if !m.dp.HTTPS443 {
		t.Skipf("%s serves HTTPS on %s, not port 443 (this process may not bind it): a redirect to https://host/ cannot be followed here", m.dp.Name, m.dp.HTTPS)
	}
	h := host(m.ns, "redirect")
	ing := m.ingress(t, "redirect", true, h)
	for k, v := range ann {
		ing.Annotations[k] = v
	}
	ing.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{h}, SecretName: "redirect-tls"}}
	created := createIngress(t, ing)
	if want := m.knownFailure("Redirect"); want != "" {
		m.expectFailure(t, "redirect-tls", want)
		return
	}
	waitFor(t, 20*time.Second, "GET http://"+h+"/ redirected to HTTPS", func() (bool, string) {
		loc, code, err := redirectOf(h)
		if err != nil {
			return false, err.Error()
		}
		return code/100 == 3 && strings.HasPrefix(loc, "https://"+h), fmt.Sprintf("status %d, Location %q", code, loc)
	})
	_, leaf := waitCertificate(t, m.ns, "redirect-tls", 90*time.Second, h)
	waitServed(t, h, leaf, 20*time.Second)
	waitFor(t, 10*time.Second, "challenge paths removed", func() (bool, string) {
		_, journal := getIngress(t, m.ns, "redirect").Annotations[journalAnnotation]
		return !journal, "journal still there"
	})
	assertClean(t, getIngress(t, m.ns, "redirect"), created.Spec.Rules)
	if loc, code, err := redirectOf(h); err != nil || code/100 != 3 || !strings.HasPrefix(loc, "https://"+h) {
		t.Errorf("after issuance GET http://%s/: got status %d, Location %q (%v), want the redirect to HTTPS kept", h, code, loc, err)
	}
}

// redirectOf GETs http://h/ through its data plane without following redirects.
func redirectOf(h string) (location string, status int, err error) {
	c := bed.HTTPClient(h)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Get("http://" + h + "/")
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.Header.Get("Location"), resp.StatusCode, nil
}
