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
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
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
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills at once (the children die with us)
	}()

	b := &bench{start: time.Now(), workers: *workers, fillers: *fillers, runs: *runs, extra: strings.Fields(*extra)}
	err := b.run(ctx)
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

	if err := b.latencyAndWrites(ctx); err != nil {
		return err
	}
	if err := b.memory(ctx); err != nil {
		return err
	}
	b.printTable()
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

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
