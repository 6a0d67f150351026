package testbed

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

const (
	dirPattern = "ingress-acme-testbed-*"
	ownerFile  = "owner.pid" // in run/: PID of the test binary that owns the testbed
	keptFile   = "KEPT"      // in Dir: Stop kept it on purpose (INGRESS_ACME_KEEP_TESTBED=1)
)

// alive reports whether a process with that PID exists.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func readPID(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil && pid > 0
}

// removeStale removes testbed folders left behind by test binaries that died
// without running Stop (a test timeout panics, SIGKILL): their owner is gone,
// Stop did not keep them on purpose and none of their recorded PIDs is alive.
// Their children died with them (Pdeathsig); the folders would only fill the
// disk (etcd preallocates its WAL).
func removeStale(logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPattern))
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, keptFile)); err == nil {
			continue
		}
		owner, ok := readPID(filepath.Join(d, "run", ownerFile))
		if !ok || alive(owner) {
			continue // not ours to judge, or in use
		}
		pids, _ := filepath.Glob(filepath.Join(d, "run", "*.pid"))
		live := false
		for _, f := range pids {
			if pid, ok := readPID(f); ok && pid != owner && alive(pid) {
				live = true
				logf("testbed: stale %s still has %s alive (pid %d): left alone", d, filepath.Base(f), pid)
			}
		}
		if live {
			continue
		}
		if err := os.RemoveAll(d); err == nil {
			logf("testbed: removed %s, left by a test binary that died (pid %d)", d, owner)
		}
	}
}
