// Package soak is the randomized life-of-a-cluster soak of ingress-acme on
// the e2e testbed. A schedule of user operations and faults derived from a
// seed alone (schedule.go) is played against two controller replicas
// (soak.go) while probers and pollers check the README's promises all the
// time (check.go), with every order seen from the CA's side (ca.go) and the
// replicas' Service endpoints kept as Kubernetes would (peers.go). TestSoak in
// package e2e runs it; make soak runs TestSoak alone.
package soak

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// Soak settings from the environment (make soak sets them from SEED and DURATION).
const (
	SeedEnv      = "SOAK_SEED"      // schedule seed; default DefaultSeed
	DurationEnv  = "SOAK_DURATION"  // how long the schedule runs; default DefaultDuration
	ExclusiveEnv = "SOAK_EXCLUSIVE" // 1: the soak has the testbed to itself
	RSSEnv       = "SOAK_RSS_MAX_MIB"

	DefaultSeed     = 84
	DefaultDuration = 55 * time.Second
	// soakOrderBudget is the soak's budget of unjustified orders per
	// certificate and hour: the controller's default --max-orders-per-hour.
	soakOrderBudget = 5
	// soakControllerCap is the controller's --max-orders-per-hour in the soak,
	// the suite's (Testbed.ControllerFlags): users who edit an Ingress many
	// times a minute are not throttled, so a certificate that is late is late
	// for another reason.
	soakControllerCap = 50
)

// The controller's annotations and challenge paths, as the README names them.
const (
	profileAnnotation = "ingress-acme.io/profile"
	journalAnnotation = "ingress-acme.io/challenges"
	challengePrefix   = "/.well-known/acme-challenge/"
)

// Config is what a run does: its schedule (Seed, Duration), its memory bound,
// and whether it has the testbed to itself.
type Config struct {
	Seed     uint64
	Duration time.Duration
	// RSSMaxMiB bounds each controller replica's resident memory.
	RSSMaxMiB uint64
	// Exclusive: the soak runs alone, so it may restart the shared
	// kube-apiserver and watch every namespace. Beside other tests it cuts only
	// the controller's own connection to the API server and watches one
	// namespace.
	Exclusive bool
}

// ConfigFromEnv reads SeedEnv, DurationEnv and RSSEnv (each has a default);
// Exclusive is left false.
func ConfigFromEnv() (Config, error) {
	cfg := Config{Seed: DefaultSeed, Duration: DefaultDuration, RSSMaxMiB: 256}
	if v := os.Getenv(SeedEnv); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return cfg, fmt.Errorf("%s=%q: %v", SeedEnv, v, err)
		}
		cfg.Seed = n
	}
	if v := os.Getenv(DurationEnv); v != "" {
		x, err := time.ParseDuration(v)
		if err != nil || x < 20*time.Second {
			return cfg, fmt.Errorf("%s=%q: want a duration of at least 20s (%v)", DurationEnv, v, err)
		}
		cfg.Duration = x
	}
	if v := os.Getenv(RSSEnv); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return cfg, fmt.Errorf("%s=%q: %v", RSSEnv, v, err)
		}
		cfg.RSSMaxMiB = n
	}
	return cfg, nil
}

// Testbed is what the soak runs on and with.
type Testbed struct {
	Bed *testbed.Testbed
	// ControllerBinary is the controller to run (the e2e suite's is built with
	// the race detector: a race it reports fails the run).
	ControllerBinary string
	// ControllerFlags come first on every replica's command line.
	ControllerFlags []string
	// ShortLived is the validity of the testbed's "shortlived" profile: the
	// run drains for at least that long after the schedule ends.
	ShortLived time.Duration
}

// T is what the soak needs of the test running it; *testing.T has it.
type T interface {
	Helper()
	Log(args ...any)
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Failed() bool
	TempDir() string
	Cleanup(func())
}

// liveIngress is an Ingress of the soak as its user has written it so far.
type liveIngress struct {
	plan         *planIngress
	ns           string
	deleted      bool
	deletedAt    time.Time
	writing      int       // user writes in flight
	lastWriteEnd time.Time // when the user's last write returned
	lastRV       int64     // resourceVersion the user's last write produced
	optedInEver  bool
}

func (li *liveIngress) key() string { return li.ns + "/" + li.plan.name() }

// soakReplica is one controller replica.
type soakReplica struct {
	*testbed.Controller
	name    string // also its --leader-election-id
	address string // its challenge server's loopback address
}

// soakStats are the run's figures.
type soakStats struct {
	ops, skipped, faults                 map[string]int
	opErrors                             int
	httpOK, httpFail, httpNotYet         int
	httpsOK, httpsBad                    int
	ingressPolls, tokensLive             int
	peakRSS                              map[string]uint64
	eligibleToServed                     []time.Duration
	capped                               map[string]bool // hosts left waiting by a spent order budget
	lostOrders, controllerStarts, leases int
}

