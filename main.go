// Command ingress-acme gives every Kubernetes Ingress annotated with
// kubernetes.io/tls-acme: "true" a trusted certificate from an ACME CA, renewed
// before it expires, with HTTP-01 challenges answered in-process.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientfeatures "k8s.io/client-go/features"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/ingress-acme/ingress-acme/acme"
	"github.com/ingress-acme/ingress-acme/metrics"
	"github.com/ingress-acme/ingress-acme/secrets"
	"github.com/ingress-acme/ingress-acme/solver"
	ingresssolver "github.com/ingress-acme/ingress-acme/solver/ingress"
	"github.com/ingress-acme/ingress-acme/watcher"
	ingresssource "github.com/ingress-acme/ingress-acme/watcher/ingress"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Getenv)
	if errors.Is(err, pflag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ingress-acme:", err)
		os.Exit(2)
	}
	if cfg.Version {
		fmt.Println(version)
		return
	}
	logger := newLogger(os.Stderr, cfg.LogFormat, cfg.LogLevel)
	klog.SetSlogLogger(logger)
	clientfeatures.ReplaceFeatureGates(streamingLists{clientfeatures.FeatureGates()})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, logger); err != nil {
		logger.Error("exiting", "err", err)
		os.Exit(1)
	}
}

// streamingLists turns on client-go's streaming lists (WatchListClient: beta,
// off by default in client-go 0.34). Informers then receive the initial objects
// one by one as watch events and transform each as it arrives, so the thousands
// of Secrets of a big cluster are never all held in full at once. An API server
// without the feature (on by default from Kubernetes 1.34, off in 1.33) gets a
// plain list instead.
type streamingLists struct{ clientfeatures.Gates }

func (g streamingLists) Enabled(f clientfeatures.Feature) bool {
	return f == clientfeatures.WatchListClient || g.Gates.Enabled(f)
}

func newLogger(w *os.File, format string, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// run wires everything and runs until ctx ends or a part fails.
func run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	client, err := kubeClient(cfg)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg, version)

	challengeLn, metricsLn, err := listen(cfg)
	if err != nil {
		return err
	}
	solverPort := cfg.SolverPort
	if solverPort == 0 {
		solverPort = int32(challengeLn.Addr().(*net.TCPAddr).Port)
	}
	issuer, err := newIssuer(cfg, client, m, logger)
	if err != nil {
		return err
	}
	challenges := solver.NewServer(m.ChallengeRequest)
	services := solver.NewServices(client, cfg.SolverService, solver.Endpoint{
		Address: cfg.SolverAddress, AddressType: discoveryv1.AddressType(cfg.SolverAddressType), Port: solverPort,
	})
	// Events outlive ctx until run returns: orders cleaning up after a stop still tell.
	events := record.NewBroadcaster(record.WithContext(context.WithoutCancel(ctx)))
	events.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer events.Shutdown()
	recorder := events.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "ingress-acme"})
	ctrl, err := newController(cfg, client, m, logger, recorder, issuer, challenges, services)
	if err != nil {
		return err
	}
	var leading leaderState
	logger.Info("starting", "version", version, "directory", cfg.ACMEDirectory, "namespace", cfg.Namespace,
		"challenge_addr", challengeLn.Addr().String(), "metrics_addr", metricsLn.Addr().String(),
		"solver_endpoint", net.JoinHostPort(cfg.SolverAddress, strconv.Itoa(int(solverPort))))

	g, ctx := errgroup.WithContext(ctx)
	serve(ctx, g, solver.NewHTTPServer(cfg.ChallengeAddr, challenges), challengeLn)
	serve(ctx, g, &http.Server{Handler: opsHandler(reg, ctrl, &leading, cfg), ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second}, metricsLn)
	if cfg.SolverPeersService != "" {
		g.Go(func() error {
			return services.FollowPeers(ctx, cfg.ControllerNamespace, cfg.SolverPeersService, cfg.Namespace, logger)
		})
	}
	g.Go(func() error {
		if !cfg.LeaderElect {
			leading.set(cfg.LeaderElectionID, true)
			return ctrl.Run(ctx)
		}
		ctrl.Follow(ctx) // answer the leader's challenges, and be ready to take over
		return runLeaderElected(ctx, cfg, client, logger, &leading, ctrl.Run)
	})
	return g.Wait()
}

