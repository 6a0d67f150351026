package testbed

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

// BuildController builds the controller from the repository into out (with the
// race detector when race is set, and the build tags given) and returns out.
func BuildController(out string, race bool, tags ...string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build controller: %v\n%s", err, b)
	}
	return out, nil
}

// Manifest returns the objects of deploy/ingress-acme.yaml.
func Manifest() ([]runtime.Object, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(root, "deploy", "ingress-acme.yaml"))
	if err != nil {
		return nil, err
	}
	var objs []runtime.Object
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if err != nil {
			break
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("deploy/ingress-acme.yaml: %w", err)
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

// GrantManifestRBAC gives ServiceAccount ns/ingress-acme exactly the manifest's
// ClusterRole (cluster-wide) and Role (in ns), so that a controller run with its
// token has the permissions the manifest ships, no more.
func (tb *Testbed) GrantManifestRBAC(ctx context.Context, ns string) error {
	objs, err := Manifest()
	if err != nil {
		return err
	}
	rbac := tb.client.RbacV1()
	ignoreExists := func(err error) error {
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	}
	for _, obj := range objs {
		switch o := obj.(type) {
		case *rbacv1.ClusterRole:
			if _, err := rbac.ClusterRoles().Create(ctx, o, metav1.CreateOptions{}); ignoreExists(err) != nil {
				return err
			}
			crb := &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "ingress-acme-" + ns},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: o.Name},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "ingress-acme", Namespace: ns}},
			}
			if _, err := rbac.ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); ignoreExists(err) != nil {
				return err
			}
		case *rbacv1.Role:
			role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: ns}, Rules: o.Rules}
			if _, err := rbac.Roles(ns).Create(ctx, role, metav1.CreateOptions{}); ignoreExists(err) != nil {
				return err
			}
			rb := &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: ns},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: o.Name},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "ingress-acme", Namespace: ns}},
			}
			if _, err := rbac.RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); ignoreExists(err) != nil {
				return err
			}
		}
	}
	return nil
}

// ControllerOptions configure a controller process.
type ControllerOptions struct {
	Binary    string   // from BuildController
	Namespace string   // watched, and home of its account Secret and Lease
	Dir       string   // for its kubeconfig and logs
	Extra     []string // more flags
	// Kubeconfig, if set, is used as is; else the ServiceAccount ingress-acme of
	// Namespace gets the manifest's RBAC and its token is used.
	Kubeconfig string
}

// Controller is one ingress-acme process on the testbed. It can be stopped,
// killed and started again; each run logs JSON to Dir/run-N.log. Its methods are
// safe for concurrent use.
type Controller struct {
	Args []string
	// Env is added to the process's environment (the test binary's).
	Env           []string
	MetricsAddr   string
	ChallengeAddr string
	Dir           string

	spawn func(*exec.Cmd) error // the testbed's: children die with the test binary

	// mu guards cmd, done, runs and lastExit.
	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	runs     int
	lastExit int
}

// NewController prepares (but does not start) a controller for opts on tb: its
// credentials, ports and flags.
func (tb *Testbed) NewController(ctx context.Context, opts ControllerOptions) (*Controller, error) {
	kubeconfig := opts.Kubeconfig
	if kubeconfig == "" {
		if err := tb.GrantManifestRBAC(ctx, opts.Namespace); err != nil {
			return nil, err
		}
		token, err := tb.ServiceAccountToken(ctx, opts.Namespace, "ingress-acme")
		if err != nil {
			return nil, err
		}
		kubeconfig = filepath.Join(opts.Dir, "kubeconfig")
		if err := tb.Kubeconfig(token, kubeconfig); err != nil {
			return nil, err
		}
	}
	var metricsPort, challengePort int
	if err := freePorts(&metricsPort, &challengePort); err != nil {
		return nil, err
	}
	c := &Controller{Dir: opts.Dir, MetricsAddr: hostPort(metricsPort), ChallengeAddr: hostPort(challengePort), spawn: tb.sp.start}
	c.Args = append([]string{opts.Binary,
		"--kubeconfig", kubeconfig,
		"--acme-directory", tb.PebbleDirectory,
		"--acme-ca-bundle", tb.PebbleCAFile,
		"--acme-email", "e2e@example.test",
		"--namespace", opts.Namespace,
		"--controller-namespace", opts.Namespace,
		"--challenge-addr", c.ChallengeAddr,
		"--metrics-addr", c.MetricsAddr,
		// No pod network here: Traefik reaches the challenge server on loopback
		// through an FQDN EndpointSlice (IPv4 slices refuse 127.0.0.0/8).
		"--solver-address", "127.0.0.1",
		"--solver-address-type", "FQDN",
		// No name resolution for test hosts either: self-check through Traefik.
		"--self-check-address", tb.IngressHTTP,
		"--leader-election-id", "testbed-" + opts.Namespace,
		"--log-format", "json",
		// The test CA has no rate limits, and tests start many controllers and
		// orders: lift the client-side CA budget (opts.Extra may set it again).
		"--acme-requests-per-second", "1000", "--acme-request-burst", "1000",
		"--acme-new-orders-per-3h", "1000000", "--acme-new-accounts-per-3h", "1000",
		"--acme-renewal-info-per-second", "1000",
	}, opts.Extra...)
	return c, nil
}

