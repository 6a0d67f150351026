package e2e

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
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// controllerBinary builds the controller once per test binary, with the race
// detector on, so that every e2e run also hunts data races in the real process.
var controllerBinary = sync.OnceValues(func() (string, error) {
	root, err := testbed.RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(root, "bin", "ingress-acme-e2e")
	cmd := exec.Command("go", "build", "-race", "-o", out, ".")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build controller: %v\n%s", err, b)
	}
	return out, nil
})

// manifest returns the objects of deploy/ingress-acme.yaml.
var manifest = sync.OnceValues(func() ([]runtime.Object, error) {
	root, err := testbed.RepoRoot()
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
})

// grantManifestRBAC gives ServiceAccount ns/ingress-acme exactly the manifest's
// ClusterRole (cluster-wide) and Role (in ns), so that the controller runs with
// the permissions it ships with and a missing verb fails the test.
func grantManifestRBAC(t *testing.T, ns string) {
	t.Helper()
	ctx := context.Background()
	objs, err := manifest()
	if err != nil {
		t.Fatal(err)
	}
	rbac := bed.Client().RbacV1()
	for _, obj := range objs {
		switch o := obj.(type) {
		case *rbacv1.ClusterRole:
			if _, err := rbac.ClusterRoles().Create(ctx, o, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
			crb := &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "ingress-acme-" + ns},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: o.Name},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "ingress-acme", Namespace: ns}},
			}
			if _, err := rbac.ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		case *rbacv1.Role:
			role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: ns}, Rules: o.Rules}
			if _, err := rbac.Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
			rb := &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: ns},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: o.Name},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "ingress-acme", Namespace: ns}},
			}
			if _, err := rbac.RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	}
}

// controller is one ingress-acme process under test, watching one namespace
// (which also holds its account Secret and Lease), with the ServiceAccount's own
// token and the manifest's RBAC. It can be stopped, killed and started again;
// its JSON logs from every run are kept.
type controller struct {
	t             *testing.T
	ns            string
	args          []string
	metricsAddr   string
	challengeAddr string
	dir           string

	// mu guards cmd, done and runs.
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	runs int
}

// startController starts a controller for ns with extra flags and waits until it
// is ready. It is stopped when the test ends; on failure its logs are printed.
func startController(t *testing.T, ns string, extra ...string) *controller {
	t.Helper()
	bin, err := controllerBinary()
	if err != nil {
		t.Fatal(err)
	}
	grantManifestRBAC(t, ns)
	token, err := bed.ServiceAccountToken(context.Background(), ns, "ingress-acme")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := bed.Kubeconfig(token, kubeconfig); err != nil {
		t.Fatal(err)
	}
	c := &controller{t: t, ns: ns, dir: dir, metricsAddr: freeAddr(t), challengeAddr: freeAddr(t)}
	c.args = append([]string{bin,
		"--kubeconfig", kubeconfig,
		"--acme-directory", bed.PebbleDirectory,
		"--acme-ca-bundle", bed.PebbleCAFile,
		"--acme-email", "e2e@example.test",
		"--namespace", ns,
		"--controller-namespace", ns,
		"--challenge-addr", c.challengeAddr,
		"--metrics-addr", c.metricsAddr,
		// No pod network here: Traefik reaches the challenge server on loopback
		// through an FQDN EndpointSlice (IPv4 slices refuse 127.0.0.0/8).
		"--solver-address", "127.0.0.1",
		"--solver-address-type", "FQDN",
		// No hairpin to app.test here either: self-check through Traefik directly.
		"--self-check-address", bed.IngressHTTP,
		"--leader-election-id", "e2e-" + ns,
		"--log-format", "json",
		"--log-level", "debug",
		"--retry-base", "1s",
		"--retry-max", "10s",
		"--max-orders-per-hour", "50",
	}, extra...)
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			c.dumpLogs()
		}
	})
	c.start()
	return c
}

