package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/ingress-acme/ingress-acme/acme"
	"github.com/ingress-acme/ingress-acme/core"
)

// Config is every setting of the controller, filled from flags (each with an
// environment variable fallback, INGRESS_ACME_<FLAG_NAME>) and validated once.
type Config struct {
	Kubeconfig          string
	ACMEDirectory       string
	ACMEEmail           string
	ACMECABundle        string
	ACMEProfile         string
	DefaultChallenge    string
	EABKeyID            string
	EABHMAC             string
	Namespace           string
	ControllerNamespace string
	ChallengeAddr       string
	MetricsAddr         string
	SolverAddress       string
	SolverAddressType   string
	SolverPort          int32
	SolverService       string
	SolverPeersService  string
	SelfCheckAddress    string
	SelfCheckTimeout    time.Duration
	Workers             int
	MaxOrdersInFlight   int
	Settle              time.Duration
	RenewBefore         time.Duration
	MaxOrdersPerHour    int
	ACMELimits          acme.Limits
	RetryBase           time.Duration
	RetryMax            time.Duration
	LeaderElect         bool
	LeaderElectionID    string
	APIQPS              float32
	APIBurst            int
	LogFormat           string
	Profiling           bool
	LogLevel            slog.Level
	Version             bool

	// atStep is called at the steps of an order (watcher.Steps, acme.Steps);
	// a no-op but in test builds (tag faults), where --crash-at sets it.
	atStep func(step string)
}

