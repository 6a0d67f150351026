package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// spawner starts child processes from one OS thread that stays alive until the
// testbed is stopped. Pdeathsig is tied to the thread that forked the child, not
// to the process: a child started from an arbitrary goroutine would be killed as
// soon as the Go runtime retired that thread. Keeping the forking thread locked
// and alive means children get SIGKILL exactly when the test binary dies.
type spawner struct {
	reqs chan spawnReq
	quit chan struct{}
}

type spawnReq struct {
	cmd  *exec.Cmd
	errc chan error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq), quit: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		// Never unlocked: when this goroutine returns (after every child is
		// stopped) the runtime terminates the thread instead of reusing it.
		runtime.LockOSThread()
		close(ready)
		for {
			select {
			case r := <-s.reqs:
				r.errc <- r.cmd.Start()
			case <-s.quit:
				return
			}
		}
	}()
	<-ready
	return s
}

func (s *spawner) start(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	select {
	case s.reqs <- spawnReq{cmd, errc}:
		return <-errc
	case <-s.quit:
		return errors.New("testbed is stopped")
	}
}

func (s *spawner) close() { close(s.quit) }

// process is one component of the testbed: how to run it and its current run.
type process struct {
	name    string
	logPath string
	pidPath string
	grace   time.Duration // SIGTERM grace before SIGKILL
	timeout time.Duration // how long to wait for readiness
	dir     string        // working directory ("": the test's)
	// command returns the argv and extra environment (ports are allocated before).
	command func() (argv []string, env []string)
	// ready probes once whether the component serves; nil error means ready.
	ready func(ctx context.Context) error

	cmd       *exec.Cmd
	logOffset int64         // size of the log when cmd started
	done      chan struct{} // closed when cmd has been waited for
	err       error         // cmd.Wait result, valid after done
}

func (p *process) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// launch starts the process in its own process group with Pdeathsig SIGKILL,
// appending its output to its log.
func (p *process) launch(sp *spawner, baseEnv []string) error {
	if p.running() {
		return fmt.Errorf("%s is already running (pid %d)", p.name, p.cmd.Process.Pid)
	}
	argv, env := p.command()
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	if st, err := logf.Stat(); err == nil {
		p.logOffset = st.Size()
	}
	fmt.Fprintf(logf, "=== %s testbed: starting %s\n", time.Now().Format(time.RFC3339Nano), shellQuote(argv))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(append([]string{}, baseEnv...), env...)
	cmd.Dir = p.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := sp.start(cmd); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.cmd, p.done, p.err = cmd, make(chan struct{}), nil
	done := p.done
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(done)
	}()
	return os.WriteFile(p.pidPath, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
}

// waitReady polls ready every 20 ms until it succeeds, the process exits, or
// the timeout passes.
func (p *process) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	var last error
	for {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		last = p.ready(pctx)
		pcancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready (%v)", p.name, p.err)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %v", p.name, p.timeout, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM to the process group, SIGKILL after the grace period, and
// waits for the process. It returns how long that took.
func (p *process) stop() time.Duration {
	if p.cmd == nil {
		return 0
	}
	t0 := time.Now()
	pgid := p.cmd.Process.Pid // Setpgid: the group id is the leader's pid
	if p.running() {
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(p.grace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
	}
	_ = os.Remove(p.pidPath)
	return time.Since(t0)
}

// tail returns the last n lines of the process log.
func (p *process) tail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// bindFailed reports whether the log of the current run says a listen address
// was taken (the race between picking a free port and the component binding it).
func (p *process) bindFailed() bool {
	b, _ := os.ReadFile(p.logPath)
	if int64(len(b)) >= p.logOffset {
		b = b[p.logOffset:]
	}
	return bytes.Contains(b, []byte("address already in use"))
}

func shellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\n\"'$\\") {
			a = strconv.Quote(a)
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}
