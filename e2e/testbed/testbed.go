// Package testbed runs the real components of ingress-acme's end-to-end tests on
// loopback, as child processes of the test binary: etcd, kube-apiserver (token
// authentication and RBAC), pebble-challtestsrv (DNS), Pebble (the Let's Encrypt
// test CA) and Traefik v3 (the ingress controller). There is no Docker, kubelet
// or pod network: backends are plain HTTP servers in the test binary, reached by
// Traefik through FQDN EndpointSlices that point at 127.0.0.1 (see Backend).
//
// Binaries come from the tool cache filled by hack/tools.sh, which Start runs
// when anything is missing. Every child runs in its own process group with
// Pdeathsig SIGKILL, so none survives the test binary.
package testbed

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Component names, for StopProcess and StartProcess; also the names of their
// logs (Dir/logs/<name>.log) and PID files (Dir/run/<name>.pid).
const (
	Etcd          = "etcd"           // etcd, the API server's storage
	KubeAPIServer = "kube-apiserver" // the API server; a restart keeps etcd's data
	ChallTestSrv  = "challtestsrv"   // pebble-challtestsrv, Pebble's DNS server
	Traefik       = "traefik"        // the ingress controller
	Pebble        = "pebble"         // the ACME CA; a restart makes new roots
)

// startOrder is the order Start brings the components up in.
var startOrder = []string{Etcd, KubeAPIServer, ChallTestSrv, Traefik, Pebble}

// stopOrder is the order Stop takes them down in: clients of the API server
// first (kube-apiserver holds SIGTERM for >10 s while watches are open).
var stopOrder = []string{Traefik, Pebble, ChallTestSrv, KubeAPIServer, Etcd}

// KeepEnv is the environment variable that, set to 1, makes Stop keep Dir.
const KeepEnv = "INGRESS_ACME_KEEP_TESTBED"

// Options configure Start.
type Options struct {
	// Logf receives progress lines (default: log.Printf).
	Logf func(format string, args ...any)
	// CertValidity is the validity of certificates Pebble issues with its
	// default profile (its validityPeriod); 0 means 90 days.
	CertValidity time.Duration
	// ShortLivedValidity is the validity of Pebble's "shortlived" profile,
	// which an order asks for by name (to exercise renewal in seconds without
	// shortening every other certificate); 0 means 6 days.
	ShortLivedValidity time.Duration
	// PebbleEnv is extra environment for Pebble, e.g. "PEBBLE_WFE_NONCEREJECT=30",
	// on top of PEBBLE_VA_NOSLEEP=1. No PEBBLE_* variable of the test's own
	// environment reaches Pebble, so Pebble keeps its defaults otherwise (it
	// rejects 5% of nonces and reuses 50% of valid authorizations).
	// PEBBLE_VA_ALWAYS_VALID is refused: challenges must really be validated.
	PebbleEnv []string
}

// Testbed is a running set of components. All fields are set by Start and must
// not be changed.
type Testbed struct {
	// Dir is the temporary folder with all data, configs (conf/), PID files
	// (run/<name>.pid) and logs (logs/<name>.log).
	Dir string
	// Tools are the binaries in use.
	Tools *Tools

	// AdminConfig has admin (system:masters) credentials and verifies the API
	// server's TLS with APIServerCAFile.
	AdminConfig *rest.Config
	// AdminKubeconfig is the path of a kubeconfig file with the admin credentials.
	AdminKubeconfig string
	// APIServerURL is https://127.0.0.1:PORT.
	APIServerURL string
	// APIServerCAFile holds the API server's self-signed serving certificate
	// (from its --cert-dir), to trust it. It is the same across restarts.
	APIServerCAFile string
	// EtcdURL is http://127.0.0.1:PORT, etcd's client URL.
	EtcdURL string

	// PebbleDirectory is the ACME directory URL, https://127.0.0.1:PORT/dir.
	PebbleDirectory string
	// PebbleManagement is the base URL of Pebble's management interface
	// (https://127.0.0.1:PORT; /roots/0, /intermediates/0, ...).
	PebbleManagement string
	// PebbleCAFile verifies the TLS of PebbleDirectory and PebbleManagement
	// (pebble.minica.pem). It does not verify the certificates Pebble issues:
	// see PebbleRoots.
	PebbleCAFile string
	// ChallTestSrvDNS is the DNS address (127.0.0.1:PORT) Pebble resolves
	// names with; every name resolves to 127.0.0.1.
	ChallTestSrvDNS string
	// ChallTestSrvManagement is the base URL of pebble-challtestsrv's management
	// interface (http://127.0.0.1:PORT), e.g. to add DNS records.
	ChallTestSrvManagement string

	// IngressHTTP is Traefik's web entrypoint, 127.0.0.1:PORT; Pebble sends
	// its HTTP-01 requests there.
	IngressHTTP string
	// IngressHTTPS is Traefik's websecure entrypoint (TLS on every router).
	IngressHTTPS string
	// TraefikPing is the URL of Traefik's /ping.
	TraefikPing string

	logf        func(string, ...any)
	opts        Options
	client      kubernetes.Interface
	quietClient kubernetes.Interface // admin client that drops API warnings
	adminTok    string
	pebbleTLS   *tls.Config // verifies Pebble's own serving certificate

	// ports, allocated once and reused by StartProcess
	etcdPort, etcdPeerPort                int
	apiPort                               int
	dnsPort, ctsMgmtPort                  int
	webPort, websecurePort, traefikPort   int
	pebblePort, pebbleMgmtPort            int
	traefikToken                          string
	certDir, tokensFile, saKey, saPub     string
	etcdData, traefikConfig, pebbleConfig string

	dataPlanes dataPlanes // started by DataPlane, on first use

	mu       sync.Mutex // guards procs' runs
	sp       *spawner
	procs    map[string]*process
	stopOnce sync.Once
}

