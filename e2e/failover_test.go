package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// peersService is the Service whose EndpointSlices list the controller
// replicas (--solver-peers-service).
const peersService = "ingress-acme-peers"

// journalEntry is one entry of the challenge journal on an Ingress.
type journalEntry struct {
	Secret  string `json:"secret"`
	Host    string `json:"host"`
	Token   string `json:"token"`
	Order   string `json:"order"`
	KeyAuth string `json:"keyAuth"`
}

// quietClient is an admin client that drops the API server's warnings (FQDN
// EndpointSlices draw a deprecation warning on every write).
func quietClient(t *testing.T) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(bed.AdminConfig)
	cfg.WarningHandler = rest.NoWarnings{}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// createPeers creates in ns the Service peersService and its EndpointSlice,
// listing addrs as ready endpoints on port. It stands in for Kubernetes'
// EndpointSlice controller, which would keep that slice for the Deployment's
// Service: the testbed has no kubelet and no pods, so the test writes what
// Kubernetes would, FQDN addresses since IPv4 slices refuse 127.0.0.0/8.
func createPeers(t *testing.T, cs kubernetes.Interface, ns string, port int, addrs ...string) {
	t.Helper()
	ctx := context.Background()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: peersService, Namespace: ns},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: "challenge", Protocol: corev1.ProtocolTCP, Port: int32(port),
		}}},
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	name, proto, p32 := "challenge", corev1.ProtocolTCP, int32(port)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      peersService,
			Namespace: ns,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: peersService,
				discoveryv1.LabelManagedBy:   "e2e.ingress-acme",
			},
		},
		AddressType: discoveryv1.AddressTypeFQDN,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &p32}},
	}
	for _, a := range addrs {
		yes := true
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{a},
			Conditions: discoveryv1.EndpointConditions{Ready: &yes, Serving: &yes},
		})
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// peerDied marks addr not ready (and not serving) in the peers' EndpointSlice,
// as Kubernetes does when the pod behind it dies.
func peerDied(t *testing.T, cs kubernetes.Interface, ns, addr string) {
	t.Helper()
	api := cs.DiscoveryV1().EndpointSlices(ns)
	sl, err := api.Get(context.Background(), peersService, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !markNotServing(sl, addr) {
		t.Fatalf("no endpoint %s in EndpointSlice %s", addr, peersService)
	}
	if _, err := api.Update(context.Background(), sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// solverEndpoints describes ns's solver EndpointSlice: the addresses of its
// ready endpoints (no condition counts as ready), sorted, and its ports.
func solverEndpoints(ns string) (ready []string, ports []int32, err error) {
	sl, err := bed.Client().DiscoveryV1().EndpointSlices(ns).Get(context.Background(), solverService, metav1.GetOptions{})
	if err != nil {
		return nil, nil, err
	}
	for _, e := range sl.Endpoints {
		if e.Conditions.Ready == nil || *e.Conditions.Ready {
			ready = append(ready, e.Addresses...)
		}
	}
	for _, p := range sl.Ports {
		if p.Port != nil {
			ports = append(ports, *p.Port)
		}
	}
	slices.Sort(ready)
	return ready, ports, nil
}

// waitSolverEndpoints waits until ns's solver EndpointSlice has exactly want
// (sorted) as ready addresses, on port.
func waitSolverEndpoints(t *testing.T, ns string, port int, want []string, timeout time.Duration) {
	t.Helper()
	last := ""
	ok := waitUntil(timeout, func() bool {
		ready, ports, err := solverEndpoints(ns)
		if err != nil {
			last = err.Error()
			return false
		}
		last = fmt.Sprintf("ready %v, ports %v", ready, ports)
		return slices.Equal(ready, want) && slices.Equal(ports, []int32{int32(port)})
	})
	if !ok {
		t.Fatalf("solver EndpointSlice %s/%s: want ready %v on port %d within %s, got %s", ns, solverService, want, port, timeout, last)
	}
}

// getChallenge GETs url with Host h and returns the status and body.
func getChallenge(c *http.Client, url, h string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	req.Host = h
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Two replicas share the HTTP-01 work: the leader, A, dies (SIGKILL) right
// after it told the CA to validate, while the CA's validation requests are
// held at a gate in front of Traefik. Replica B, still a follower, already
// answers the journalled token; once the replicas' EndpointSlice marks A not
// ready, B rewrites the solver EndpointSlice to list only itself, and the
// challenge answers through Traefik. Then the gate opens: the CA validates
// against B, B takes over the Lease, resumes A's order (the CA sees no second
// order) and issues the certificate, leaving the Ingress as the user wrote it.
func TestFailoverMidChallenge(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	r := newFailoverReplicas(t, ns)
	r.startALeading(t)

	h := host(ns, "failover")
	const secret = "failover-tls"
	ing := newIngress(ns, "failover", "web", true, h)
	ing.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{h}, SecretName: secret}}
	created := createIngress(t, ing)

	died := r.waitACrashedValidating(t)
	entry := journalled(t, ns, "failover", h, secret)
	path := challengePrefix + entry.Token
	r.checkFollowerAnswers(t, path, h, entry.KeyAuth)

	// The solver EndpointSlice lists both replicas, until Kubernetes marks A
	// not ready: then B rewrites it to list itself only.
	waitSolverEndpoints(t, ns, r.port, []string{r.addrA, r.addrB}, 2*time.Second)
	peerDied(t, r.cs, ns, r.addrA)
	waitSolverEndpoints(t, ns, r.port, []string{r.addrB}, 5*time.Second)

	waitTraefikAnswers(t, path, h, entry.KeyAuth)
	opened := r.openGateOnHeldValidation(t, died)

	// B takes over, resumes A's order and issues the certificate.
	waitFor(t, 60*time.Second, "replica B to lead", func() (bool, string) {
		return r.b.count("leading") == 1, "not leading yet"
	})
	led := time.Since(opened)
	waitCertificateFrom(t, r.roots, ns, secret, time.Until(opened.Add(60*time.Second)), h)
	waitRestored(t, created)
	if got, want := tlsNames(getIngress(t, ns, "failover")), []string{secret + ":" + h}; !slices.Equal(got, want) {
		t.Errorf("spec.tls: got %v, want %v", got, want)
	}
	waitServedFrom(t, r.roots, h, 10*time.Second)
	t.Logf("B led %.1f s after the gate opened; certificate issued and served %.1f s after", led.Seconds(), time.Since(opened).Seconds())
	r.checkOneOrderResumed(t, entry.Order)
}

// failoverReplicas is TestFailoverMidChallenge's cluster: a CA of the test's
// own whose validation requests go through a gate to Traefik, a proxy
// counting what the CA is asked, and replicas A (which crashes once it told
// the CA to validate) and B, whose challenge servers listen on the same port
// of their own loopback addresses, both listed in the peers' EndpointSlice.
type failoverReplicas struct {
	ns           string
	cs           kubernetes.Interface
	gate         *testbed.Gate
	roots        *x509.CertPool
	proxy        *testbed.CAProxy
	addrA, addrB string
	port         int
	portText     string
	a, b         *controller
}

func newFailoverReplicas(t *testing.T, ns string) *failoverReplicas {
	t.Helper()
	r := &failoverReplicas{ns: ns, cs: quietClient(t), addrA: "127.0.0.2", addrB: "127.0.0.3"}

	// The CA's validation requests go through the gate to Traefik.
	gate, err := testbed.NewGate(bed.IngressHTTP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gate.Close)
	r.gate = gate
	ca, roots := startCA(t, ns, testbed.CAOptions{HTTPPort: gate.Port()})
	r.roots = roots
	r.proxy = newCAProxy(t, ca.Directory)

	free, err := testbed.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	_, r.portText, _ = net.SplitHostPort(free)
	r.port, _ = strconv.Atoi(r.portText)
	createPeers(t, r.cs, ns, r.port, r.addrA, r.addrB)

	replica := func(addr, id string, extra ...string) *controller {
		return newController(t, ns, append([]string{
			"--acme-directory", r.proxy.Directory,
			"--challenge-addr", net.JoinHostPort(addr, r.portText),
			"--solver-address", addr,
			"--solver-peers-service", peersService,
			"--leader-election-id", id,
		}, extra...)...)
	}
	r.a = replica(r.addrA, "replica-a", "--crash-at", "validating")
	r.b = replica(r.addrB, "replica-b")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replica A's process ran from %s, replica B's from %s; the controller logs below are B's, then A's", r.a.Dir, r.b.Dir)
		}
	})
	return r
}

