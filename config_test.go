package main

import (
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/ingress-acme/ingress-acme/acme"
)

// envOf is a fake getenv over a map.
func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseFlagsDefaults(t *testing.T) {
	c, err := parseFlags(nil, envOf(map[string]string{"POD_IP": "10.1.2.3"}))
	if err != nil {
		t.Fatal(err)
	}
	hostname, _ := os.Hostname()
	checks := []struct {
		name      string
		got, want any
	}{
		{"Kubeconfig", c.Kubeconfig, ""},
		{"ACMEDirectory", c.ACMEDirectory, acme.LetsEncrypt},
		{"ACMEEmail", c.ACMEEmail, ""},
		{"EABKeyID", c.EABKeyID, ""},
		{"Namespace", c.Namespace, ""},
		{"ControllerNamespace", c.ControllerNamespace, "ingress-acme"},
		{"ChallengeAddr", c.ChallengeAddr, ":8089"},
		{"MetricsAddr", c.MetricsAddr, ":9402"},
		{"SolverAddress", c.SolverAddress, "10.1.2.3"},
		{"SolverAddressType", c.SolverAddressType, "IPv4"},
		{"SolverPort", c.SolverPort, int32(0)},
		{"SolverService", c.SolverService, "ingress-acme-solver"},
		{"SelfCheckAddress", c.SelfCheckAddress, ""},
		{"SelfCheckTimeout", c.SelfCheckTimeout, 2 * time.Minute},
		{"Workers", c.Workers, 16},
		{"Settle", c.Settle, 200 * time.Millisecond},
		{"RenewBefore", c.RenewBefore, time.Duration(0)},
		{"MaxOrdersPerHour", c.MaxOrdersPerHour, 5},
		{"ACMELimits", c.ACMELimits, acme.Limits{RequestsPerSecond: 20, RequestBurst: 40, NewOrdersPer3h: 240, NewAccountsPer3h: 8, RenewalInfoPerSecond: 10, MaxWait: time.Minute}},
		{"ACMELimits are acme's defaults", c.ACMELimits, acme.DefaultLimits()},
		{"RetryBase", c.RetryBase, 30 * time.Second},
		{"RetryMax", c.RetryMax, 6 * time.Hour},
		{"LeaderElect", c.LeaderElect, true},
		{"LeaderElectionID", c.LeaderElectionID, hostname},
		{"APIQPS", c.APIQPS, float32(100)},
		{"APIBurst", c.APIBurst, 200},
		{"LogFormat", c.LogFormat, "text"},
		{"LogLevel", c.LogLevel, slog.LevelInfo},
		{"Version", c.Version, false},
	}
	for _, ch := range checks {
		t.Run(ch.name, func(t *testing.T) {
			if ch.got != ch.want {
				t.Errorf("got %v, want %v", ch.got, ch.want)
			}
		})
	}
}