// Start brings up etcd, kube-apiserver, pebble-challtestsrv, Traefik and Pebble
// on free loopback ports, waiting until each is ready. On failure it stops what
// it started and returns an error with the tail of the failing component's log.
func Start(ctx context.Context, opts Options) (_ *Testbed, err error) {
	if opts.Logf == nil {
		opts.Logf = log.Printf
	}
	for _, e := range opts.PebbleEnv {
		if strings.HasPrefix(e, "PEBBLE_VA_ALWAYS_VALID=") {
			return nil, errors.New("testbed: PEBBLE_VA_ALWAYS_VALID is not allowed: challenges must be validated for real")
		}
	}
	tools, err := FindTools(ctx, opts.Logf)
	if err != nil {
		return nil, err
	}
	removeStale(opts.Logf)
	dir, err := os.MkdirTemp("", dirPattern)
	if err != nil {
		return nil, err
	}
	tb := &Testbed{Dir: dir, Tools: tools, logf: opts.Logf, opts: opts, procs: map[string]*process{}}
	for _, d := range []string{"logs", "run", "conf", "data", "pki"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "run", ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, err
	}
	tb.sp = newSpawner()
	defer func() {
		if err != nil {
			tb.Stop()
		}
	}()
	if err := tb.prepareStatic(); err != nil {
		return nil, err
	}
	tb.defineProcesses()
	t0 := time.Now()
	for _, name := range startOrder {
		if err := tb.startInitial(ctx, name); err != nil {
			return nil, err
		}
		if name == KubeAPIServer {
			if err := tb.afterAPIServer(ctx); err != nil {
				return nil, err
			}
		}
	}
	tb.logf("testbed: all up in %.2fs (%s)", time.Since(t0).Seconds(), tb.Dir)
	return tb, nil
}

// startInitial starts one component for the first time; if it fails because a
// port it was given got taken meanwhile, it picks new ports and tries once more.
func (tb *Testbed) startInitial(ctx context.Context, name string) error {
	p := tb.procs[name]
	for attempt := 0; ; attempt++ {
		if err := tb.allocate(name); err != nil {
			return err
		}
		t0 := time.Now()
		err := tb.run(ctx, p)
		if err == nil {
			tb.logf("testbed: %-14s ready in %.2fs (pid %d)", name, time.Since(t0).Seconds(), p.cmd.Process.Pid)
			return nil
		}
		tb.mu.Lock()
		p.stop()
		tb.mu.Unlock()
		if attempt == 0 && p.bindFailed() {
			tb.logf("testbed: %s: a port was taken, retrying with new ports", name)
			continue
		}
		return fmt.Errorf("testbed: %w\n--- last 30 lines of %s ---\n%s", err, p.logPath, p.tail(30))
	}
}

// run launches a process and waits until it is ready.
func (tb *Testbed) run(ctx context.Context, p *process) error {
	tb.mu.Lock()
	err := p.launch(tb.sp, tb.baseEnv())
	tb.mu.Unlock()
	if err != nil {
		return err
	}
	return p.waitReady(ctx)
}

// baseEnv is the environment every child inherits: ours, minus anything that
// could change Pebble's behaviour behind the testbed's back.
func (tb *Testbed) baseEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if strings.HasPrefix(e, "PEBBLE_") {
			continue
		}
		env = append(env, e)
	}
	return env
}