// parseFlags fills a Config from args, falling back to getenv for each flag not
// given, and validates it.
func parseFlags(args []string, getenv func(string) string) (Config, error) {
	c := Config{atStep: func(string) {}}
	fs, logLevel := newFlagSet(&c)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.Version {
		return c, nil
	}
	errs := setFromEnv(fs, getenv)
	if c.Kubeconfig == "" && !fs.Changed("kubeconfig") {
		c.Kubeconfig = getenv("KUBECONFIG")
	}
	if c.SolverAddress == "" {
		c.SolverAddress = getenv("POD_IP")
	}
	if err := c.LogLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		errs = append(errs, fmt.Errorf("--log-level: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	return c, c.validate()
}

// newFlagSet defines every flag, in the order the usage lists them, bound to the
// fields of c. The log level is returned as text, to be parsed after the
// environment fallbacks are applied.
func newFlagSet(c *Config) (fs *pflag.FlagSet, logLevel *string) {
	fs = pflag.NewFlagSet("ingress-acme", pflag.ContinueOnError)
	fs.SortFlags = false
	addConnectionFlags(fs, c)
	addScopeFlags(fs, c)
	addSolverFlags(fs, c)
	addTuningFlags(fs, c)
	logLevel = addProcessFlags(fs, c)
	addFaultFlags(fs, c)
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: ingress-acme [flags]\n\nEvery flag can also be set with the environment variable INGRESS_ACME_<FLAG_NAME>\n(e.g. INGRESS_ACME_ACME_EMAIL).\n\n%s", fs.FlagUsages())
	}
	return fs, logLevel
}

// addConnectionFlags defines where the controller connects: the Kubernetes API,
// and the ACME CA with the account to use there.
func addConnectionFlags(fs *pflag.FlagSet, c *Config) {
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty: the in-cluster service account")
	fs.StringVar(&c.ACMEDirectory, "acme-directory", acme.LetsEncrypt, "ACME directory URL (Let's Encrypt staging: "+acme.LetsEncryptStaging+")")
	fs.StringVar(&c.ACMEEmail, "acme-email", "", "contact email for the ACME account (optional; the CA may send expiry notices)")
	fs.StringVar(&c.ACMEProfile, "acme-profile", "", "certificate profile to order when an Ingress names none (annotation ingress-acme.io/profile), e.g. Let's Encrypt's tlsserver or shortlived; empty: the CA's default")
	fs.StringVar(&c.ACMECABundle, "acme-ca-bundle", "", "PEM file of extra roots to trust for the ACME directory's TLS (e.g. a test CA's)")
	fs.StringVar(&c.EABKeyID, "acme-eab-key-id", "", "External Account Binding key identifier, for CAs that require one")
	fs.StringVar(&c.EABHMAC, "acme-eab-hmac", "", "External Account Binding HMAC key (base64url)")
}

// addScopeFlags defines which namespaces the controller works in and where its
// servers listen.
func addScopeFlags(fs *pflag.FlagSet, c *Config) {
	fs.StringVar(&c.Namespace, "namespace", "", "watch only this namespace's Ingresses; empty: all namespaces")
	fs.StringVar(&c.ControllerNamespace, "controller-namespace", "ingress-acme", "namespace of the controller's own ACME account Secret and leader Lease")
	fs.StringVar(&c.ChallengeAddr, "challenge-addr", ":8089", "listen address of the HTTP-01 challenge server")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", ":9402", "listen address of /metrics, /healthz and /readyz")
}

// addSolverFlags defines how the challenge server is advertised to the ingress,
// and how challenges are checked through it before asking the CA.
func addSolverFlags(fs *pflag.FlagSet, c *Config) {
	fs.StringVar(&c.SolverAddress, "solver-address", "", "address the solver EndpointSlice advertises for the challenge server (in a cluster: the pod IP, from the downward API as POD_IP)")
	fs.StringVar(&c.SolverAddressType, "solver-address-type", "auto", "EndpointSlice addressType: IPv4, IPv6, FQDN, or auto (from the address)")
	fs.Int32Var(&c.SolverPort, "solver-port", 0, "port the solver EndpointSlice advertises; 0: the challenge server's listen port")
	fs.StringVar(&c.SolverService, "solver-service", "ingress-acme-solver", "name of the solver Service and EndpointSlice created in each namespace with challenges")
	fs.StringVar(&c.SolverPeersService, "solver-peers-service", "", "Service in --controller-namespace that selects every replica (Kubernetes keeps its EndpointSlices from their readiness): the solver EndpointSlices list its ready endpoints, so any replica answers a challenge; empty: this process's --solver-address alone")
	fs.StringVar(&c.DefaultChallenge, "default-challenge", core.ChallengeHTTP01, "challenge type answered when an object names none (annotation ingress-acme.io/challenge): http-01, dns-01 or dns-persist-01; a certificate with a wildcard host gets dns-01 instead of http-01")
	fs.StringVar(&c.SelfCheckAddress, "self-check-address", "", "host:port to send self-checks to (the ingress controller's in-cluster HTTP address, with the Host header set), for clusters without hairpin NAT; empty: the host itself")
	fs.DurationVar(&c.SelfCheckTimeout, "self-check-timeout", 2*time.Minute, "how long a challenge may take to answer through the ingress")
}

// addTuningFlags defines the controller's concurrency, timing, rate limits and
// backoff.
func addTuningFlags(fs *pflag.FlagSet, c *Config) {
	fs.IntVar(&c.Workers, "workers", 16, "certificates synced concurrently (reading, deciding, API writes); orders wait on the ingress and the CA outside them")
	fs.IntVar(&c.MaxOrdersInFlight, "max-orders-in-flight", 100, "most orders waiting on the ingress or the CA at once; more wait their turn, closest to expiry first, then new ones")
	fs.DurationVar(&c.Settle, "settle", 200*time.Millisecond, "wait this long after an Ingress change before acting, so Ingresses applied together share one order")
	fs.DurationVar(&c.RenewBefore, "renew-before", 0, "renew this long before expiry when the CA offers no renewal information (ARI); 0: when a third of the lifetime remains")
	addACMELimitFlags(fs, &c.ACMELimits)
	fs.IntVar(&c.MaxOrdersPerHour, "max-orders-per-hour", 5, "most orders for one certificate in any hour, to spare the CA's rate limits")
	fs.DurationVar(&c.RetryBase, "retry-base", 30*time.Second, "first backoff after a failed order; doubles per failure")
	fs.DurationVar(&c.RetryMax, "retry-max", 6*time.Hour, "longest backoff after failed orders")
}

// addACMELimitFlags defines the request budgets toward the ACME CA, defaulting
// to acme.DefaultLimits.
func addACMELimitFlags(fs *pflag.FlagSet, l *acme.Limits) {
	dl := acme.DefaultLimits()
	fs.Float64Var(&l.RequestsPerSecond, "acme-requests-per-second", dl.RequestsPerSecond, "most requests a second to the ACME directory, all kinds together (Let's Encrypt allows 250 to /acme/* per IP)")
	fs.IntVar(&l.RequestBurst, "acme-request-burst", dl.RequestBurst, "burst of requests to the ACME directory above --acme-requests-per-second")
	fs.IntVar(&l.NewOrdersPer3h, "acme-new-orders-per-3h", dl.NewOrdersPer3h, "most new orders in a burst, refilled evenly over 3 hours (Let's Encrypt allows 300 per account per 3 hours)")
	fs.IntVar(&l.NewAccountsPer3h, "acme-new-accounts-per-3h", dl.NewAccountsPer3h, "most new-account requests (lookups and registrations) in a burst, refilled evenly over 3 hours (Let's Encrypt allows 10 registrations per IP per 3 hours)")
	fs.Float64Var(&l.RenewalInfoPerSecond, "acme-renewal-info-per-second", dl.RenewalInfoPerSecond, "renewal information (ARI) requests a second, evenly spaced with no burst, so checking many certificates at start is spread out")
	fs.DurationVar(&l.MaxWait, "acme-max-wait", dl.MaxWait, "longest a request waits for its turn in these budgets or for the end of the CA's Retry-After; a longer wait fails at once and the certificate backs off until then")
}

// addProcessFlags defines the process-wide settings: leader election, the
// Kubernetes client's rate, logging and --version. It returns the log level as
// given, still to be parsed.
func addProcessFlags(fs *pflag.FlagSet, c *Config) (logLevel *string) {
	hostname, _ := os.Hostname()
	fs.BoolVar(&c.LeaderElect, "leader-elect", true, "run the controller only while holding the Lease ingress-acme in --controller-namespace")
	fs.StringVar(&c.LeaderElectionID, "leader-election-id", hostname, "identity in the Lease (in a cluster: the pod name)")
	fs.Float32Var(&c.APIQPS, "api-qps", 100, "requests per second to the Kubernetes API")
	fs.IntVar(&c.APIBurst, "api-burst", 200, "burst of requests to the Kubernetes API")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.BoolVar(&c.Profiling, "profiling", false, "serve Go's profiles (net/http/pprof) under /debug/pprof/ on --metrics-addr")
	logLevel = fs.String("log-level", "info", "log level: debug, info, warn, error")
	fs.BoolVar(&c.Version, "version", false, "print the version and exit")
	return logLevel
}

// setFromEnv sets each flag of fs not given on the command line from its
// environment variable, if that is set, and returns the values that fail to
// parse.
func setFromEnv(fs *pflag.FlagSet, getenv func(string) string) []error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", envName(f.Name), err))
			}
		}
	})
	return errs
}