// kubeClient is the Kubernetes client, from --kubeconfig or in-cluster.
func kubeClient(cfg Config) (kubernetes.Interface, error) {
	restCfg, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	restCfg.QPS, restCfg.Burst = cfg.APIQPS, cfg.APIBurst
	// Protobuf for every built-in type we read: a list of thousands of Secrets
	// decodes in a fraction of the memory and CPU that JSON (base64 data) takes.
	restCfg.ContentType = runtime.ContentTypeProtobuf
	restCfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	restCfg.UserAgent = "ingress-acme/" + version
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return client, nil
}

// listen opens the challenge server's and the metrics server's listeners.
func listen(cfg Config) (challenge, ops net.Listener, err error) {
	challenge, err = net.Listen("tcp", cfg.ChallengeAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("challenge server: %w", err)
	}
	ops, err = net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		challenge.Close()
		return nil, nil, fmt.Errorf("metrics server: %w", err)
	}
	return challenge, ops, nil
}

// newIssuer is the ACME client for --acme-directory.
func newIssuer(cfg Config, client kubernetes.Interface, m *metrics.Metrics, logger *slog.Logger) (*acme.Client, error) {
	acmeHTTP, err := acmeHTTPClient(cfg.ACMECABundle)
	if err != nil {
		return nil, err
	}
	var eab *acme.EAB
	if cfg.EABKeyID != "" {
		eab = &acme.EAB{KeyID: cfg.EABKeyID, HMAC: cfg.EABHMAC}
	}
	return acme.New(acme.Config{
		DirectoryURL: cfg.ACMEDirectory,
		Email:        cfg.ACMEEmail,
		EAB:          eab,
		HTTPClient:   acmeHTTP,
		Keys:         secrets.NewAccountKeys(client, cfg.ControllerNamespace),
		Logger:       logger,
		Observe:      m.ACMERequest,
		Limits:       cfg.ACMELimits,
		AtStep:       cfg.atStep,
	})
}

// defaultIssuer is the name of the issuer --acme-directory configures.
const defaultIssuer = "default"

// resync is every informer's resync period: a safety net, the queue's
// schedule does the work.
const resync = 10 * time.Hour

// newController wires the engine to its concrete parts: the Ingress source,
// the HTTP-01 solver through Ingresses, the ACME issuer, the Secret store.
func newController(cfg Config, client kubernetes.Interface, m *metrics.Metrics, logger *slog.Logger, recorder record.EventRecorder,
	issuer watcher.Issuer, challenges *solver.Server, services *solver.Services) (*watcher.Controller, error) {
	factory := informers.NewSharedInformerFactoryWithOptions(client, resync, informers.WithNamespace(cfg.Namespace))
	ingInformer := factory.Networking().V1().Ingresses()
	source, err := ingresssource.New(ingresssource.Config{Client: client, Informer: ingInformer, Recorder: recorder, Metrics: m, Logger: logger})
	if err != nil {
		return nil, err
	}
	http01, err := ingresssolver.New(ingresssolver.Config{
		Informer: ingInformer, Ingresses: source, Challenges: challenges, Service: services,
		SelfCheck: solver.NewSelfCheck(cfg.SelfCheckAddress, cfg.SelfCheckTimeout, m.SelfCheck),
		Recorder:  recorder, Logger: logger,
	})
	if err != nil {
		return nil, err
	}
	return watcher.New(watcher.Config{
		Client:            client,
		Namespace:         cfg.Namespace,
		Sources:           []watcher.Source{source},
		Solvers:           []watcher.Solver{http01},
		Issuers:           map[string]watcher.Issuer{defaultIssuer: issuer},
		DefaultIssuer:     defaultIssuer,
		Informers:         []watcher.Informers{factory},
		Secrets:           secrets.NewStore(client),
		States:            secrets.NewStates(client, cfg.ControllerNamespace),
		Metrics:           m,
		Logger:            logger,
		Workers:           cfg.Workers,
		MaxOrdersInFlight: cfg.MaxOrdersInFlight,
		DefaultProfile:    cfg.ACMEProfile,
		DefaultChallenge:  cfg.DefaultChallenge,
		Settle:            cfg.Settle,
		RenewBefore:       cfg.RenewBefore,
		MaxOrdersPerHour:  cfg.MaxOrdersPerHour,
		RetryBase:         cfg.RetryBase,
		RetryMax:          cfg.RetryMax,
		Resync:            resync,
		AtStep:            func(s watcher.Step) { cfg.atStep(string(s)) },
	})
}

