package e2e

import (
	"bufio"
	"context"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// controllerBinary builds the controller once per test binary, with the race
// detector on, so that every e2e run also hunts data races in the real process,
// and with the fault points (--crash-at) of build tag faults.
var controllerBinary = sync.OnceValues(func() (string, error) {
	root, err := testbed.RepoRoot()
	if err != nil {
		return "", err
	}
	return testbed.BuildController(filepath.Join(root, "bin", "ingress-acme-e2e"), true, "faults")
})

// controller is a testbed.Controller tied to a test: started ready, stopped at
// the end, its logs printed on failure, and a data race in it fails the test.
type controller struct {
	*testbed.Controller
	t *testing.T
}

// e2eFlags make failures quick to retry and leave order limits to the tests.
// Pebble picks a random profile for an order that names none, so the suite pins
// one: certificates live 90 days unless a test asks for "shortlived".
var e2eFlags = []string{"--acme-profile", "default", "--log-level", "debug", "--retry-base", "1s", "--retry-max", "10s", "--max-orders-per-hour", "50"}

// startController starts a controller for ns (with the ServiceAccount token and
// the manifest's RBAC) with extra flags, and waits until it is ready.
func startController(t *testing.T, ns string, extra ...string) *controller {
	t.Helper()
	c := newController(t, ns, extra...)
	c.start()
	return c
}

// newController prepares a controller for ns without starting it.
func newController(t *testing.T, ns string, extra ...string) *controller {
	t.Helper()
	bin, err := controllerBinary()
	if err != nil {
		t.Fatal(err)
	}
	tc, err := bed.NewController(context.Background(), testbed.ControllerOptions{
		Binary: bin, Namespace: ns, Dir: t.TempDir(), Extra: append(append([]string{}, e2eFlags...), extra...),
	})
	if err != nil {
		t.Fatal(err)
	}
	c := &controller{Controller: tc, t: t}
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			t.Logf("controller logs (%s, last 150 lines):\n%s", ns, c.LogTail(150))
		}
	})
	return c
}

// newControllerWith prepares a controller from opts (Binary is filled in),
// stopped and its logs printed on failure when the test ends.
func newControllerWith(t *testing.T, opts testbed.ControllerOptions) *controller {
	t.Helper()
	bin, err := controllerBinary()
	if err != nil {
		t.Fatal(err)
	}
	opts.Binary = bin
	tc, err := bed.NewController(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	c := &controller{Controller: tc, t: t}
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			t.Logf("controller logs (%s, last 150 lines):\n%s", opts.Namespace, c.LogTail(150))
		}
	})
	return c
}

func (c *controller) start() {
	c.t.Helper()
	if err := c.Start(); err != nil {
		c.t.Fatal(err)
	}
}

// stop ends the process with SIGTERM; a race report fails the test.
func (c *controller) stop() { c.checkExit(c.Stop()) }

// kill ends the process with SIGKILL, as a crash would.
func (c *controller) kill() { c.checkExit(c.Kill()) }

func (c *controller) checkExit(code int) {
	if code == testbed.RaceExitCode {
		c.t.Errorf("the race detector found a data race in the controller:\n%s", c.LogTail(80))
	}
}

func (c *controller) count(msg string, kv ...any) int { return c.Count(msg, kv...) }

// orders is how many ACME orders the controller created, over every run.
func (c *controller) orders() int { return c.Count("order created") }

func (c *controller) logs() []map[string]any { return c.Logs() }

// accounts lists the ACME account URLs the controller used, over every run.
func (c *controller) accounts() []string {
	var out []string
	for _, l := range c.Logs() {
		if u, ok := l["account"].(string); ok && l["msg"] == "acme account ready" && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

func (c *controller) metric(name string, labels ...string) (float64, bool) {
	return c.Metric(name, labels...)
}

// scrape returns the samples of metric family name on the controller's
// /metrics whose labels include every key=value in labels, as label text ->
// value (nil when /metrics cannot be read).
func scrape(c *controller, name string, labels ...string) map[string]float64 {
	resp, err := http.Get("http://" + c.MetricsAddr + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !testbed.MetricLine(line, name, labels...) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[strings.TrimPrefix(line[:i], name)] = v
	}
	return out
}

// metricSum adds up the samples scrape returns.
func metricSum(c *controller, name string, labels ...string) float64 {
	s := 0.0
	for _, v := range scrape(c, name, labels...) {
		s += v
	}
	return s
}