// startALeading starts A, waits until it holds the Lease, then starts B.
func (r *failoverReplicas) startALeading(t *testing.T) {
	t.Helper()
	r.a.start()
	waitFor(t, 20*time.Second, "replica A to lead", func() (bool, string) {
		return r.a.count("leading") == 1, "not leading yet"
	})
	lease, err := bed.Client().CoordinationV1().Leases(r.ns).Get(context.Background(), "ingress-acme", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if holder := lease.Spec.HolderIdentity; holder == nil || *holder != "replica-a" {
		t.Fatalf("Lease holder: got %v, want replica-a", holder)
	}
	r.b.start()
}

// waitACrashedValidating waits for A to die at its fault point "validating"
// and returns when it was seen dead.
func (r *failoverReplicas) waitACrashedValidating(t *testing.T) time.Time {
	t.Helper()
	if code := r.a.Wait(60 * time.Second); code != -1 || r.a.Running() {
		t.Fatalf("replica A did not die at validating (exit %d, running %v)", code, r.a.Running())
	}
	died := time.Now()
	if r.a.count("crash-at fault point", "point", "validating") != 1 {
		t.Fatal("replica A logged no crash at validating")
	}
	return died
}

// journalled returns the one entry of the journal on Ingress ns/name, which
// must be for host h and Secret secret, with a token, an order and the
// token's key authorization.
func journalled(t *testing.T, ns, name, h, secret string) journalEntry {
	t.Helper()
	raw := getIngress(t, ns, name).Annotations[journalAnnotation]
	var journal []journalEntry
	if err := json.Unmarshal([]byte(raw), &journal); err != nil {
		t.Fatalf("journal %q: %v", raw, err)
	}
	if len(journal) != 1 {
		t.Fatalf("journal: got %d entries, want 1: %s", len(journal), raw)
	}
	entry := journal[0]
	if entry.Host != h || entry.Secret != secret || entry.Token == "" || entry.Order == "" || !strings.HasPrefix(entry.KeyAuth, entry.Token+".") {
		t.Fatalf("journal entry: want host %s, Secret %s, a token, an order and the token's key authorization; got %s", h, secret, raw)
	}
	return entry
}

// checkFollowerAnswers checks that B, a follower, answers the challenge path
// for host h with keyAuth from its own challenge server.
func (r *failoverReplicas) checkFollowerAnswers(t *testing.T, path, h, keyAuth string) {
	t.Helper()
	direct := &http.Client{Timeout: 2 * time.Second}
	last := ""
	if !waitUntil(2*time.Second, func() bool {
		code, body, err := getChallenge(direct, "http://"+net.JoinHostPort(r.addrB, r.portText)+path, h)
		last = fmt.Sprintf("status %d, body %q, err %v", code, body, err)
		return err == nil && code == http.StatusOK && body == keyAuth
	}) {
		t.Fatalf("replica B (follower) at %s:%s: want 200 with the journalled key authorization %q, got %s", r.addrB, r.portText, keyAuth, last)
	}
	if n := r.b.count("leading"); n != 0 {
		t.Fatalf("replica B led %d times before A's Lease could expire", n)
	}
}

// waitTraefikAnswers waits until the challenge path for host h answers
// keyAuth through Traefik 5 times in a row (Traefik no longer sends any
// request to A).
func waitTraefikAnswers(t *testing.T, path, h, keyAuth string) {
	t.Helper()
	viaTraefik := bed.HTTPClient(h)
	viaTraefik.Timeout = 2 * time.Second
	streak := 0
	last := ""
	if !waitUntil(6*time.Second, func() bool {
		code, body, err := getChallenge(viaTraefik, "http://"+h+path, h)
		if err == nil && code == http.StatusOK && body == keyAuth {
			streak++
		} else {
			streak = 0
			last = fmt.Sprintf("status %d, body %q, err %v", code, body, err)
		}
		return streak >= 5
	}) {
		t.Fatalf("%s through Traefik: not 5 answers in a row with the key authorization; last failure: %s", path, last)
	}
}

// openGateOnHeldValidation checks that the CA's validation was under way
// while A died (its requests wait at the gate; Pebble gives each 15 s) and
// that B still does not lead, then opens the gate and returns when.
func (r *failoverReplicas) openGateOnHeldValidation(t *testing.T, died time.Time) time.Time {
	t.Helper()
	if !waitUntil(2*time.Second, func() bool { return r.gate.Accepted() > 0 }) {
		t.Fatal("the CA sent no validation request to the gate")
	}
	if n := r.b.count("leading"); n != 0 {
		t.Fatalf("replica B led before the gate opened (%.1f s after A died): the CA's requests would not test a follower", time.Since(died).Seconds())
	}
	held := r.gate.Accepted()
	t.Logf("%.2f s after A died: B serves the token, the solver slice lists B only, Traefik answers; opening the gate on %d held connections",
		time.Since(died).Seconds(), held)
	r.gate.Open()
	return time.Now()
}

// checkOneOrderResumed checks that the CA created one order, A's, which B
// resumed, and that the CA validated through the gate.
func (r *failoverReplicas) checkOneOrderResumed(t *testing.T, order string) {
	t.Helper()
	if n := r.proxy.Orders(); n != 1 {
		t.Errorf("orders the CA created: got %d, want 1 (B resumes A's order)\n%s", n, r.proxy.Summary())
	}
	if n := r.a.orders(); n != 1 {
		t.Errorf("orders created by A: got %d, want 1", n)
	}
	if n := r.b.orders(); n != 0 {
		t.Errorf("orders created by B: got %d, want 0", n)
	}
	if n := r.b.count("order resumed", "order", order); n != 1 {
		t.Errorf("B's log: %d \"order resumed\" records for %s, want 1", n, order)
	}
	if n := r.gate.Accepted(); n < 1 {
		t.Errorf("the gate accepted %d connections: the CA validated some other way", n)
	}
}