// opsHandler serves /metrics, /healthz and /readyz, and with --profiling Go's
// profiles under /debug/pprof/.
func opsHandler(reg *prometheus.Registry, ctrl *watcher.Controller, leading *leaderState, cfg Config) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(reg))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if problem := ready(ctrl, leading, cfg.LeaderElect); problem != "" {
			http.Error(w, problem, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	if cfg.Profiling {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// serve runs srv on ln in g until ctx ends, then shuts it down.
func serve(ctx context.Context, g *errgroup.Group, srv *http.Server, ln net.Listener) {
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		// Connections that never sent a request (an ingress controller's
		// pre-opened ones) hold Shutdown for 5 s: give in-flight requests a
		// moment, then close the rest; that is a normal stop, not an error.
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdownCtx); err != nil {
			return srv.Close()
		}
		return nil
	})
}

// ready says why the process is not ready, "" when it is.
func ready(ctrl *watcher.Controller, leading *leaderState, electing bool) string {
	identity, self := leading.get()
	if electing && identity == "" {
		return "leader not known"
	}
	if !ctrl.Synced() || (self && !ctrl.Ready()) {
		return "caches not synced"
	}
	return ""
}

// leaderState is who leads, for /readyz. Safe for concurrent use.
type leaderState struct {
	// mu guards identity and self.
	mu       sync.Mutex
	identity string // "" until a leader is known
	self     bool   // whether it is this process
}

func (l *leaderState) set(identity string, self bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.identity, l.self = identity, self
}

func (l *leaderState) get() (identity string, self bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.identity, l.self
}

// runLeaderElected runs work while this process holds the Lease, and returns
// only once work has returned (so a stop lets orders clean up). Losing the Lease
// ends the process: a fresh start is the simplest correct way back to follower.
func runLeaderElected(ctx context.Context, cfg Config, client kubernetes.Interface, logger *slog.Logger, leading *leaderState, work func(context.Context) error) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: cfg.ControllerNamespace, Name: "ingress-acme"},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.LeaderElectionID},
	}
	// The elector runs its callback in a goroutine it does not wait for: hand the
	// leading context over and run work here instead.
	leadCtx := make(chan context.Context, 1)
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		ReleaseOnCancel: true,
		Name:            "ingress-acme",
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) { leadCtx <- ctx },
			OnStoppedLeading: func() {},
			OnNewLeader: func(identity string) {
				leading.set(identity, identity == cfg.LeaderElectionID)
				logger.Info("leader", "identity", identity)
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	electorDone := make(chan struct{})
	go func() {
		defer close(electorDone)
		le.Run(ctx)
	}()
	select {
	case lctx := <-leadCtx:
		logger.Info("leading", "identity", cfg.LeaderElectionID)
		err := work(lctx)
		<-electorDone
		if err == nil && ctx.Err() == nil {
			err = errors.New("lost leadership")
		}
		return err
	case <-electorDone:
		return nil // stopped before leading
	}
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster config (pass --kubeconfig outside a cluster): %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return c, nil
}

// acmeHTTPClient trusts the system roots plus those in bundle (a PEM file).
func acmeHTTPClient(bundle string) (*http.Client, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if bundle != "" {
		pem, err := os.ReadFile(bundle)
		if err != nil {
			return nil, fmt.Errorf("acme CA bundle: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("acme CA bundle %s: no PEM certificate in it", bundle)
		}
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	t.MaxIdleConnsPerHost = 32
	return &http.Client{Transport: t, Timeout: 30 * time.Second}, nil
}

func envName(flag string) string {
	return "INGRESS_ACME_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}
