// Package e2e runs ingress-acme's end-to-end tests against a real testbed
// (etcd, kube-apiserver, Pebble, Traefik) started once for the test binary.
package e2e

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// shortLived is the validity of certificates ordered with the "shortlived"
// profile (annotation ingress-acme.io/profile), for renewal tests.
const shortLived = 20 * time.Second

// bed is the testbed shared by every test of the package.
var bed *testbed.Testbed

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	logger := log.New(os.Stderr, "", log.Ltime|log.Lmicroseconds)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// SIGINT/SIGTERM: stop the testbed (Start included, which may be running
	// hack/tools.sh) and leave; nothing may outlive the test binary.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	started := make(chan *testbed.Testbed, 1)
	go func() {
		sig := <-sigs
		logger.Printf("e2e: %v: stopping the testbed", sig)
		cancel()
		if tb := <-started; tb != nil {
			tb.Stop()
		}
		os.Exit(130)
	}()

	tb, err := testbed.Start(ctx, testbed.Options{Logf: logger.Printf, ShortLivedValidity: shortLived})
	if err != nil {
		started <- nil
		fmt.Fprintf(os.Stderr, "e2e: FAIL: %v\n", err)
		return 1
	}
	started <- tb
	bed = tb
	defer tb.Stop()
	return m.Run()
}