// start runs the process and waits for /readyz.
func (c *controller) start() {
	c.t.Helper()
	c.mu.Lock()
	c.runs++
	logPath := filepath.Join(c.dir, fmt.Sprintf("run-%d.log", c.runs))
	f, err := os.Create(logPath)
	if err != nil {
		c.mu.Unlock()
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.args[0], c.args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "GORACE=halt_on_error=1 exitcode=66")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.mu.Unlock()
		c.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(done)
	}()
	c.cmd, c.done = cmd, done
	c.mu.Unlock()

	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + c.metricsAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-done:
			c.t.Fatalf("controller exited before it was ready:\n%s", c.logTail(40))
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("controller not ready after 60 s:\n%s", c.logTail(40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the process with SIGTERM (SIGKILL after 10 s); a no-op when it is
// not running. A data race reported by the race detector fails the test.
func (c *controller) stop() { c.signal(syscall.SIGTERM) }

// kill ends the process with SIGKILL, as a crash would.
func (c *controller) kill() { c.signal(syscall.SIGKILL) }

func (c *controller) signal(sig syscall.Signal) {
	c.mu.Lock()
	cmd, done := c.cmd, c.done
	c.cmd = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	if cmd.ProcessState != nil && cmd.ProcessState.ExitCode() == 66 {
		c.t.Errorf("the race detector found a data race in the controller:\n%s", c.logTail(80))
	}
}

// logs returns the JSON log records of every run, in order. Lines that are not
// JSON (e.g. a race report) are returned as {"raw": line}.
func (c *controller) logs() []map[string]any {
	var out []map[string]any
	files, _ := filepath.Glob(filepath.Join(c.dir, "run-*.log"))
	for i := 1; i <= len(files); i++ {
		data, _ := os.ReadFile(filepath.Join(c.dir, fmt.Sprintf("run-%d.log", i)))
		for _, line := range strings.Split(string(data), "\n") {
			if strings.TrimSpace(line) == "" {
				continue
			}
			rec := map[string]any{}
			if json.Unmarshal([]byte(line), &rec) != nil {
				rec = map[string]any{"raw": line}
			}
			out = append(out, rec)
		}
	}
	return out
}

// count is how many log records have msg and every key=value in kv.
func (c *controller) count(msg string, kv ...any) int {
	n := 0
	for _, rec := range c.logs() {
		if rec["msg"] != msg {
			continue
		}
		match := true
		for i := 0; i+1 < len(kv); i += 2 {
			if fmt.Sprint(rec[kv[i].(string)]) != fmt.Sprint(kv[i+1]) {
				match = false
			}
		}
		if match {
			n++
		}
	}
	return n
}

// orders is how many ACME orders the controller created, over every run.
func (c *controller) orders() int { return c.count("order created") }

// metric returns the value of the first sample of the metric name whose labels
// include every key=value in labels, scraped from /metrics now; ok is false
// when there is none.
func (c *controller) metric(name string, labels ...string) (value float64, ok bool) {
	resp, err := http.Get("http://" + c.metricsAddr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(line, labels[i]+`="`+labels[i+1]+`"`) {
				match = false
			}
		}
		if !match {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		return v, err == nil
	}
	return 0, false
}

func (c *controller) logTail(n int) string {
	var lines []string
	files, _ := filepath.Glob(filepath.Join(c.dir, "run-*.log"))
	for i := 1; i <= len(files); i++ {
		data, _ := os.ReadFile(filepath.Join(c.dir, fmt.Sprintf("run-%d.log", i)))
		lines = append(lines, strings.Split(strings.TrimRight(string(data), "\n"), "\n")...)
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (c *controller) dumpLogs() {
	c.t.Logf("controller logs (%s, last 150 lines):\n%s", c.ns, c.logTail(150))
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// events lists the Events in ns about the object name, with reason (all when "").
func events(t *testing.T, ns, name, reason string) []corev1.Event {
	t.Helper()
	list, err := bed.Client().CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Event
	for _, e := range list.Items {
		if e.InvolvedObject.Name == name && (reason == "" || e.Reason == reason) {
			out = append(out, e)
		}
	}
	return out
}