func TestParseFlagsEnvFallback(t *testing.T) {
	env := map[string]string{
		"INGRESS_ACME_ACME_DIRECTORY":         "https://pebble:14000/dir",
		"INGRESS_ACME_ACME_EMAIL":             "ops@example.com",
		"INGRESS_ACME_ACME_EAB_KEY_ID":        "kid",
		"INGRESS_ACME_ACME_EAB_HMAC":          "aG1hYw",
		"INGRESS_ACME_NAMESPACE":              "shop",
		"INGRESS_ACME_SOLVER_ADDRESS":         "fd00::7",
		"INGRESS_ACME_SOLVER_PORT":            "8080",
		"INGRESS_ACME_SELF_CHECK_TIMEOUT":     "30s",
		"INGRESS_ACME_WORKERS":                "4",
		"INGRESS_ACME_RENEW_BEFORE":           "720h",
		"INGRESS_ACME_LEADER_ELECT":           "false",
		"INGRESS_ACME_API_QPS":                "5.5",
		"INGRESS_ACME_ACME_NEW_ORDERS_PER_3H": "100000",
		"INGRESS_ACME_LOG_FORMAT":             "json",
		"INGRESS_ACME_LOG_LEVEL":              "DEBUG",
		"INGRESS_ACME_CONTROLLER_NAMESPACE":   "acme-system",
		"POD_IP":                              "10.1.2.3",
		"KUBECONFIG":                          "/home/me/.kube/config",
	}
	c, err := parseFlags(nil, envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"ACMEDirectory", c.ACMEDirectory, "https://pebble:14000/dir"},
		{"ACMEEmail", c.ACMEEmail, "ops@example.com"},
		{"EABKeyID", c.EABKeyID, "kid"},
		{"EABHMAC", c.EABHMAC, "aG1hYw"},
		{"Namespace", c.Namespace, "shop"},
		{"ControllerNamespace", c.ControllerNamespace, "acme-system"},
		{"SolverAddress (env beats POD_IP)", c.SolverAddress, "fd00::7"},
		{"SolverAddressType", c.SolverAddressType, "IPv6"},
		{"SolverPort", c.SolverPort, int32(8080)},
		{"SelfCheckTimeout", c.SelfCheckTimeout, 30 * time.Second},
		{"Workers", c.Workers, 4},
		{"RenewBefore", c.RenewBefore, 720 * time.Hour},
		{"LeaderElect", c.LeaderElect, false},
		{"APIQPS", c.APIQPS, float32(5.5)},
		{"NewOrdersPer3h", c.ACMELimits.NewOrdersPer3h, 100000},
		{"LogFormat", c.LogFormat, "json"},
		{"LogLevel", c.LogLevel, slog.LevelDebug},
		{"Kubeconfig from KUBECONFIG", c.Kubeconfig, "/home/me/.kube/config"},
	}
	for _, ch := range checks {
		t.Run(ch.name, func(t *testing.T) {
			if ch.got != ch.want {
				t.Errorf("got %v, want %v", ch.got, ch.want)
			}
		})
	}
}

