package testbed

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
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

// AddDNS makes pebble-challtestsrv answer host with the IPv4 address addr
// instead of 127.0.0.1 (a loopback address where nothing listens, say, makes
// the CA's validation of host fail).
func (tb *Testbed) AddDNS(ctx context.Context, host, addr string) error {
	body, _ := json.Marshal(map[string]any{"host": host, "addresses": []string{addr}})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tb.ChallTestSrvManagement+"/add-a", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("testbed: add-a %s: %w", host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("testbed: add-a %s: %s: %s", host, resp.Status, b)
	}
	return nil
}

// Proxy forwards TCP connections from Addr to a target, and can cut them off
// and let them through again, to make a server unreachable for a while.
type Proxy struct {
	Addr   string
	target string

	// mu guards ln, conns and closed.
	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]bool
	closed bool
}

// NewProxy starts a Proxy on a free loopback port forwarding to target.
func NewProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, conns: map[net.Conn]bool{}}
	p.serve(ln)
	return p, nil
}

func (p *Proxy) serve(ln net.Listener) {
	p.ln = ln
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.forward(c)
		}
	}()
}

func (p *Proxy) forward(c net.Conn) {
	up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.ln == nil {
		p.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	p.conns[c], p.conns[up] = true, true
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// Cut refuses new connections and closes the open ones.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
}

// Restore accepts connections again on the same address.
func (p *Proxy) Restore() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil || p.closed {
		return nil
	}
	ln, err := net.Listen("tcp", p.Addr)
	if err != nil {
		return err
	}
	p.serve(ln)
	return nil
}

// Close cuts the proxy for good.
func (p *Proxy) Close() {
	p.Cut()
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
}
