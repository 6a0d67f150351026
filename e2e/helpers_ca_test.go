package e2e

import (
	"context"
	"crypto/x509"
	"testing"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// CAs of a test's own, and a proxy that counts what a CA is asked.

// newCAProxy starts a testbed.CAProxy in front of directory, closed when the
// test ends, with its request counts logged if the test failed.
func newCAProxy(t *testing.T, directory string) *testbed.CAProxy {
	t.Helper()
	p, err := bed.NewCAProxy(directory)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("requests the CA saw (method endpoint status: count):\n%s", p.Summary())
		}
		p.Close()
	})
	return p
}

// startCA starts a Pebble of the test's own with opts (named after ns), and
// returns it and its root; it is stopped when the test ends.
func startCA(t *testing.T, ns string, opts testbed.CAOptions) (*testbed.ExtraCA, *x509.CertPool) {
	t.Helper()
	ctx := context.Background()
	ca, err := bed.StartCA(ctx, ns, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ca.Stop)
	roots, err := ca.RootPool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ca, roots
}