func TestParseFlagsPrecedence(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		get  func(Config) any
		want any
	}{
		{
			name: "flag beats env",
			args: []string{"--workers=8"},
			env:  map[string]string{"INGRESS_ACME_WORKERS": "4", "POD_IP": "10.0.0.1"},
			get:  func(c Config) any { return c.Workers },
			want: 8,
		},
		{
			name: "flag beats env even when it is the default value",
			args: []string{"--workers=16"},
			env:  map[string]string{"INGRESS_ACME_WORKERS": "4", "POD_IP": "10.0.0.1"},
			get:  func(c Config) any { return c.Workers },
			want: 16,
		},
		{
			name: "--solver-address beats its env and POD_IP",
			args: []string{"--solver-address", "solver.example.com"},
			env:  map[string]string{"INGRESS_ACME_SOLVER_ADDRESS": "10.9.9.9", "POD_IP": "10.0.0.1"},
			get:  func(c Config) any { return c.SolverAddress + " " + c.SolverAddressType },
			want: "solver.example.com FQDN",
		},
		{
			name: "POD_IP when nothing else",
			env:  map[string]string{"POD_IP": "fd00::1"},
			get:  func(c Config) any { return c.SolverAddress + " " + c.SolverAddressType },
			want: "fd00::1 IPv6",
		},
		{
			name: "INGRESS_ACME_KUBECONFIG beats KUBECONFIG",
			env:  map[string]string{"INGRESS_ACME_KUBECONFIG": "/a", "KUBECONFIG": "/b", "POD_IP": "10.0.0.1"},
			get:  func(c Config) any { return c.Kubeconfig },
			want: "/a",
		},
		{
			name: "--kubeconfig beats both",
			args: []string{"--kubeconfig=/c"},
			env:  map[string]string{"INGRESS_ACME_KUBECONFIG": "/a", "KUBECONFIG": "/b", "POD_IP": "10.0.0.1"},
			get:  func(c Config) any { return c.Kubeconfig },
			want: "/c",
		},
		{
			name: "an explicitly empty --kubeconfig means in-cluster",
			args: []string{"--kubeconfig="},
			env:  map[string]string{"KUBECONFIG": "/b", "POD_IP": "10.0.0.1"},
			get:  func(c Config) any { return c.Kubeconfig },
			want: "",
		},
		{
			name: "flag beats env for a bool",
			args: []string{"--leader-elect=true"},
			env:  map[string]string{"INGRESS_ACME_LEADER_ELECT": "false", "POD_IP": "10.0.0.1"},
			get:  func(c Config) any { return c.LeaderElect },
			want: true,
		},
		{
			name: "--log-level beats env",
			args: []string{"--log-level=error"},
			env:  map[string]string{"INGRESS_ACME_LOG_LEVEL": "debug", "POD_IP": "10.0.0.1"},
			get:  func(c Config) any { return c.LogLevel },
			want: slog.LevelError,
		},
		{
			name: "an empty env value is ignored",
			env:  map[string]string{"INGRESS_ACME_WORKERS": "", "POD_IP": "10.0.0.1"},
			get:  func(c Config) any { return c.Workers },
			want: 16,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseFlags(tt.args, envOf(tt.env))
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.get(c); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseFlagsSolverAddressType(t *testing.T) {
	tests := []struct {
		address, typ string
		want         string
		wantErr      bool
	}{
		{address: "10.0.0.7", typ: "auto", want: "IPv4"},
		{address: "fd00::7", typ: "auto", want: "IPv6"},
		{address: "2001:db8::1", typ: "AUTO", want: "IPv6"},
		{address: "solver.ingress-acme.svc.cluster.local", typ: "auto", want: "FQDN"},
		{address: "10.0.0.7", typ: "ipv4", want: "IPv4"},
		{address: "fd00::7", typ: "IPV6", want: "IPv6"},
		{address: "solver.example.com", typ: "fqdn", want: "FQDN"},
		{address: "10.0.0.7", typ: "ipv5", wantErr: true},
		{address: "10.0.0.7", typ: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.address+" "+tt.typ, func(t *testing.T) {
			c, err := parseFlags([]string{"--solver-address", tt.address, "--solver-address-type", tt.typ}, envOf(nil))
			if (err != nil) != tt.wantErr {
				t.Fatalf("got err %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), "--solver-address-type") {
					t.Errorf("got %q, want it to name --solver-address-type", err)
				}
				return
			}
			if c.SolverAddressType != tt.want {
				t.Errorf("got %q, want %q", c.SolverAddressType, tt.want)
			}
		})
	}
}

func TestParseFlagsErrors(t *testing.T) {
	base := map[string]string{"POD_IP": "10.0.0.1", "INGRESS_ACME_LEADER_ELECTION_ID": "pod-0"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string // substring; "" for no error
	}{
		{name: "valid", env: base},
		{name: "EAB both", args: []string{"--acme-eab-key-id=k", "--acme-eab-hmac=h"}, env: base},
		{name: "EAB key id only", args: []string{"--acme-eab-key-id=k"}, env: base, wantErr: "go together"},
		{name: "EAB HMAC only", args: []string{"--acme-eab-hmac=h"}, env: base, wantErr: "go together"},
		{name: "EAB HMAC only from env", env: with("INGRESS_ACME_ACME_EAB_HMAC", "h"), wantErr: "go together"},
		{name: "directory without scheme", args: []string{"--acme-directory=acme.example/dir"}, env: base, wantErr: "--acme-directory"},
		{name: "directory ftp", args: []string{"--acme-directory=ftp://acme.example/dir"}, env: base, wantErr: "--acme-directory"},
		{name: "directory without host", args: []string{"--acme-directory=https:///dir"}, env: base, wantErr: "--acme-directory"},
		{name: "directory unparsable", args: []string{"--acme-directory=http://[::1"}, env: base, wantErr: "--acme-directory"},
		{name: "directory plain http is allowed", args: []string{"--acme-directory=http://pebble:14000/dir"}, env: base},
		{name: "workers 0", args: []string{"--workers=0"}, env: base, wantErr: "--workers"},
		{name: "workers negative from env", env: with("INGRESS_ACME_WORKERS", "-1"), wantErr: "--workers"},
		{name: "workers not a number in env", env: with("INGRESS_ACME_WORKERS", "many"), wantErr: "INGRESS_ACME_WORKERS"},
		{name: "max orders 0", args: []string{"--max-orders-per-hour=0"}, env: base, wantErr: "--max-orders-per-hour"},
		{name: "acme limits for a testbed", args: []string{"--acme-requests-per-second=1000", "--acme-request-burst=1000", "--acme-new-orders-per-3h=1000000", "--acme-new-accounts-per-3h=1000", "--acme-renewal-info-per-second=1000", "--acme-max-wait=5m"}, env: base},
		{name: "requests per second 0", args: []string{"--acme-requests-per-second=0"}, env: base, wantErr: "--acme-requests-per-second"},
		{name: "request burst 0", args: []string{"--acme-request-burst=0"}, env: base, wantErr: "--acme-request-burst"},
		{name: "new orders 0", args: []string{"--acme-new-orders-per-3h=0"}, env: base, wantErr: "--acme-new-orders-per-3h"},
		{name: "new accounts negative", args: []string{"--acme-new-accounts-per-3h=-1"}, env: base, wantErr: "--acme-new-accounts-per-3h"},
		{name: "renewal info 0 from env", env: with("INGRESS_ACME_ACME_RENEWAL_INFO_PER_SECOND", "0"), wantErr: "--acme-renewal-info-per-second"},
		{name: "max wait 0", args: []string{"--acme-max-wait=0s"}, env: base, wantErr: "--acme-max-wait"},
		{name: "retry base above max", args: []string{"--retry-base=2h", "--retry-max=1h"}, env: base, wantErr: "--retry-base"},
		{name: "retry base 0", args: []string{"--retry-base=0s"}, env: base, wantErr: "--retry-base"},
		{name: "settle 0 is allowed", args: []string{"--settle=0s"}, env: base},
		{name: "settle negative", args: []string{"--settle=-1s"}, env: base, wantErr: "--settle"},
		{name: "settle too long", args: []string{"--settle=2m"}, env: base, wantErr: "--settle"},
		{name: "self-check timeout 0", args: []string{"--self-check-timeout=0s"}, env: base, wantErr: "--self-check-timeout"},
		{name: "bad log level", args: []string{"--log-level=loud"}, env: base, wantErr: "--log-level"},
		{name: "bad log level from env", env: with("INGRESS_ACME_LOG_LEVEL", "loud"), wantErr: "--log-level"},
		{name: "bad log format", args: []string{"--log-format=xml"}, env: base, wantErr: "--log-format"},
		{name: "no controller namespace", args: []string{"--controller-namespace="}, env: base, wantErr: "--controller-namespace"},
		{name: "no solver address", env: map[string]string{"INGRESS_ACME_LEADER_ELECTION_ID": "pod-0"}, wantErr: "--solver-address"},
		{name: "leader election without id", args: []string{"--leader-election-id="}, env: map[string]string{"POD_IP": "10.0.0.1"}, wantErr: "--leader-election-id"},
		{name: "no leader election, no id needed", args: []string{"--leader-elect=false", "--leader-election-id="}, env: map[string]string{"POD_IP": "10.0.0.1"}},
		{name: "unknown flag", args: []string{"--no-such-flag"}, env: base, wantErr: "no-such-flag"},
		{name: "workers not a number", args: []string{"--workers=x"}, env: base, wantErr: "workers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFlags(tt.args, envOf(tt.env))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("got %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("got nil, want an error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseFlagsReportsEveryError(t *testing.T) {
	_, err := parseFlags([]string{"--workers=0", "--log-format=xml", "--acme-eab-key-id=k"}, envOf(map[string]string{"POD_IP": "10.0.0.1"}))
	if err == nil {
		t.Fatal("got nil, want errors")
	}
	for _, want := range []string{"--workers", "--log-format", "go together"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("got %q, want it to contain %q", err, want)
		}
	}
}

func TestParseFlagsHelp(t *testing.T) {
	stderr := os.Stderr
	devnull, err := os.Open(os.DevNull)
	if err == nil {
		os.Stderr = devnull // the usage text
		defer func() { os.Stderr = stderr; devnull.Close() }()
	}
	_, err = parseFlags([]string{"--help"}, envOf(nil))
	if !errors.Is(err, pflag.ErrHelp) {
		t.Errorf("got %v, want pflag.ErrHelp", err)
	}
}

func TestEnvName(t *testing.T) {
	tests := []struct{ flag, want string }{
		{"workers", "INGRESS_ACME_WORKERS"},
		{"acme-eab-key-id", "INGRESS_ACME_ACME_EAB_KEY_ID"},
		{"self-check-timeout", "INGRESS_ACME_SELF_CHECK_TIMEOUT"},
	}
	for _, tt := range tests {
		t.Run(tt.flag, func(t *testing.T) {
			if got := envName(tt.flag); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseFlagsVersion(t *testing.T) {
	// --version works anywhere, also without the settings a run needs.
	c, err := parseFlags([]string{"--version"}, envOf(nil))
	if err != nil {
		t.Fatalf("got %v, want nil", err)
	}
	if !c.Version {
		t.Errorf("got Version %v, want true", c.Version)
	}
}