// soak is one run: the testbed parts it added, what the users wrote, what the
// invariants track, and what broke.
type soak struct {
	t         T
	tb        Testbed
	bed       *testbed.Testbed // tb.Bed
	plan      *Plan
	bounds    soakBounds
	start     time.Time
	exclusive bool
	nsNames   []string // the plan's namespace i is nsNames[i%len(nsNames)]
	ctlNS     string
	ca        *testbed.ExtraCA
	rec       *caRecorder
	caProxy   *testbed.Proxy // the controller's way to the CA, cut for ca-cut
	apiProxy  *testbed.Proxy // the controller's way to the API server
	roots     caRoots
	replicas  []*soakReplica
	peers     *soakPeers

	// vmu guards violations and violationOrder.
	vmu            sync.Mutex
	violations     map[string]*violation
	violationOrder []string

	// fmu guards faults, runs and leaders.
	fmu     sync.Mutex
	faults  []faultSpan
	runs    []procRun
	leaders []leaderObs

	// mu guards everything below.
	mu             sync.Mutex
	ings           map[int]*liveIngress
	byName         map[string]*liveIngress // ns/name
	hostOwner      map[string]string       // host -> ns/ingress
	foreign        map[string]*corev1.Secret
	foreignAt      map[string]time.Time // when each foreign Secret was created, to judge only lists taken after
	secretGen      map[string]int       // ns/secret -> times the user deleted or corrupted it
	epochs         map[string]*epoch
	targets        map[string]*target
	credits        map[string][]time.Time // ns/ingress -> user changes not yet paid for by an order
	leaves         map[string]leafSeen    // serial (hex) -> certificate seen in a Secret
	secretLeaves   map[string][]string    // ns/secret -> serials, in the order seen
	budgetReported map[string]bool        // Ingresses (and orders) already reported over budget
	stats          soakStats
}

// leaderObs is the Lease holder seen at a time.
type leaderObs struct {
	At     time.Time
	Holder string
}

// Run is a cluster's life, compressed: users create, edit and delete
// annotated and plain Ingresses and Secrets while controllers, the CA and the
// API server are killed, restarted and cut off, and every promise of the
// README is checked all the time. The schedule comes from cfg.Seed and
// cfg.Duration alone. Every broken promise fails t; a report goes to the log
// and to ingress-acme-soak-<seed>.txt in the temporary directory.
func Run(t T, cfg Config, tb Testbed) {
	seed, d, exclusive := cfg.Seed, cfg.Duration, cfg.Exclusive
	plan := NewPlan(seed, d, 3)
	s := &soak{
		t: t, tb: tb, bed: tb.Bed, plan: plan, exclusive: exclusive,
		bounds: soakBounds{
			Eligible: 30 * time.Second, Route: 15 * time.Second,
			Token: 15 * time.Second, TokenMaxAge: 3 * time.Minute, ExpiryWindow: 5 * time.Second,
			OrderBudget: soakOrderBudget, RSS: cfg.RSSMaxMiB << 20,
		},
		violations: map[string]*violation{},
		ings:       map[int]*liveIngress{}, byName: map[string]*liveIngress{}, hostOwner: map[string]string{},
		foreign: map[string]*corev1.Secret{}, foreignAt: map[string]time.Time{}, secretGen: map[string]int{}, epochs: map[string]*epoch{},
		targets: map[string]*target{}, credits: map[string][]time.Time{}, leaves: map[string]leafSeen{},
		secretLeaves: map[string][]string{}, budgetReported: map[string]bool{},
		stats: soakStats{ops: map[string]int{}, skipped: map[string]int{}, faults: map[string]int{}, peakRSS: map[string]uint64{}, capped: map[string]bool{}},
	}
	nOps, nFaults := 0, 0
	for _, o := range plan.Ops {
		if o.Fault {
			nFaults++
		} else {
			nOps++
		}
	}
	t.Logf("soak: seed %d, duration %s, %d operations and %d faults planned, schedule %s, exclusive %v; replay: %s=%d %s=%s go test -count=1 -v -run TestSoak ./e2e/",
		seed, d, nOps, nFaults, plan.Digest(), exclusive, SeedEnv, seed, DurationEnv, d)
	s.setup()
	s.run()
	s.report()
}

