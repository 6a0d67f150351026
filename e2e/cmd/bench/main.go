// Command bench measures ingress-acme on the local testbed (run it with
// `make bench`) against what it promises: one Ingress served in at most 1.5 s,
// 100 at once in at most 15 s, memory that stays flat however many other
// Secrets the cluster holds, and few API writes per issuance.
//
// It starts the testbed, builds the controller without the race detector and
// runs it with its default flags (plus those the testbed sets and --workers),
// then times issuance for 1 Ingress (5 runs), 20 and 100 Ingresses created at
// once, counts the API writes of the 100 from kube-apiserver's
// apiserver_request_total, and compares the peak RSS of two fresh controllers:
// one in an empty namespace, one in a namespace holding 5000 unrelated Secrets.
// It prints a table at the end and stops everything, also on Ctrl-C.
//
// Scale and robustness scenarios follow (see scale.go, restart.go,
// unreachable.go, renewal.go): 1,000 Ingresses at once; a restart with 10,000
// valid certificates; SIGKILLs during 100 concurrent issuances; one good
// Ingress behind unreachable ones; short-lived certificates renewed over a
// fixed window; the container image's size (image.go). -only picks scenarios by name (comma-separated), e.g.
// `go run ./e2e/cmd/bench -only=restart10k`; by default all run.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

func main() {
	workers := flag.Int("workers", 16, "the controller's --workers")
	fillers := flag.Int("secrets", 5000, "unrelated Secrets for the memory scenario")
	runs := flag.Int("runs", 5, "runs of the 1-Ingress scenario")
	extra := flag.String("controller-flags", "", "more controller flags, space-separated (e.g. \"--api-qps 200\"), to compare against the defaults")
	only := flag.String("only", "", "run only these scenarios, comma-separated, of: "+strings.Join(scenarioNames, ", ")+" (default: all)")
	var sc scaleOptions
	flag.IntVar(&sc.thousand, "thousand", 1000, "Ingresses created at once in the thousand scenario")
	flag.IntVar(&sc.restartCerts, "restart-certs", 10000, "valid certificates in place when the controller restarts (restart10k)")
	flag.IntVar(&sc.restartAccounts, "restart-accounts", 8, "ACME accounts the bench spreads the restart10k certificates over")
	flag.DurationVar(&sc.restartWindow, "restart-window", time.Minute, "how long CA requests are counted after the restart")
	flag.IntVar(&sc.killCerts, "kill-certs", 100, "certificates issued concurrently in the kills scenario")
	flag.IntVar(&sc.kills, "kills", 10, "SIGKILLs of the controller while they issue")
	flag.StringVar(&sc.unreachable, "unreachable", "0,40,200", "numbers of unreachable Ingresses in front of the good one")
	flag.DurationVar(&sc.unreachableTimeout, "unreachable-timeout", 5*time.Minute, "how long to wait for the good Ingress behind unreachable ones")
	flag.IntVar(&sc.maxInFlight, "max-orders-in-flight", 256, "the controller's --max-orders-in-flight in the unreachable scenario, passed only if the binary has that flag (0: never pass it)")
	flag.IntVar(&sc.shortCerts, "shortlived-certs", 20, "certificates on the short-lived profile")
	flag.DurationVar(&sc.shortValidity, "shortlived-validity", time.Minute, "validity of the CA's shortlived profile")
	flag.DurationVar(&sc.shortWindow, "shortlived-window", 4*time.Minute, "how long short-lived renewals are watched")
	flag.Parse()
	selected, err := parseOnly(*only)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills at once (the children die with us)
	}()

	b := &bench{start: time.Now(), workers: *workers, fillers: *fillers, runs: *runs, extra: strings.Fields(*extra), only: selected, scale: sc}
	err = b.run(ctx)
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "bench: interrupted")
		os.Exit(130)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: FAILED: %v\n", err)
		os.Exit(1)
	}
	if b.failed {
		fmt.Fprintln(os.Stderr, "bench: some scenarios failed (see the table)")
		os.Exit(1)
	}
}