// validate checks c, reporting every problem at once, and resolves
// SolverAddressType "auto" to the type of SolverAddress.
func (c *Config) validate() error {
	errs := c.validateACME()
	errs = append(errs, c.validateSolver()...)
	errs = append(errs, c.validateLimits()...)
	errs = append(errs, c.validateTiming()...)
	errs = append(errs, c.validateProcess()...)
	return errors.Join(errs...)
}

// validateACME checks the ACME directory and the External Account Binding.
func (c *Config) validateACME() []error {
	var errs []error
	if u, err := url.Parse(c.ACMEDirectory); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		errs = append(errs, fmt.Errorf("--acme-directory %q: want an http(s) URL", c.ACMEDirectory))
	}
	if (c.EABKeyID == "") != (c.EABHMAC == "") {
		errs = append(errs, errors.New("--acme-eab-key-id and --acme-eab-hmac go together"))
	}
	return errs
}

// validateSolver checks the controller namespace and the solver's address, and
// resolves its type.
func (c *Config) validateSolver() []error {
	var errs []error
	if c.ControllerNamespace == "" {
		errs = append(errs, errors.New("--controller-namespace is required"))
	}
	if c.SolverAddress == "" {
		errs = append(errs, errors.New("--solver-address is required (in a cluster, set POD_IP from the downward API)"))
	}
	if err := c.resolveSolverAddressType(); err != nil {
		errs = append(errs, err)
	}
	switch c.DefaultChallenge {
	case core.ChallengeHTTP01, core.ChallengeDNS01, core.ChallengeDNSPersist01:
	default:
		errs = append(errs, fmt.Errorf("--default-challenge %q: want %s, %s or %s", c.DefaultChallenge, core.ChallengeHTTP01, core.ChallengeDNS01, core.ChallengeDNSPersist01))
	}
	return errs
}