// setup makes the namespaces, backends, ingress class, CA, proxies and the two
// controller replicas.
func (s *soak) setup() {
	t := s.t
	ctx := context.Background()
	var err error
	if s.ctlNS, err = s.bed.CreateNamespace(ctx, "soak-controller"); err != nil {
		t.Fatal(err)
	}
	n := 1
	if s.exclusive {
		n = s.plan.Namespaces
	}
	for i := range n {
		ns, err := s.bed.CreateNamespace(ctx, fmt.Sprintf("soak-%c", 'a'+i))
		if err != nil {
			t.Fatal(err)
		}
		s.nsNames = append(s.nsNames, ns)
		s.startBackend(ns, "web")
	}
	class := &networkingv1.IngressClass{ObjectMeta: metav1.ObjectMeta{Name: soakClassServed}, Spec: networkingv1.IngressClassSpec{Controller: "traefik.io/ingress-controller"}}
	if _, err := s.bed.Client().NetworkingV1().IngressClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	// The CA: a Pebble of its own (restarted by faults), behind the recorder
	// (which sees every order) behind a TCP proxy (cut by faults).
	s.ca = s.startCA(s.ctlNS)
	if err := s.roots.add(ctx, s.bed.PebbleClient(), s.ca.Management); err != nil {
		t.Fatal(err)
	}
	pebbleURL, err := url.Parse(s.ca.Directory)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := pebbleTransport(s.bed.PebbleClient())
	if err != nil {
		t.Fatal(err)
	}
	if s.rec, err = newCARecorder(t.TempDir(), &url.URL{Scheme: "https", Host: pebbleURL.Host}, tr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.rec.Close)
	if s.caProxy, err = testbed.NewProxy(s.rec.Addr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.caProxy.Close)

	// The API server, through a proxy the controller's kubeconfig names.
	apiURL, err := url.Parse(s.bed.APIServerURL)
	if err != nil {
		t.Fatal(err)
	}
	if s.apiProxy, err = testbed.NewProxy(apiURL.Host); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.apiProxy.Close)
	if err := s.bed.GrantManifestRBAC(ctx, s.ctlNS); err != nil {
		t.Fatal(err)
	}
	token, err := s.bed.ServiceAccountToken(ctx, s.ctlNS, "ingress-acme")
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := s.bed.Kubeconfig(token, kubeconfig); err != nil {
		t.Fatal(err)
	}
	kc, err := os.ReadFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kubeconfig, []byte(strings.ReplaceAll(string(kc), s.bed.APIServerURL, "https://"+s.apiProxy.Addr)), 0o600); err != nil {
		t.Fatal(err)
	}

	watch := ""
	if !s.exclusive {
		watch = s.nsNames[0]
	}
	if s.peers, err = newSoakPeers(s.bed.AdminConfig, s.ctlNS); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"soak-a", "soak-b"} {
		c := s.newController(testbed.ControllerOptions{
			Namespace: s.ctlNS, Dir: t.TempDir(), Kubeconfig: kubeconfig,
			Extra: append(append(slices.Clone(s.tb.ControllerFlags), s.peers.flags(i)...),
				"--log-level", "info",
				"--namespace", watch,
				"--acme-directory", "https://"+s.caProxy.Addr+pebbleURL.Path,
				"--acme-ca-bundle", s.rec.CAFile,
				"--max-orders-per-hour", strconv.Itoa(soakControllerCap),
				"--leader-election-id", name,
			),
		})
		s.replicas = append(s.replicas, &soakReplica{Controller: c, name: name, address: s.peers.address(i)})
	}
	s.start = time.Now()
	for _, r := range s.replicas {
		if !s.startReplica(r) {
			t.Fatalf("replica %s did not start:\n%s", r.name, r.LogTail(40))
		}
	}
}

