package e2e

import (
	"context"
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
	cs := quietClient(t)

	// The CA's validation requests go through the gate to Traefik.
	gate, err := testbed.NewGate(bed.IngressHTTP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gate.Close)
	ca, roots := startCA(t, ns, testbed.CAOptions{HTTPPort: gate.Port()})
	proxy := newCAProxy(t, ca.Directory)

	free, err := testbed.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	_, p, _ := net.SplitHostPort(free)
	port, _ := strconv.Atoi(p)
	const addrA, addrB = "127.0.0.2", "127.0.0.3"
	createPeers(t, cs, ns, port, addrA, addrB)

	replica := func(addr, id string, extra ...string) *controller {
		return newController(t, ns, append([]string{
			"--acme-directory", proxy.Directory,
			"--challenge-addr", net.JoinHostPort(addr, p),
			"--solver-address", addr,
			"--solver-peers-service", peersService,
			"--leader-election-id", id,
		}, extra...)...)
	}
	a := replica(addrA, "replica-a", "--crash-at", "validating")
	b := replica(addrB, "replica-b")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replica A's process ran from %s, replica B's from %s; the controller logs below are B's, then A's", a.Dir, b.Dir)
		}
	})

	a.start()
	waitFor(t, 20*time.Second, "replica A to lead", func() (bool, string) {
		return a.count("leading") == 1, "not leading yet"
	})
	lease, err := bed.Client().CoordinationV1().Leases(ns).Get(context.Background(), "ingress-acme", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if holder := lease.Spec.HolderIdentity; holder == nil || *holder != "replica-a" {
		t.Fatalf("Lease holder: got %v, want replica-a", holder)
	}
	b.start()

	h := host(ns, "failover")
	const secret = "failover-tls"
	ing := newIngress(ns, "failover", "web", true, h)
	ing.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{h}, SecretName: secret}}
	created := createIngress(t, ing)

	if code := a.Wait(60 * time.Second); code != -1 || a.Running() {
		t.Fatalf("replica A did not die at validating (exit %d, running %v)", code, a.Running())
	}
	died := time.Now()
	if a.count("crash-at fault point", "point", "validating") != 1 {
		t.Fatal("replica A logged no crash at validating")
	}

	// What A journalled: one entry, with its key authorization and order.
	raw := getIngress(t, ns, "failover").Annotations[journalAnnotation]
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
	path := challengePrefix + entry.Token

	// B, a follower, answers the token from its own challenge server.
	direct := &http.Client{Timeout: 2 * time.Second}
	last := ""
	if !waitUntil(2*time.Second, func() bool {
		code, body, err := getChallenge(direct, "http://"+net.JoinHostPort(addrB, p)+path, h)
		last = fmt.Sprintf("status %d, body %q, err %v", code, body, err)
		return err == nil && code == http.StatusOK && body == entry.KeyAuth
	}) {
		t.Fatalf("replica B (follower) at %s:%s: want 200 with the journalled key authorization %q, got %s", addrB, p, entry.KeyAuth, last)
	}
	if n := b.count("leading"); n != 0 {
		t.Fatalf("replica B led %d times before A's Lease could expire", n)
	}

	// The solver EndpointSlice lists both replicas, until Kubernetes marks A
	// not ready: then B rewrites it to list itself only.
	waitSolverEndpoints(t, ns, port, []string{addrA, addrB}, 2*time.Second)
	peerDied(t, cs, ns, addrA)
	waitSolverEndpoints(t, ns, port, []string{addrB}, 5*time.Second)

	// Through Traefik the challenge answers, 5 times in a row (Traefik no
	// longer sends any request to A).
	viaTraefik := bed.HTTPClient(h)
	viaTraefik.Timeout = 2 * time.Second
	streak := 0
	if !waitUntil(6*time.Second, func() bool {
		code, body, err := getChallenge(viaTraefik, "http://"+h+path, h)
		if err == nil && code == http.StatusOK && body == entry.KeyAuth {
			streak++
		} else {
			streak = 0
			last = fmt.Sprintf("status %d, body %q, err %v", code, body, err)
		}
		return streak >= 5
	}) {
		t.Fatalf("%s through Traefik: not 5 answers in a row with the key authorization; last failure: %s", path, last)
	}

	// The CA's validation was under way while A died: its requests wait at the
	// gate (Pebble gives each 15 s).
	if !waitUntil(2*time.Second, func() bool { return gate.Accepted() > 0 }) {
		t.Fatal("the CA sent no validation request to the gate")
	}
	if n := b.count("leading"); n != 0 {
		t.Fatalf("replica B led before the gate opened (%.1f s after A died): the CA's requests would not test a follower", time.Since(died).Seconds())
	}
	held := gate.Accepted()
	t.Logf("%.2f s after A died: B serves the token, the solver slice lists B only, Traefik answers; opening the gate on %d held connections",
		time.Since(died).Seconds(), held)
	gate.Open()
	opened := time.Now()

	// B takes over, resumes A's order and issues the certificate.
	waitFor(t, 60*time.Second, "replica B to lead", func() (bool, string) {
		return b.count("leading") == 1, "not leading yet"
	})
	led := time.Since(opened)
	waitCertificateFrom(t, roots, ns, secret, time.Until(opened.Add(60*time.Second)), h)
	waitRestored(t, created)
	if got, want := tlsNames(getIngress(t, ns, "failover")), []string{secret + ":" + h}; !slices.Equal(got, want) {
		t.Errorf("spec.tls: got %v, want %v", got, want)
	}
	waitServedFrom(t, roots, h, 10*time.Second)
	t.Logf("B led %.1f s after the gate opened; certificate issued and served %.1f s after", led.Seconds(), time.Since(opened).Seconds())

	if n := proxy.Orders(); n != 1 {
		t.Errorf("orders the CA created: got %d, want 1 (B resumes A's order)\n%s", n, proxy.Summary())
	}
	if n := a.orders(); n != 1 {
		t.Errorf("orders created by A: got %d, want 1", n)
	}
	if n := b.orders(); n != 0 {
		t.Errorf("orders created by B: got %d, want 0", n)
	}
	if n := b.count("order resumed", "order", entry.Order); n != 1 {
		t.Errorf("B's log: %d \"order resumed\" records for %s, want 1", n, entry.Order)
	}
	if n := gate.Accepted(); n < 1 {
		t.Errorf("the gate accepted %d connections: the CA validated some other way", n)
	}
}