// Stop stops every component in reverse dependency order (traefik, pebble,
// challtestsrv, kube-apiserver, etcd) and removes Dir unless the environment
// sets INGRESS_ACME_KEEP_TESTBED=1. It is idempotent and safe to call
// concurrently: later calls wait for the first to finish.
func (tb *Testbed) Stop() {
	tb.stopOnce.Do(func() {
		t0 := time.Now()
		tb.mu.Lock()
		var parts []string
		names := slices.Clone(stopOrder)
		for name := range tb.procs { // extra components (ExtraPebble) first
			if !slices.Contains(names, name) {
				names = append([]string{name}, names...)
			}
		}
		for _, name := range names {
			p := tb.procs[name]
			if p == nil || !p.running() {
				continue
			}
			d := p.stop()
			parts = append(parts, fmt.Sprintf("%s %.2fs", name, d.Seconds()))
		}
		if tb.sp != nil {
			tb.sp.close()
		}
		tb.mu.Unlock()
		if len(parts) > 0 {
			tb.logf("testbed: stopped in %.2fs (%s)", time.Since(t0).Seconds(), strings.Join(parts, ", "))
		}
		if os.Getenv(KeepEnv) == "1" {
			_ = os.WriteFile(filepath.Join(tb.Dir, keptFile), nil, 0o644)
			tb.logf("testbed: kept %s (%s=1)", tb.Dir, KeepEnv)
			return
		}
		if err := os.RemoveAll(tb.Dir); err != nil {
			tb.logf("testbed: remove %s: %v", tb.Dir, err)
		}
	})
}

// StopProcess stops one component (SIGTERM, then SIGKILL after its grace
// period), for fault tests: "pebble" makes the CA unreachable, and so on.
func (tb *Testbed) StopProcess(name string) error {
	p := tb.procs[name]
	if p == nil {
		return fmt.Errorf("testbed: no component %q (have %s)", name, strings.Join(startOrder, ", "))
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if !p.running() {
		return fmt.Errorf("testbed: %s is not running", name)
	}
	d := p.stop()
	tb.logf("testbed: stopped %s in %.2fs", name, d.Seconds())
	return nil
}

// StartProcess starts a component stopped by StopProcess again, with the same
// ports, configuration and data (kube-apiserver keeps etcd's data and its
// serving certificate; Pebble comes back with new roots and no state), and waits
// until it is ready.
func (tb *Testbed) StartProcess(name string) error {
	p := tb.procs[name]
	if p == nil {
		return fmt.Errorf("testbed: no component %q (have %s)", name, strings.Join(startOrder, ", "))
	}
	t0 := time.Now()
	if err := tb.run(context.Background(), p); err != nil {
		tb.mu.Lock()
		p.stop()
		tb.mu.Unlock()
		return fmt.Errorf("testbed: restart: %w\n--- last 30 lines of %s ---\n%s", err, p.logPath, p.tail(30))
	}
	tb.logf("testbed: restarted %s in %.2fs (pid %d)", name, time.Since(t0).Seconds(), p.cmd.Process.Pid)
	return nil
}

// Client returns the admin clientset.
func (tb *Testbed) Client() kubernetes.Interface { return tb.client }

// PebbleClient returns an HTTP client that verifies Pebble's own serving
// certificate (PebbleCAFile), for its directory and management interface.
func (tb *Testbed) PebbleClient() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   tb.pebbleTLS.Clone(),
			DisableKeepAlives: true,
			Proxy:             nil,
		},
	}
}

// PebbleRoots returns the PEM of Pebble's current issuing root, from its
// management interface (/roots/0). Pebble makes a new root each time it starts.
// Trust only this to check that a served chain is complete.
func (tb *Testbed) PebbleRoots(ctx context.Context) ([]byte, error) {
	return tb.pebbleGet(ctx, "/roots/0")
}

// PebbleIntermediates returns the PEM of Pebble's current intermediate
// certificate (/intermediates/0), which signs the leaves it issues.
func (tb *Testbed) PebbleIntermediates(ctx context.Context) ([]byte, error) {
	return tb.pebbleGet(ctx, "/intermediates/0")
}

// PebbleRootPool returns a pool with Pebble's current root (see PebbleRoots).
func (tb *Testbed) PebbleRootPool(ctx context.Context) (*x509.CertPool, error) {
	pem, err := tb.PebbleRoots(ctx)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("testbed: no certificate in Pebble's /roots/0")
	}
	return pool, nil
}

func (tb *Testbed) pebbleGet(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, tb.PebbleManagement+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := tb.PebbleClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("testbed: pebble %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("testbed: pebble %s: %s: %s", path, resp.Status, b)
	}
	return b, nil
}

// freePorts fills each pointer with a distinct free port.
func freePorts(ps ...*int) error {
	// Hold all listeners until every port is picked, so they differ.
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for _, p := range ps {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		ls = append(ls, l)
		*p = l.Addr().(*net.TCPAddr).Port
	}
	return nil
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