// startBackend starts the backend name in ns, closed when the run ends.
func (s *soak) startBackend(ns, name string) {
	s.t.Helper()
	b, err := s.bed.Backend(context.Background(), ns, name, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(b.Close)
}

// startCA starts a Pebble of the run's own, named after ns, stopped when the
// run ends.
func (s *soak) startCA(ns string) *testbed.ExtraCA {
	s.t.Helper()
	ctx := context.Background()
	ca, err := s.bed.ExtraPebble(ctx, ns, nil, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(ca.Stop)
	if _, err := ca.RootPool(ctx); err != nil {
		s.t.Fatal(err)
	}
	return ca
}

// newController prepares a replica from opts (Binary is filled in), stopped
// and its logs printed on failure when the run ends.
func (s *soak) newController(opts testbed.ControllerOptions) *testbed.Controller {
	t := s.t
	t.Helper()
	opts.Binary = s.tb.ControllerBinary
	c, err := s.bed.NewController(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.checkExit(c, c.Stop())
		if t.Failed() {
			t.Logf("controller logs (%s, last 150 lines):\n%s", opts.Namespace, c.LogTail(150))
		}
	})
	return c
}

// checkExit fails the run if c exited with code because the race detector
// found a data race.
func (s *soak) checkExit(c *testbed.Controller, code int) {
	if code == testbed.RaceExitCode {
		s.t.Errorf("the race detector found a data race in the controller:\n%s", c.LogTail(80))
	}
}

// host is the real name of host label h of Ingress p: unique on the testbed.
func (s *soak) host(p *planIngress, h string) string {
	return fmt.Sprintf("%s-i%d.%s.test", h, p.Idx, s.nsOf(p.NS))
}

func (s *soak) hostsOf(p *planIngress) []string {
	out := make([]string, len(p.Hosts))
	for i, h := range p.Hosts {
		out[i] = s.host(p, h)
	}
	return out
}

func (s *soak) nsOf(i int) string { return s.nsNames[i%len(s.nsNames)] }

// applyPlan writes the user-owned fields of p onto ing, built by
// testbed.Ingress for p's hosts.
func (s *soak) applyPlan(ing *networkingv1.Ingress, p *planIngress) {
	setAnnotation(ing, "kubernetes.io/tls-acme", p.OptIn)
	setAnnotation(ing, "ingress-acme.io/key-type", p.KeyType)
	setAnnotation(ing, profileAnnotation, p.Profile)
	setClass(ing, p.Class)
	for i := range ing.Spec.Rules {
		for _, path := range p.Paths {
			addPath(&ing.Spec.Rules[i], path)
		}
	}
	if p.TLS != nil {
		ing.Spec.TLS = []networkingv1.IngressTLS{s.tlsEntry(p, p.TLS)}
	}
}

func (s *soak) tlsEntry(p *planIngress, t *planTLS) networkingv1.IngressTLS {
	e := networkingv1.IngressTLS{SecretName: t.Secret}
	for _, h := range t.Hosts {
		e.Hosts = append(e.Hosts, s.host(p, h))
	}
	return e
}

func setAnnotation(ing *networkingv1.Ingress, k, v string) {
	if ing.Annotations == nil {
		ing.Annotations = map[string]string{}
	}
	if v == "" {
		delete(ing.Annotations, k)
		return
	}
	ing.Annotations[k] = v
}

func setClass(ing *networkingv1.Ingress, class string) {
	if class == "" {
		ing.Spec.IngressClassName = nil
		return
	}
	ing.Spec.IngressClassName = &class
}

func addPath(r *networkingv1.IngressRule, path string) {
	prefix := networkingv1.PathTypePrefix
	r.HTTP.Paths = append(r.HTTP.Paths, networkingv1.HTTPIngressPath{Path: path, PathType: &prefix, Backend: networkingv1.IngressBackend{
		Service: &networkingv1.IngressServiceBackend{Name: "web", Port: networkingv1.ServiceBackendPort{Number: 80}},
	}})
}

// editFor is the change op makes to the live Ingress (next is the plan after it).
func (s *soak) editFor(op Op, next *planIngress) func(*networkingv1.Ingress) {
	return func(ing *networkingv1.Ingress) {
		switch op.Kind {
		case opAddHost:
			r := testbed.Ingress(ing.Namespace, ing.Name, "web", false, s.host(next, op.Host)).Spec.Rules[0]
			for _, p := range next.Paths {
				addPath(&r, p)
			}
			ing.Spec.Rules = append(ing.Spec.Rules, r)
		case opRemoveHost:
			h := s.host(next, op.Host)
			ing.Spec.Rules = slices.DeleteFunc(ing.Spec.Rules, func(r networkingv1.IngressRule) bool { return r.Host == h })
			for i := range ing.Spec.TLS {
				if next.TLS != nil && ing.Spec.TLS[i].SecretName == next.TLS.Secret {
					ing.Spec.TLS[i].Hosts = slices.DeleteFunc(ing.Spec.TLS[i].Hosts, func(x string) bool { return x == h })
					if len(ing.Spec.TLS[i].Hosts) == 0 {
						ing.Spec.TLS[i].Hosts = nil
					}
				}
			}
		case opOptIn:
			setAnnotation(ing, "kubernetes.io/tls-acme", op.Value)
		case opKeyType:
			setAnnotation(ing, "ingress-acme.io/key-type", op.Value)
		case opProfile:
			setAnnotation(ing, profileAnnotation, op.Value)
		case opClass:
			setClass(ing, op.Value)
		case opUserTLS:
			ing.Spec.TLS = []networkingv1.IngressTLS{s.tlsEntry(next, op.TLS)}
		case opDropUserTLS:
			ing.Spec.TLS = slices.DeleteFunc(ing.Spec.TLS, func(e networkingv1.IngressTLS) bool { return e.SecretName == op.Value })
		case opAddPath:
			for i := range ing.Spec.Rules {
				r := &ing.Spec.Rules[i]
				if r.HTTP == nil || !slices.ContainsFunc(r.HTTP.Paths, func(p networkingv1.HTTPIngressPath) bool { return p.Path == "/" }) {
					continue // a rule the controller added for a challenge
				}
				addPath(r, op.Value)
			}
		}
	}
}

// retry runs f until it succeeds, fails for good (not found, exists, invalid,
// forbidden), or a minute and a half has passed: the API server may be
// restarting.
func retry(ctx context.Context, f func() error) error {
	deadline := time.Now().Add(90 * time.Second)
	for {
		err := f()
		if err == nil || apierrors.IsNotFound(err) || apierrors.IsAlreadyExists(err) || apierrors.IsInvalid(err) || apierrors.IsForbidden(err) {
			return err
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		if !apierrors.IsConflict(err) {
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// do runs one user operation.
func (s *soak) do(ctx context.Context, op Op) {
	s.mu.Lock()
	li := s.ings[op.Ing]
	s.mu.Unlock()
	var err error
	switch {
	case op.Kind == opCreate:
		err = s.create(ctx, op.Create)
	case li == nil:
		err = fmt.Errorf("i%d was never created", op.Ing)
	case op.Kind == opDelete:
		err = s.deleteIngress(ctx, li)
	case op.Kind == opDeleteSecret || op.Kind == opCorruptSecret || op.Kind == opForeignSecret:
		err = s.secretOp(ctx, li, op)
	default:
		err = s.edit(ctx, li, op)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var skip skipped
	switch {
	case errors.As(err, &skip):
		s.stats.skipped[op.Kind+" ("+string(skip)+")"]++
	case err != nil:
		s.stats.opErrors++
		s.t.Logf("soak: +%.1fs %s: %v", s.rel(time.Now()), op, err)
	default:
		s.stats.ops[op.Kind]++
	}
}

// skipped is an operation that did not apply (say, deleting a Secret not issued yet).
type skipped string

func (e skipped) Error() string { return string(e) }

// credit records a user change to the Ingress's certificate, which justifies
// one order; s.mu must be held.
func (s *soak) credit(li *liveIngress, at time.Time) {
	s.credits[li.key()] = append(s.credits[li.key()], at)
}

func (s *soak) create(ctx context.Context, p *planIngress) error {
	li := &liveIngress{plan: p.clone(), ns: s.nsOf(p.NS), writing: 1}
	s.mu.Lock()
	s.ings[p.Idx], s.byName[li.key()] = li, li
	for _, h := range s.hostsOf(p) {
		s.hostOwner[h] = li.key()
	}
	s.mu.Unlock()
	at := time.Now()
	if p.Foreign {
		if err := s.createForeign(ctx, li); err != nil {
			s.t.Logf("soak: foreign Secret for %s: %v", li.key(), err)
		}
	}
	ing := testbed.Ingress(li.ns, p.name(), "web", false, s.hostsOf(p)...)
	s.applyPlan(ing, p)
	api := s.bed.Client().NetworkingV1().Ingresses(li.ns)
	var got *networkingv1.Ingress
	err := retry(ctx, func() error {
		var err error
		got, err = api.Create(ctx, ing, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) { // an earlier attempt's answer was lost
			got, err = api.Get(ctx, ing.Name, metav1.GetOptions{})
		}
		return err
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	li.writing--
	li.lastWriteEnd = time.Now()
	if err != nil {
		li.deleted = true
		return err
	}
	li.lastRV, _ = strconv.ParseInt(got.ResourceVersion, 10, 64)
	li.optedInEver = p.OptIn == "true"
	if p.OptIn == "true" {
		s.credit(li, at)
	}
	s.refresh(li)
	return nil
}

// createForeign creates a Secret the controller does not own under li's
// certificate Secret name: a valid certificate for its hosts from another CA.
func (s *soak) createForeign(ctx context.Context, li *liveIngress) error {
	certPEM, keyPEM, _, err := certWithRoot("someone else's CA", nil, s.hostsOf(li.plan)...)
	if err != nil {
		return err
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: li.plan.secret(), Namespace: li.ns,
			Labels: map[string]string{"owner": "someone-else"}, Annotations: map[string]string{"note": "not managed by ingress-acme"}},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}
	var got *corev1.Secret
	err = retry(ctx, func() error {
		got, err = s.bed.Client().CoreV1().Secrets(li.ns).Create(ctx, sec, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.foreign[li.ns+"/"+sec.Name] = got
	s.foreignAt[li.ns+"/"+sec.Name] = time.Now()
	s.refresh(li)
	s.mu.Unlock()
	return nil
}

func (s *soak) edit(ctx context.Context, li *liveIngress, op Op) error {
	s.mu.Lock()
	if li.deleted {
		s.mu.Unlock()
		return skipped("deleted")
	}
	next := li.plan.clone()
	next.apply(op)
	for _, h := range s.hostsOf(next) {
		s.hostOwner[h] = li.key()
	}
	li.writing++
	s.dropTargets(li, next, op.Kind == opClass)
	s.mu.Unlock()
	at := time.Now()
	api := s.bed.Client().NetworkingV1().Ingresses(li.ns)
	var got *networkingv1.Ingress
	err := retry(ctx, func() error {
		ing, err := api.Get(ctx, li.plan.name(), metav1.GetOptions{})
		if err != nil {
			return err
		}
		s.editFor(op, next)(ing)
		got, err = api.Update(ctx, ing, metav1.UpdateOptions{})
		return err
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	li.writing--
	li.lastWriteEnd = time.Now()
	if err == nil {
		li.plan = next
		li.lastRV, _ = strconv.ParseInt(got.ResourceVersion, 10, 64)
		li.optedInEver = li.optedInEver || next.OptIn == "true"
		if op.Kind != opAddPath && next.OptIn == "true" {
			s.credit(li, at)
		}
	}
	s.refresh(li)
	return err
}

func (s *soak) deleteIngress(ctx context.Context, li *liveIngress) error {
	s.mu.Lock()
	if li.deleted {
		s.mu.Unlock()
		return skipped("deleted")
	}
	li.writing++
	s.dropTargets(li, nil, true)
	s.mu.Unlock()
	err := retry(ctx, func() error {
		return s.bed.Client().NetworkingV1().Ingresses(li.ns).Delete(ctx, li.plan.name(), metav1.DeleteOptions{})
	})
	if apierrors.IsNotFound(err) {
		err = nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	li.writing--
	li.lastWriteEnd = time.Now()
	if err == nil {
		li.deleted, li.deletedAt = true, time.Now()
	}
	s.refresh(li)
	return err
}

var corruptPEM = []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")

func (s *soak) secretOp(ctx context.Context, li *liveIngress, op Op) error {
	s.mu.Lock()
	name := li.plan.secret()
	key := li.ns + "/" + name
	foreign := s.foreign[key] != nil
	deleted := li.deleted
	s.mu.Unlock()
	if deleted {
		return skipped("deleted")
	}
	if foreign {
		return skipped("foreign")
	}
	api := s.bed.Client().CoreV1().Secrets(li.ns)
	at := time.Now()
	err := retry(ctx, func() error {
		sec, err := api.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if op.Kind == opCorruptSecret {
			if sec.Data == nil {
				sec.Data = map[string][]byte{}
			}
			sec.Data[corev1.TLSCertKey] = corruptPEM
			_, err = api.Update(ctx, sec, metav1.UpdateOptions{})
			return err
		}
		err = api.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &sec.UID}})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
	if apierrors.IsNotFound(err) {
		if op.Kind != opForeignSecret {
			return skipped("no Secret yet")
		}
		err = nil
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.secretGen[key]++
	if li.plan.OptIn == "true" {
		s.credit(li, at)
	}
	s.refresh(li)
	s.mu.Unlock()
	if op.Kind == opForeignSecret {
		if err := s.createForeign(ctx, li); apierrors.IsAlreadyExists(err) {
			return skipped("the controller wrote the Secret again first")
		} else if err != nil {
			return err
		}
	}
	return nil
}

// --- faults ---

// leader returns the replica holding the Lease, else the first running one.
func (s *soak) leader(ctx context.Context) *soakReplica {
	lease, err := s.bed.Client().CoordinationV1().Leases(s.ctlNS).Get(ctx, "ingress-acme", metav1.GetOptions{})
	if err == nil && lease.Spec.HolderIdentity != nil {
		for _, r := range s.replicas {
			if r.name == *lease.Spec.HolderIdentity && r.Running() {
				return r
			}
		}
	}
	for _, r := range s.replicas {
		if r.Running() {
			return r
		}
	}
	return s.replicas[0]
}

func (s *soak) other(r *soakReplica) *soakReplica {
	if r == s.replicas[0] {
		return s.replicas[1]
	}
	return s.replicas[0]
}

// startReplica starts r (three tries) and records the run.
func (s *soak) startReplica(r *soakReplica) bool {
	var err error
	for range 3 {
		start := time.Now()
		err = r.Start()
		s.fmu.Lock()
		s.runs = append(s.runs, procRun{Replica: r.name, Pid: r.Pid(), Start: start})
		s.fmu.Unlock()
		s.mu.Lock()
		s.stats.controllerStarts++
		s.mu.Unlock()
		if err == nil {
			s.peerReady(r, true)
			return true
		}
		s.stopReplica(r, syscall.SIGKILL)
	}
	s.violate(invControllerRun, "replica "+r.name, "not ready after three starts: %v", err)
	return false
}

// peerReady marks r ready or not in the replicas' EndpointSlice, as
// Kubernetes would from its readiness probe.
func (s *soak) peerReady(r *soakReplica, ready bool) {
	if err := s.peers.set(r.address, ready); err != nil {
		s.violate(invControllerRun, "replica "+r.name, "could not mark its endpoint ready=%v: %v", ready, err)
	}
}

// stopReplica ends r with sig and closes its run.
func (s *soak) stopReplica(r *soakReplica, sig syscall.Signal) {
	s.checkExit(r.Controller, r.Signal(sig))
	s.peerReady(r, false)
	s.fmu.Lock()
	defer s.fmu.Unlock()
	for i := range s.runs {
		if s.runs[i].Replica == r.name && s.runs[i].End.IsZero() {
			s.runs[i].End = time.Now()
		}
	}
}

// soakLease is how long a killed leader keeps the Lease (the controller's
// LeaseDuration); grace after faults that take the leader away.
const soakLease = 15 * time.Second

// fault runs one fault to its end.
func (s *soak) fault(ctx context.Context, op Op) {
	s.mu.Lock()
	s.stats.faults[op.Kind]++
	s.mu.Unlock()
	s.t.Logf("soak: +%.1fs %s", s.rel(time.Now()), op)
	switch op.Kind {
	case faultKill, faultTerm, faultFailover:
		r := s.leader(ctx)
		grace := soakLease + 5*time.Second
		if op.Value == "follower" {
			r, grace = s.other(r), 2*time.Second
		}
		sig := syscall.SIGKILL
		if op.Kind == faultTerm {
			sig, grace = syscall.SIGTERM, 5*time.Second
		}
		i := s.faultStart(op.Kind, grace)
		s.stopReplica(r, sig)
		sleepCtx(ctx, op.Dur)
		s.startReplica(r)
		s.faultEnd(i)
	case faultCrashLoop:
		r := s.leader(ctx)
		i := s.faultStart(op.Kind, soakLease+5*time.Second)
		for range op.Count {
			s.stopReplica(r, syscall.SIGKILL)
			sleepCtx(ctx, 300*time.Millisecond)
			s.startReplica(r)
			sleepCtx(ctx, op.Dur)
		}
		s.faultEnd(i)
	case faultPebble:
		i := s.faultStart(op.Kind, 12*time.Second)
		s.ca.Stop()
		at := time.Now()
		lost := s.rec.caRestarted(at)
		s.mu.Lock()
		s.stats.lostOrders += len(lost)
		for _, o := range lost {
			for _, h := range o.Hosts {
				if li := s.byName[s.hostOwner[h]]; li != nil {
					s.credit(li, at)
					break
				}
			}
		}
		s.mu.Unlock()
		sleepCtx(ctx, op.Dur)
		if err := s.ca.Restart(context.Background()); err != nil {
			s.t.Errorf("soak: the CA did not come back: %v", err)
		} else if err := s.roots.add(context.Background(), s.bed.PebbleClient(), s.ca.Management); err != nil {
			s.t.Errorf("soak: the CA's new root: %v", err)
		}
		s.faultEnd(i)
	case faultCACut:
		i := s.faultStart(op.Kind, 12*time.Second)
		s.caProxy.Cut()
		sleepCtx(ctx, op.Dur)
		if err := s.caProxy.Restore(); err != nil {
			s.t.Errorf("soak: CA proxy: %v", err)
		}
		s.faultEnd(i)
	case faultAPIServer:
		i := s.faultStart(op.Kind, 15*time.Second)
		if s.exclusive {
			if err := s.bed.StopProcess(testbed.KubeAPIServer); err != nil {
				s.t.Errorf("soak: %v", err)
			}
			sleepCtx(ctx, op.Dur)
			if err := s.bed.StartProcess(testbed.KubeAPIServer); err != nil {
				s.t.Errorf("soak: %v", err)
			}
		} else {
			s.apiProxy.Cut()
			sleepCtx(ctx, op.Dur)
			if err := s.apiProxy.Restore(); err != nil {
				s.t.Errorf("soak: API proxy: %v", err)
			}
		}
		s.faultEnd(i)
	}
}

// watchLeader records the Lease holder every half second.
func (s *soak) watchLeader(ctx context.Context) {
	last := ""
	for ctx.Err() == nil {
		lease, err := s.bed.Client().CoordinationV1().Leases(s.ctlNS).Get(ctx, "ingress-acme", metav1.GetOptions{})
		if err == nil && lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != last {
			last = *lease.Spec.HolderIdentity
			s.fmu.Lock()
			s.leaders = append(s.leaders, leaderObs{At: time.Now(), Holder: last})
			s.fmu.Unlock()
			s.mu.Lock()
			s.stats.leases++
			s.mu.Unlock()
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
}

// --- the run ---

func (s *soak) run() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var bg sync.WaitGroup
	for _, f := range []func(context.Context){s.probeHTTP, s.probeHTTPS, s.pollIngresses, s.pollSecrets, s.sampleRSS, s.watchLeader} {
		bg.Go(func() { f(ctx) })
	}
	budgetDone := make(chan struct{})
	go func() {
		defer close(budgetDone)
		for ctx.Err() == nil {
			sleepCtx(ctx, 5*time.Second)
			s.checkBudget(false)
			s.progress()
		}
	}()

	var work sync.WaitGroup
	for _, faults := range []bool{false, true} {
		work.Go(func() {
			for _, op := range s.plan.Ops {
				if op.Fault != faults {
					continue
				}
				sleepCtx(ctx, time.Until(s.start.Add(op.At)))
				if op.Fault {
					s.fault(ctx, op)
				} else {
					s.do(ctx, op)
				}
			}
		})
	}
	work.Wait()
	scheduleEnd := time.Now()
	s.t.Logf("soak: schedule done at +%.1fs; waiting for every promise to be kept or broken", s.rel(scheduleEnd))

	// Drain: at least one short-lived certificate's lifetime (so a renewal that
	// does not come shows), at most until every bound has passed.
	for {
		sleepCtx(ctx, 500*time.Millisecond)
		since := time.Since(scheduleEnd)
		if since < s.tb.ShortLived+5*time.Second {
			continue
		}
		if s.settled() || since > 2*time.Minute {
			break
		}
	}
	cancel()
	bg.Wait()
	<-budgetDone
	for _, r := range s.replicas {
		s.stopReplica(r, syscall.SIGTERM)
	}
}

// settled reports whether every host that should have a certificate has
// been served one (or reported), every app path answered (or reported), and
// no challenge path is left.
func (s *soak) settled() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.epochs {
		if (e.SatisfiedAt.IsZero() || e.LastProblem != "") && !e.Reported && !s.stats.capped[e.Host] {
			return false
		}
	}
	for _, tg := range s.targets {
		if !tg.Armed && !tg.Reported {
			return false
		}
	}
	return s.stats.tokensLive == 0
}

func (s *soak) progress() {
	s.mu.Lock()
	ops, faults := 0, 0
	for _, n := range s.stats.ops {
		ops += n
	}
	for _, n := range s.stats.faults {
		faults += n
	}
	line := fmt.Sprintf("soak: +%.0fs: %d operations, %d faults, %d certificates wanted, %d app paths, http %d ok %d failed, https %d ok %d not yet",
		s.rel(time.Now()), ops, faults, len(s.epochs), len(s.targets), s.stats.httpOK, s.stats.httpFail, s.stats.httpsOK, s.stats.httpsBad)
	s.mu.Unlock()
	s.vmu.Lock()
	line += fmt.Sprintf(", %d distinct violations", len(s.violations))
	s.vmu.Unlock()
	requests, _ := s.rec.counts()
	s.t.Logf("%s, %d orders (%d CA requests)", line, len(s.rec.snapshot()), requests)
}

// report prints the run's figures and every violation, writes both with the
// schedule to a file, and fails the test if any invariant broke.
func (s *soak) report() {
	verdicts := s.checkBudget(true)
	var b strings.Builder
	s.mu.Lock()
	st := s.stats
	fmt.Fprintf(&b, "soak report: seed %d, duration %s, schedule %s, exclusive %v, namespaces %v, ran %.1fs\n",
		s.plan.Seed, s.plan.Duration, s.plan.Digest(), s.exclusive, s.nsNames, s.rel(time.Now()))
	fmt.Fprintf(&b, "  operations: %s\n", countList(st.ops))
	if len(st.skipped) > 0 {
		fmt.Fprintf(&b, "  skipped:    %s\n", countList(st.skipped))
	}
	fmt.Fprintf(&b, "  faults:     %s (controller starts %d, leader changes seen %d)\n", countList(st.faults), st.controllerStarts, st.leases)
	fmt.Fprintf(&b, "  operation errors: %d\n", st.opErrors)
	fmt.Fprintf(&b, "  probes: http %d ok, %d failed after answering, %d before first answer; https %d valid, %d not (yet) valid\n",
		st.httpOK, st.httpFail, st.httpNotYet, st.httpsOK, st.httpsBad)
	if n := len(st.eligibleToServed); n > 0 {
		d := slices.Clone(st.eligibleToServed)
		slices.Sort(d)
		fmt.Fprintf(&b, "  eligible -> served over HTTPS: %d times, median %.1fs, p90 %.1fs, max %.1fs\n",
			n, d[n/2].Seconds(), d[n*9/10].Seconds(), d[n-1].Seconds())
	}
	if len(st.capped) > 0 {
		fmt.Fprintf(&b, "  hosts left waiting past the bound because the user's changes spent the order budget: %d\n", len(st.capped))
	}
	fmt.Fprintf(&b, "  certificates seen in Secrets: %d in %d Secrets\n", len(s.leaves), len(s.secretLeaves))
	fmt.Fprintf(&b, "  hosts that should have a certificate at the end: %d\n", len(s.epochs))
	for _, h := range soakSortedKeys(s.epochs) {
		e := s.epochs[h]
		state := "never served validly"
		if !e.SatisfiedAt.IsZero() {
			state = fmt.Sprintf("served from +%.1fs", s.rel(e.SatisfiedAt))
		}
		if e.LastProblem != "" {
			state += "; last probe: " + e.LastProblem
		}
		fmt.Fprintf(&b, "    %s (%s, %s, %s) eligible +%.1fs, %s\n", h, e.Secret, e.KeyType, e.Profile, s.rel(e.EligibleAt), state)
	}
	for _, name := range soakSortedKeys(st.peakRSS) {
		fmt.Fprintf(&b, "  peak RSS %s: %.1f MiB (race detector on)\n", name, float64(st.peakRSS[name])/(1<<20))
	}
	s.mu.Unlock()
	orders, valid, replaces, unjustified, certs := 0, 0, 0, 0, 0
	maxPer := ""
	maxN := 0
	for owner, vs := range verdicts {
		certs++
		if len(vs) > maxN {
			maxN, maxPer = len(vs), owner
		}
		for _, v := range vs {
			orders++
			if v.Order.Status == "valid" {
				valid++
			}
			if v.Order.Replaces != "" {
				replaces++
			}
			if v.Why == "" {
				unjustified++
			}
		}
	}
	requests, failures := s.rec.counts()
	fmt.Fprintf(&b, "  orders: %d for %d Ingresses (%d valid, %d with replaces, %d lost in CA restarts, %d unjustified), most for one: %d (%s); CA requests %d (%d answered 5xx)\n",
		orders, certs, valid, replaces, st.lostOrders, unjustified, maxN, maxPer, requests, failures)
	s.vmu.Lock()
	fmt.Fprintf(&b, "  violations: %d distinct\n", len(s.violationOrder))
	byInv := map[string]int{}
	for _, k := range s.violationOrder {
		v := s.violations[k]
		byInv[v.Invariant]++
		fmt.Fprintf(&b, "    +%.1fs %s [%s] (x%d): %s\n", s.rel(v.First), v.Invariant, v.Objects, v.Count, v.Detail)
	}
	nViol := len(s.violationOrder)
	s.vmu.Unlock()
	if nViol > 0 {
		fmt.Fprintf(&b, "  by invariant: %s\n", countList(byInv))
	}
	out := filepath.Join(os.TempDir(), fmt.Sprintf("ingress-acme-soak-%d.txt", s.plan.Seed))
	if err := os.WriteFile(out, []byte(b.String()+"\nschedule:\n"+s.plan.String()), 0o644); err == nil {
		fmt.Fprintf(&b, "  report and schedule written to %s\n", out)
	}
	s.t.Log(b.String())
	if nViol > 0 {
		s.t.Errorf("%d invariant violations (seed %d); replay the same schedule with %s=%d %s=%s", nViol, s.plan.Seed,
			SeedEnv, s.plan.Seed, DurationEnv, s.plan.Duration)
	}
}

func countList(m map[string]int) string {
	var parts []string
	for _, k := range soakSortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