// resolveSolverAddressType sets SolverAddressType to its canonical spelling,
// working out "auto" from SolverAddress.
func (c *Config) resolveSolverAddressType() error {
	switch strings.ToLower(c.SolverAddressType) {
	case "auto":
		switch ip := net.ParseIP(c.SolverAddress); {
		case ip == nil:
			c.SolverAddressType = "FQDN"
		case ip.To4() != nil:
			c.SolverAddressType = "IPv4"
		default:
			c.SolverAddressType = "IPv6"
		}
	case "ipv4":
		c.SolverAddressType = "IPv4"
	case "ipv6":
		c.SolverAddressType = "IPv6"
	case "fqdn":
		c.SolverAddressType = "FQDN"
	default:
		return fmt.Errorf("--solver-address-type %q: want IPv4, IPv6, FQDN or auto", c.SolverAddressType)
	}
	return nil
}

// validateLimits checks the concurrency and the order and ACME request budgets.
func (c *Config) validateLimits() []error {
	var errs []error
	if c.Workers < 1 {
		errs = append(errs, errors.New("--workers must be at least 1"))
	}
	if c.MaxOrdersInFlight < 1 {
		errs = append(errs, errors.New("--max-orders-in-flight must be at least 1"))
	}
	if c.MaxOrdersPerHour < 1 {
		errs = append(errs, errors.New("--max-orders-per-hour must be at least 1"))
	}
	l := c.ACMELimits
	for flag, ok := range map[string]bool{
		"--acme-requests-per-second":     l.RequestsPerSecond > 0,
		"--acme-request-burst":           l.RequestBurst > 0,
		"--acme-new-orders-per-3h":       l.NewOrdersPer3h > 0,
		"--acme-new-accounts-per-3h":     l.NewAccountsPer3h > 0,
		"--acme-renewal-info-per-second": l.RenewalInfoPerSecond > 0,
		"--acme-max-wait":                l.MaxWait > 0,
	} {
		if !ok {
			errs = append(errs, fmt.Errorf("%s must be positive", flag))
		}
	}
	return errs
}

// validateTiming checks the backoff, settle and self-check durations.
func (c *Config) validateTiming() []error {
	var errs []error
	if c.RetryBase <= 0 || c.RetryMax < c.RetryBase {
		errs = append(errs, errors.New("--retry-base must be positive and at most --retry-max"))
	}
	if c.Settle < 0 || c.Settle > time.Minute {
		errs = append(errs, errors.New("--settle must be between 0 and 1m"))
	}
	if c.SelfCheckTimeout <= 0 {
		errs = append(errs, errors.New("--self-check-timeout must be positive"))
	}
	return errs
}

// validateProcess checks leader election and the log format.
func (c *Config) validateProcess() []error {
	var errs []error
	if c.LeaderElect && c.LeaderElectionID == "" {
		errs = append(errs, errors.New("--leader-election-id is required with --leader-elect"))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format %q: want text or json", c.LogFormat))
	}
	return errs
}
