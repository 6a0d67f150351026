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

	"github.com/ingress-acme/ingress-acme/core"
)

// addFaultFlags adds --crash-at, in test builds only: the process kills itself
// with SIGKILL, as a crash would, the Nth time (default first) an order reaches
// the named point.
func addFaultFlags(fs *pflag.FlagSet, c *Config) {
	fs.Func("crash-at", "test builds only: POINT[:N] SIGKILLs the process the Nth time an order reaches POINT "+
		"("+strings.Join(core.FaultPoints(), ", ")+")", func(v string) error {
		point, nth, _ := strings.Cut(v, ":")
		if !slices.Contains(core.FaultPoints(), point) {
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
		c.fault = func(p string) {
			if p == point && seen.Add(1) == int64(n) {
				fmt.Fprintf(os.Stderr, "{\"msg\":\"crash-at fault point\",\"point\":%q}\n", p)
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // never return: the signal takes the process
			}
		}
		return nil
	})
}