func (b *bench) run(ctx context.Context) error {
	b.say("starting the testbed")
	tb, err := testbed.Start(ctx, testbed.Options{Logf: func(format string, args ...any) {
		fmt.Printf("           %s\n", fmt.Sprintf(format, args...))
	}})
	if err != nil {
		return err
	}
	defer func() {
		b.say("stopping the testbed")
		tb.Stop()
	}()
	if err := b.setup(ctx, tb); err != nil {
		return err
	}
	root, err := testbed.RepoRoot()
	if err != nil {
		return err
	}
	b.say("building the controller (no -race) into bin/ingress-acme-bench")
	t0 := time.Now()
	if b.bin, err = testbed.BuildController(filepath.Join(root, "bin", "ingress-acme-bench"), false); err != nil {
		return err
	}
	b.say("built in %.1fs; controller flags: defaults, those the testbed sets, --workers %d %s", time.Since(t0).Seconds(), b.workers, strings.Join(b.extra, " "))

	b.say("scenarios: %s; load average %s", strings.Join(b.only, ", "), loadavg())
	for _, s := range scenarios {
		if !slices.Contains(b.only, s.name) {
			continue
		}
		t0 := time.Now()
		load := loadavg()
		if err := s.run(b, ctx); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		b.timings = append(b.timings, fmt.Sprintf("%s %.0f s (load before %s, after %s)", s.name, time.Since(t0).Seconds(), load, loadavg()))
	}
	b.printTable()
	if len(b.timings) > 0 {
		fmt.Println("scenario durations:")
		for _, t := range b.timings {
			fmt.Println("  " + t)
		}
		fmt.Println()
	}
	b.printFindings()
	return nil
}

// say prints a progress line prefixed with the time since the bench started.
func (b *bench) say(format string, args ...any) {
	fmt.Printf("[%6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

// add appends a row to the final table; a non-empty verdict other than "ok"
// marks the bench failed when it starts with "FAILED".
func (b *bench) add(scenario, result, target, verdict string) {
	b.rows = append(b.rows, row{scenario, result, target, verdict})
	if strings.HasPrefix(verdict, "FAILED") {
		b.failed = true
	}
}

// note records a finding about the controller, printed after the table.
func (b *bench) note(format string, args ...any) {
	b.findings = append(b.findings, fmt.Sprintf(format, args...))
}

func (b *bench) printTable() {
	header := row{"scenario", "result", "target", ""}
	w := [3]int{}
	for _, r := range append([]row{header}, b.rows...) {
		w[0], w[1], w[2] = max(w[0], len(r.scenario)), max(w[1], len(r.result)), max(w[2], len(r.target))
	}
	fmt.Println()
	for _, r := range append([]row{header}, b.rows...) {
		line := fmt.Sprintf("%-*s  %-*s  %-*s  %s", w[0], r.scenario, w[1], r.result, w[2], r.target, r.verdict)
		fmt.Println(strings.TrimRight(line, " "))
	}
	fmt.Println()
}

func (b *bench) printFindings() {
	if len(b.findings) == 0 {
		return
	}
	fmt.Println("controller notes (from its logs and the API server's metrics):")
	for _, f := range b.findings {
		fmt.Println("  - " + f)
	}
	fmt.Println()
}

// scenarios are the bench's parts, in the order they run; -only names them.
var scenarios = []struct {
	name string
	run  func(*bench, context.Context) error
}{
	{"latency", (*bench).latencyAndWrites},
	{"memory", (*bench).memory},
	{"thousand", (*bench).thousandAtOnce},
	{"restart10k", (*bench).restart},
	{"kills", (*bench).killsDuringIssuance},
	{"unreachable", (*bench).unreachable},
	{"shortlived", (*bench).shortLived},
	{"image", (*bench).image},
}

var scenarioNames = func() []string {
	var out []string
	for _, s := range scenarios {
		out = append(out, s.name)
	}
	return out
}()

// parseOnly returns the scenarios -only names, all of them when it is empty.
func parseOnly(only string) ([]string, error) {
	if strings.TrimSpace(only) == "" {
		return scenarioNames, nil
	}
	var out []string
	for _, n := range strings.Split(only, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if !slices.Contains(scenarioNames, n) {
			return nil, fmt.Errorf("-only: unknown scenario %q (have %s)", n, strings.Join(scenarioNames, ", "))
		}
		out = append(out, n)
	}
	return out, nil
}

// loadavg is the 1-minute load average of the machine, as uptime shows it.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return f[0]
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