// Start runs the process and waits up to a minute for /readyz.
func (c *Controller) Start() error {
	c.mu.Lock()
	c.runs++
	f, err := os.Create(filepath.Join(c.Dir, fmt.Sprintf("run-%d.log", c.runs)))
	if err != nil {
		c.mu.Unlock()
		return err
	}
	cmd := exec.Command(c.Args[0], c.Args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(append(os.Environ(), "GORACE=halt_on_error=1 exitcode=66"), c.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.spawn(cmd); err != nil {
		c.mu.Unlock()
		f.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		f.Close()
		c.mu.Lock()
		c.lastExit = cmd.ProcessState.ExitCode()
		c.mu.Unlock()
		close(done)
	}()
	c.cmd, c.done = cmd, done
	c.mu.Unlock()

	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get("http://" + c.MetricsAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-done:
			return fmt.Errorf("controller exited before it was ready:\n%s", c.LogTail(40))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("controller not ready after a minute:\n%s", c.LogTail(40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Running reports whether the process is running.
func (c *Controller) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		return false
	}
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// Pid is the running process's PID, 0 when none runs.
func (c *Controller) Pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

// Stop ends the process with SIGTERM (SIGKILL after 10 s) and returns its exit
// code; a no-op returning -1 when it is not running.
func (c *Controller) Stop() int { return c.Signal(syscall.SIGTERM) }

// Kill ends the process with SIGKILL, as a crash would.
func (c *Controller) Kill() int { return c.Signal(syscall.SIGKILL) }

// Wait waits for the process to exit on its own (say, at a fault point) for at
// most timeout, and returns its exit code, or -1 if it is still running.
func (c *Controller) Wait(timeout time.Duration) int {
	c.mu.Lock()
	done := c.done
	c.mu.Unlock()
	if done == nil {
		return -1
	}
	select {
	case <-done:
		c.mu.Lock()
		defer c.mu.Unlock()
		c.cmd = nil
		return c.lastExit
	case <-time.After(timeout):
		return -1
	}
}

// Signal sends sig to the process group and waits for the exit (SIGKILL after
// 10 s); it returns the exit code (66: the race detector found a race).
func (c *Controller) Signal(sig syscall.Signal) int {
	c.mu.Lock()
	cmd, done := c.cmd, c.done
	c.cmd = nil
	c.mu.Unlock()
	if cmd == nil {
		return -1
	}
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastExit
}

// RaceExitCode is the exit code of a controller whose race detector fired.
const RaceExitCode = 66

// Logs returns the JSON log records of every run, in order. Lines that are not
// JSON (say, a race report) come as {"raw": line}.
func (c *Controller) Logs() []map[string]any {
	var out []map[string]any
	for _, line := range c.lines() {
		if strings.TrimSpace(line) == "" {
			continue
		}
		rec := map[string]any{}
		if json.Unmarshal([]byte(line), &rec) != nil {
			rec = map[string]any{"raw": line}
		}
		out = append(out, rec)
	}
	return out
}

func (c *Controller) lines() []string {
	c.mu.Lock()
	runs := c.runs
	c.mu.Unlock()
	var lines []string
	for i := 1; i <= runs; i++ {
		data, _ := os.ReadFile(filepath.Join(c.Dir, fmt.Sprintf("run-%d.log", i)))
		lines = append(lines, strings.Split(strings.TrimRight(string(data), "\n"), "\n")...)
	}
	return lines
}

// Count is how many log records have msg and every key=value in kv.
func (c *Controller) Count(msg string, kv ...any) int {
	n := 0
	for _, rec := range c.Logs() {
		if rec["msg"] != msg {
			continue
		}
		match := true
		for i := 0; i+1 < len(kv); i += 2 {
			if fmt.Sprint(rec[fmt.Sprint(kv[i])]) != fmt.Sprint(kv[i+1]) {
				match = false
			}
		}
		if match {
			n++
		}
	}
	return n
}

// Metric returns the value of the first sample of metric name whose labels
// include every key=value in labels, scraped now; ok is false when none.
func (c *Controller) Metric(name string, labels ...string) (value float64, ok bool) {
	resp, err := http.Get("http://" + c.MetricsAddr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !MetricLine(line, name, labels...) {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		return v, err == nil
	}
	return 0, false
}

// LogTail returns the last n log lines over every run.
func (c *Controller) LogTail(n int) string {
	lines := c.lines()
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// FreeAddr returns a loopback address whose port is free right now.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// MetricLine reports whether line, of the Prometheus text format, is a sample
// of metric name carrying every label=value pair of labels.
func MetricLine(line, name string, labels ...string) bool {
	if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
		return false
	}
	for i := 0; i+1 < len(labels); i += 2 {
		if !strings.Contains(line, labels[i]+`="`+labels[i+1]+`"`) {
			return false
		}
	}
	return true
}
