// Package e2e runs ingress-acme's end-to-end tests against a real testbed
// (etcd, kube-apiserver, Pebble, Traefik) started once for the test binary.
//
// Where things are:
//
//   - testbed/: the testbed (its processes, extra CAs, data planes, controller
//     processes), shared with cmd/demo (make demo) and cmd/bench (make bench).
//   - soak/: the randomized soak, run by TestSoak in soak_test.go (make soak).
//   - testdata/: fixtures, such as the promtool unit test of the alerts.
//   - controller_test.go and helpers*_test.go: what the tests share
//     (namespaces, Ingresses, waiting, controllers, Events, CAs, watchers).
//   - Every other _test.go file holds the tests of one subject: smoke, core,
//     issue, hosts, options, crash, durable, fault, failover, fairness,
//     renewal_storm, matrix (the data planes), and for operators prometheus,
//     metrics, alerts, dashboard, health and manifest.
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
