//go:build faults

package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/ingress-acme/ingress-acme/acme"
	"github.com/ingress-acme/ingress-acme/watcher"
)

// addFaultFlags adds --crash-at, in test builds only: the process kills itself
// with SIGKILL, as a crash would, the Nth time (default first) an order reaches
// the named step.
func addFaultFlags(fs *pflag.FlagSet, c *Config) {
	points := steps()
	fs.Func("crash-at", "test builds only: POINT[:N] SIGKILLs the process the Nth time an order reaches POINT "+
		"("+strings.Join(points, ", ")+")", func(v string) error {
		point, nth, _ := strings.Cut(v, ":")
		if !slices.Contains(points, point) {
			return fmt.Errorf("crash-at %q: no such point", v)
		}
		n := 1
		if nth != "" {
			var err error
			if n, err = strconv.Atoi(nth); err != nil || n < 1 {
				return fmt.Errorf("crash-at %q: N must be a positive number", v)
			}
		}
		var seen atomic.Int64
		c.atStep = func(p string) {
			if p == point && seen.Add(1) == int64(n) {
				fmt.Fprintf(os.Stderr, "{\"msg\":\"crash-at fault point\",\"point\":%q}\n", p)
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // never return: the signal takes the process
			}
		}
		return nil
	})
}

// steps lists the steps of an order, in the order it passes them.
func steps() []string {
	var out []string
	for _, s := range watcher.Steps() {
		out = append(out, string(s))
	}
	// The CA is told to validate after the self-check; the order is finalized
	// before the certificate is stored.
	i := slices.Index(out, string(watcher.StepSelfChecked)) + 1
	return slices.Insert(out, i, acme.Steps()...)
}
