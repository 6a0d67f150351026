package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// /healthz answers while the process runs; /readyz once it knows who leads. A
// follower (same namespace, same ServiceAccount, another identity) is ready as
// soon as it sees the leader, so a rolling update can proceed, but orders
// nothing; when the leader goes, it takes over without ordering again. A
// process that cannot see the Lease at all is alive but not ready.
func TestHealthEndpoints(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	leader := startController(t, ns)
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpGet(t, leader.MetricsAddr, path); code != http.StatusOK || body != "ok" {
			t.Errorf("leader %s: got %d %q, want 200 \"ok\"", path, code, body)
		}
	}
	waitFor(t, 10*time.Second, "the first controller to lead", func() (bool, string) {
		return leader.count("leading") == 1, "not leading yet"
	})

	follower := startController(t, ns, "--leader-election-id", "other")
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpGet(t, follower.MetricsAddr, path); code != http.StatusOK || body != "ok" {
			t.Errorf("follower %s: got %d %q, want 200 \"ok\" (leader known)", path, code, body)
		}
	}
	waitFor(t, 5*time.Second, "the follower to log the leader", func() (bool, string) {
		return follower.count("leader", "identity", "testbed-"+ns) > 0, "no leader logged"
	})

	startBackend(t, ns, "web")
	h := host(ns, "ha")
	createIngress(t, ninetyDayIngress(ns, "ha", "web", h))
	_, leaf := waitCertificate(t, ns, "ha-tls", 60*time.Second, h)
	waitServed(t, h, leaf, servedWithin)
	if n := leader.orders(); n != 1 {
		t.Errorf("leader orders: got %d, want 1", n)
	}
	if n := follower.orders(); n != 0 {
		t.Errorf("follower orders: got %d, want 0", n)
	}
	if n := follower.count("leading"); n != 0 {
		t.Errorf("the follower led %d times while the leader ran", n)
	}
	if _, ok := follower.metric("ingress_acme_certificate_expiry_timestamp_seconds", "namespace", ns); ok {
		t.Error("the follower reports certificates: it is not reconciling, it must not")
	}
	if code, _ := httpGet(t, follower.MetricsAddr, "/readyz"); code != http.StatusOK {
		t.Errorf("follower /readyz after the issuance: got %d, want 200", code)
	}

	// The leader steps down (its Lease is released on SIGTERM): the follower
	// takes over, finds the certificate valid, and orders nothing.
	leader.stop()
	waitFor(t, 30*time.Second, "the follower to take over", func() (bool, string) {
		return follower.count("leading") == 1, "not leading yet"
	})
	waitFor(t, 20*time.Second, "the new leader to look at the certificate", func() (bool, string) {
		_, ok := follower.metric("ingress_acme_certificate_expiry_timestamp_seconds", "namespace", ns, "secret", "ha-tls")
		return ok, "no expiry metric yet"
	})
	if code, body := httpGet(t, follower.MetricsAddr, "/readyz"); code != http.StatusOK {
		t.Errorf("new leader /readyz: got %d %q, want 200", code, body)
	}
	if n := follower.orders(); n != 0 {
		t.Errorf("orders by the new leader: got %d, want 0 (the certificate is valid)", n)
	}

	// A process whose Lease namespace it may not read never learns who leads:
	// alive (/healthz 200, so it is not restarted), not ready (/readyz 503).
	blindNS := newNamespace(t) // no Role here: leases are forbidden
	blind := newController(t, ns, "--controller-namespace", blindNS, "--leader-election-id", "blind")
	started := make(chan error, 1)
	go func() { started <- blind.Start() }()
	waitFor(t, 30*time.Second, "/readyz 503 from a process that cannot see the Lease", func() (bool, string) {
		code, body := httpGetQuiet(blind.MetricsAddr, "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "leader not known"), fmt.Sprintf("%d %q", code, body)
	})
	time.Sleep(3 * time.Second) // more than a retry period of the elector: still not ready
	if code, body := httpGetQuiet(blind.MetricsAddr, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("blind /readyz: got %d %q, want 503", code, body)
	}
	if code, body := httpGetQuiet(blind.MetricsAddr, "/healthz"); code != http.StatusOK {
		t.Errorf("blind /healthz: got %d %q, want 200", code, body)
	}
	blind.stop()
	if err := <-started; err == nil {
		t.Error("a controller that cannot see the Lease became ready")
	}
	if n := blind.orders(); n != 0 {
		t.Errorf("blind orders: got %d, want 0", n)
	}
}

// httpGet GETs http://addr+path and returns the status and trimmed body.
func httpGet(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	code, body := httpGetQuiet(addr, path)
	if code == 0 {
		t.Fatalf("GET %s%s: %s", addr, path, body)
	}
	return code, body
}

// httpGetQuiet is httpGet returning code 0 and the error as body on failure.
func httpGetQuiet(addr, path string) (int, string) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}
