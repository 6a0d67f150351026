package testbed

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ProcStats are resource figures of a running process, from /proc (Linux).
type ProcStats struct {
	PeakRSS uint64        // VmHWM, bytes
	RSS     uint64        // VmRSS, bytes
	CPU     time.Duration // utime + stime
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat; it
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// ReadProcStats reads the peak and current resident set size of process pid
// from /proc/<pid>/status and its CPU time from /proc/<pid>/stat.
func ReadProcStats(pid int) (ProcStats, error) {
	var st ProcStats
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok || (name != "VmHWM" && name != "VmRSS") {
			continue
		}
		f := strings.Fields(value) // "12345 kB"
		if len(f) != 2 || f[1] != "kB" {
			return st, fmt.Errorf("/proc/%d/status: unexpected %s", pid, line)
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return st, fmt.Errorf("/proc/%d/status: %s: %w", pid, line, err)
		}
		if name == "VmHWM" {
			st.PeakRSS = kb * 1024
		} else {
			st.RSS = kb * 1024
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return st, err
	}
	// The command name (field 2) is in parentheses and may hold spaces: count
	// fields after its closing parenthesis. utime and stime are fields 14, 15.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return st, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(stat[i+1:])) // f[0] is field 3
	if len(f) < 13 {
		return st, fmt.Errorf("/proc/%d/stat: only %d fields", pid, len(f)+2)
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return st, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	st.CPU = time.Duration(utime+stime) * time.Second / clockTicks
	return st, nil
}
