package testbed

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// ExtraCA is a second Pebble on the testbed, with its own settings (say,
// PEBBLE_WFE_NONCEREJECT), validating through the same Traefik and DNS.
type ExtraCA struct {
	Directory  string // https://127.0.0.1:PORT/dir
	Management string // https://127.0.0.1:PORT

	tb   *Testbed
	name string
}

// ExtraPebble starts Pebble "pebble-<name>" with env added to
// PEBBLE_VA_NOSLEEP=1, requiring External Account Binding with eabKeys (key ID
// -> base64url HMAC key) unless that is empty, and waits until it serves. It is
// stopped by Stop on it, or with the testbed.
func (tb *Testbed) ExtraPebble(ctx context.Context, name string, env []string, eabKeys map[string]string) (*ExtraCA, error) {
	return tb.startPebble(ctx, name, env, func(port, mgmt int) ([]byte, error) { return tb.pebbleJSONFor(port, mgmt, eabKeys) })
}

// startPebble starts Pebble "pebble-<name>" with env on two free ports, with
// the configuration config makes for them, and waits until it serves.
func (tb *Testbed) startPebble(ctx context.Context, name string, env []string, config func(port, mgmt int) ([]byte, error)) (*ExtraCA, error) {
	for _, e := range env {
		if bytes.HasPrefix([]byte(e), []byte("PEBBLE_VA_ALWAYS_VALID")) {
			return nil, errors.New("testbed: PEBBLE_VA_ALWAYS_VALID is refused: challenges must really be validated")
		}
	}
	var port, mgmt int
	if err := freePorts(&port, &mgmt); err != nil {
		return nil, err
	}
	cfg, err := config(port, mgmt)
	if err != nil {
		return nil, err
	}
	pname := "pebble-" + name
	cfgPath := filepath.Join(tb.Dir, "conf", pname+".json")
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		return nil, err
	}
	ca := &ExtraCA{Directory: "https://" + hostPort(port) + "/dir", Management: "https://" + hostPort(mgmt), tb: tb, name: pname}
	p := &process{
		name:    pname,
		logPath: filepath.Join(tb.Dir, "logs", pname+".log"),
		pidPath: filepath.Join(tb.Dir, "run", pname+".pid"),
		grace:   5 * time.Second,
		timeout: 30 * time.Second,
		command: func() ([]string, []string) {
			return []string{tb.Tools.Pebble, "-config", cfgPath, "-dnsserver", tb.ChallTestSrvDNS}, append([]string{"PEBBLE_VA_NOSLEEP=1"}, env...)
		},
		ready: func(ctx context.Context) error {
			_, err := get(ctx, tb.PebbleClient(), ca.Directory, "")
			return err
		},
	}
	tb.mu.Lock()
	if _, dup := tb.procs[pname]; dup {
		tb.mu.Unlock()
		return nil, fmt.Errorf("testbed: %s exists", pname)
	}
	tb.procs[pname] = p
	tb.mu.Unlock()
	if err := tb.run(ctx, p); err != nil {
		ca.Stop()
		return nil, fmt.Errorf("testbed: %w\n%s", err, p.tail(30))
	}
	tb.logf("testbed: %s up at %s (%v)", pname, ca.Directory, env)
	return ca, nil
}

// Stop stops this Pebble.
func (ca *ExtraCA) Stop() {
	ca.tb.mu.Lock()
	defer ca.tb.mu.Unlock()
	if p := ca.tb.procs[ca.name]; p != nil && p.running() {
		p.stop()
	}
}

// Restart stops this Pebble (if it runs) and starts it again on the same
// addresses and configuration, waiting until it serves. Like the testbed's own
// Pebble after StartProcess, it comes back with new roots and no state: every
// account, order and authorization it held is gone.
func (ca *ExtraCA) Restart(ctx context.Context) error {
	ca.Stop()
	ca.tb.mu.Lock()
	p := ca.tb.procs[ca.name]
	ca.tb.mu.Unlock()
	if p == nil {
		return fmt.Errorf("testbed: %s is not known", ca.name)
	}
	if err := ca.tb.run(ctx, p); err != nil {
		ca.Stop()
		return fmt.Errorf("testbed: restart %s: %w\n%s", ca.name, err, p.tail(30))
	}
	return nil
}

// RootPool returns a pool with this Pebble's current root.
func (ca *ExtraCA) RootPool(ctx context.Context) (*x509.CertPool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ca.Management+"/roots/0", nil)
	if err != nil {
		return nil, err
	}
	resp, err := ca.tb.PebbleClient().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	pem, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("testbed: no certificate in %s/roots/0", ca.Management)
	}
	return pool, nil
}

// CAOptions configure StartCA.
type CAOptions struct {
	// Env is added to PEBBLE_VA_NOSLEEP=1 (PEBBLE_VA_ALWAYS_VALID is refused).
	Env []string
	// Profiles sets the validity of Pebble's profiles by name, replacing the
	// testbed's ("default", "shortlived") or adding new ones.
	Profiles map[string]time.Duration
	// HTTPPort is where Pebble sends its HTTP-01 validation requests, on the
	// address the host resolves to (127.0.0.1); 0 means Traefik's web
	// entrypoint.
	HTTPPort int
}

// StartCA starts Pebble "pebble-<name>" configured as the testbed's own but
// for opts, and waits until it serves. It is stopped by Stop on it, or with
// the testbed. Its Directory and Management verify with PebbleCAFile, and the
// certificates it issues with its RootPool.
func (tb *Testbed) StartCA(ctx context.Context, name string, opts CAOptions) (*ExtraCA, error) {
	ca, err := tb.startPebble(ctx, name, opts.Env, func(port, mgmt int) ([]byte, error) { return tb.caConfig(port, mgmt, opts) })
	if err == nil {
		tb.logf("testbed: %s sends http-01 to port %d, profiles %v", ca.name, opts.HTTPPort, opts.Profiles)
	}
	return ca, err
}

// caConfig is the testbed's Pebble configuration on port and mgmt, changed as
// opts says.
func (tb *Testbed) caConfig(port, mgmt int, opts CAOptions) ([]byte, error) {
	base, err := tb.pebbleJSONFor(port, mgmt, nil)
	if err != nil {
		return nil, err
	}
	var cfg map[string]map[string]any
	if err := json.Unmarshal(base, &cfg); err != nil {
		return nil, err
	}
	pc := cfg["pebble"]
	if opts.HTTPPort != 0 {
		pc["httpPort"] = opts.HTTPPort
	}
	profiles, _ := pc["profiles"].(map[string]any)
	for p, validity := range opts.Profiles {
		if validity < time.Second {
			return nil, fmt.Errorf("testbed: profile %s: validity %s is under a second", p, validity)
		}
		profiles[p] = map[string]any{"description": "profile " + p, "validityPeriod": int64(validity / time.Second)}
	}
	return json.MarshalIndent(cfg, "", "  ")
}
