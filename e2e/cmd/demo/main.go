// Command demo is a newcomer's first look at ingress-acme (run it with
// `make demo`): it starts the local testbed (etcd, kube-apiserver, Pebble,
// Traefik), builds and runs the controller for a fresh namespace, creates an
// annotated sample Ingress, waits for its certificate, fetches the site over
// HTTPS through Traefik, verified against Pebble's root, and then keeps
// everything running until Ctrl-C so that you can look around with kubectl.
//
// With -exit (or DEMO_EXIT=1) it stops right after the HTTPS request instead,
// for running the demo non-interactively.
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/yaml"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

func main() {
	exit := flag.Bool("exit", os.Getenv("DEMO_EXIT") == "1", "exit after the HTTPS request instead of waiting for Ctrl-C (also DEMO_EXIT=1)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills at once (the children die with us)
	}()

	d := &demo{start: time.Now()}
	err := d.run(ctx, *exit)
	if err != nil && ctx.Err() != nil {
		fmt.Fprintf(os.Stderr, "demo: interrupted (%v)\n", err)
		os.Exit(130)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: FAILED: %v\n", err)
		os.Exit(1)
	}
}

// demo holds the state of one run; its methods print as they go.
type demo struct {
	start time.Time
}

// say prints a line prefixed with the time since the demo started.
func (d *demo) say(format string, args ...any) {
	fmt.Printf("[%6.2fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

// detail prints lines indented under the last step, without a timestamp.
func (d *demo) detail(text string) {
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		fmt.Printf("           %s\n", line)
	}
}

func (d *demo) run(ctx context.Context, exit bool) error {
	// 1. The testbed.
	d.say("step 1/6: starting the testbed (etcd, kube-apiserver, challtestsrv, traefik, pebble)")
	t0 := time.Now()
	tb, err := testbed.Start(ctx, testbed.Options{Logf: func(format string, args ...any) {
		d.detail(fmt.Sprintf(format, args...))
	}})
	if err != nil {
		return fmt.Errorf("start the testbed: %w", err)
	}
	defer func() {
		d.say("stopping the testbed")
		tb.Stop()
		d.say("all stopped")
	}()
	d.say("testbed up in %.2fs:", time.Since(t0).Seconds())
	d.detail(fmt.Sprintf("kube-apiserver    %s\nadmin kubeconfig  %s\npebble directory  %s\ntraefik http      %s\ntraefik https     %s",
		tb.APIServerURL, tb.AdminKubeconfig, tb.PebbleDirectory, tb.IngressHTTP, tb.IngressHTTPS))

	// 2. The controller.
	root, err := testbed.RepoRoot()
	if err != nil {
		return err
	}
	d.say("step 2/6: building the controller into bin/ingress-acme")
	t0 = time.Now()
	bin, err := testbed.BuildController(filepath.Join(root, "bin", "ingress-acme"), false)
	if err != nil {
		return err
	}
	d.say("built in %.2fs", time.Since(t0).Seconds())
	ns, err := tb.CreateNamespace(ctx, "demo")
	if err != nil {
		return err
	}
	d.say("created namespace %s", ns)
	dir := filepath.Join(tb.Dir, "controller")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ctl, err := tb.NewController(ctx, testbed.ControllerOptions{Binary: bin, Namespace: ns, Dir: dir})
	if err != nil {
		return fmt.Errorf("prepare the controller: %w", err)
	}
	d.say("starting the controller for %s, as ServiceAccount %s/ingress-acme with the RBAC of deploy/ingress-acme.yaml:", ns, ns)
	d.detail(shellCommand(ctl.Args))
	t0 = time.Now()
	if err := ctl.Start(); err != nil {
		return fmt.Errorf("start the controller: %w", err)
	}
	defer func() {
		d.say("stopping the controller (pid %d)", ctl.Pid())
		t0 := time.Now()
		if code := ctl.Stop(); code != 0 {
			d.say("controller exited with code %d after %.1fs; its last log line:", code, time.Since(t0).Seconds())
			d.detail(ctl.LogTail(1))
		}
	}()
	d.say("controller ready in %.2fs (pid %d, log %s)", time.Since(t0).Seconds(), ctl.Pid(), filepath.Join(dir, "run-1.log"))

	// 3. A backend and the sample Ingress.
	d.say("step 3/6: starting backend shop and creating Ingress %s/shop", ns)
	backend, err := tb.Backend(ctx, ns, "shop", nil)
	if err != nil {
		return err
	}
	defer backend.Close()
	d.say("backend shop listens on %s (Service %s/shop, port 80)", backend.Addr, ns)
	hosts := []string{"shop." + ns + ".test", "www.shop." + ns + ".test"}
	ing := testbed.Ingress(ns, "shop", "shop", true, hosts...)
	y, err := ingressYAML(ing)
	if err != nil {
		return err
	}
	d.say("applying this Ingress:")
	d.detail(string(y))
	ingresses := tb.Client().NetworkingV1().Ingresses(ns)
	if _, err := ingresses.Create(ctx, ing, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create ingress: %w", err)
	}
	created := time.Now()
	d.say("Ingress %s/shop created", ns)

	// 4. The certificate.
	d.say("step 4/6: waiting for Secret %s/shop-tls with a certificate valid for %s", ns, strings.Join(hosts, " and "))
	roots, err := tb.PebbleRootPool(ctx)
	if err != nil {
		return err
	}
	sec, leaf, err := waitCertificate(ctx, tb, ns, "shop-tls", roots, hosts, 90*time.Second)
	if err != nil {
		d.say("controller log (last 30 lines):")
		d.detail(ctl.LogTail(30))
		return err
	}
	took := time.Since(created)
	d.say("certificate ready %.2fs after the Ingress was created (Secret %s/%s, type %s):", took.Seconds(), ns, sec.Name, sec.Type)
	d.detail(fmt.Sprintf("hosts      %s\nissuer     %s\nnot after  %s\nserial     %s",
		strings.Join(leaf.DNSNames, ", "), leaf.Issuer.CommonName, leaf.NotAfter.UTC().Format(time.RFC3339), serialHex(leaf)))

	got, err := waitTLS(ctx, tb, ns, "shop", "shop-tls", 15*time.Second)
	if err != nil {
		return err
	}
	tlsYAML, err := yaml.Marshal(map[string]any{"tls": got.Spec.TLS})
	if err != nil {
		return err
	}
	d.say("spec.tls of Ingress %s/shop as the controller left it:", ns)
	d.detail(string(tlsYAML))
	evs, err := waitEvents(ctx, tb, ns, "shop", "Issued", 10*time.Second)
	if err != nil {
		return err
	}
	d.say("events on Ingress %s/shop:", ns)
	var lines []string
	for _, e := range evs {
		lines = append(lines, fmt.Sprintf("%-7s %-8s %s", e.Type, e.Reason, e.Message))
	}
	d.detail(strings.Join(lines, "\n"))

	// 5. HTTPS through Traefik.
	url := "https://" + hosts[0] + "/"
	d.say("step 5/6: GET %s through traefik (%s), verified against pebble's root", url, tb.IngressHTTPS)
	resp, body, err := waitServed(ctx, tb, hosts[0], roots, leaf, 15*time.Second)
	if err != nil {
		return err
	}
	d.say("%s %s, certificate serial %s (the Secret's), body %q", resp.Proto, resp.Status, serialHex(resp.TLS.PeerCertificates[0]), body)

	if exit {
		d.say("step 6/6: -exit given: stopping")
		return nil
	}
	// 6. Leave it running.
	d.say("step 6/6: testbed is up; KUBECONFIG=%s kubectl get ingress,secret -n %s ... ; Ctrl-C to stop", tb.AdminKubeconfig, ns)
	d.detail("kubectl " + tb.Tools.Kubectl + " matches the API server's version")
	d.detail(fmt.Sprintf("try: curl --resolve %s:%s:127.0.0.1 --cacert <(curl -sk %s/roots/0) %s",
		hosts[0], portOf(tb.IngressHTTPS), tb.PebbleManagement, "https://"+hosts[0]+":"+portOf(tb.IngressHTTPS)+"/"))
	d.detail("controller log: " + filepath.Join(dir, "run-1.log"))
	<-ctx.Done()
	d.say("interrupted: shutting down")
	return nil
}

// ingressYAML renders ing as YAML without the empty fields a user would not
// write (creationTimestamp: null, status: {}).
func ingressYAML(ing *networkingv1.Ingress) ([]byte, error) {
	j, err := json.Marshal(ing)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(j, &m); err != nil {
		return nil, err
	}
	delete(m, "status")
	if meta, ok := m["metadata"].(map[string]any); ok {
		delete(meta, "creationTimestamp")
	}
	return yaml.Marshal(m)
}

// waitCertificate waits (polling every 50 ms) until Secret ns/name holds a
// certificate that verifies against roots for every host.
func waitCertificate(ctx context.Context, tb *testbed.Testbed, ns, name string, roots *x509.CertPool, hosts []string, timeout time.Duration) (*corev1.Secret, *x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	secrets := tb.Client().CoreV1().Secrets(ns)
	last := "no Secret yet"
	for {
		sec, err := secrets.Get(ctx, name, metav1.GetOptions{})
		switch {
		case err == nil:
			leaf, verr := testbed.VerifyChainPEM(sec.Data[corev1.TLSCertKey], roots, hosts...)
			if verr == nil {
				return sec, leaf, nil
			}
			last = verr.Error()
		case apierrors.IsNotFound(err):
			last = "no Secret yet"
		default:
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("secret %s/%s: no valid certificate after %s: %s", ns, name, timeout, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitTLS waits until Ingress ns/name has a spec.tls entry naming secret.
func waitTLS(ctx context.Context, tb *testbed.Testbed, ns, name, secret string, timeout time.Duration) (*networkingv1.Ingress, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ing, err := tb.Client().NetworkingV1().Ingresses(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil && slices.ContainsFunc(ing.Spec.TLS, func(t networkingv1.IngressTLS) bool { return t.SecretName == secret }) {
			return ing, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("ingress %s/%s: spec.tls does not name %s after %s (last error: %v)", ns, name, secret, timeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitEvents waits until the Events about Ingress ns/name include one with
// reason, and returns them all, oldest first.
func waitEvents(ctx context.Context, tb *testbed.Testbed, ns, name, reason string, timeout time.Duration) ([]corev1.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sel := fields.Set{"involvedObject.kind": "Ingress", "involvedObject.name": name}.String()
	for {
		list, err := tb.Client().CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err == nil && slices.ContainsFunc(list.Items, func(e corev1.Event) bool { return e.Reason == reason }) {
			evs := list.Items
			slices.SortStableFunc(evs, func(a, b corev1.Event) int { return eventTime(a).Compare(eventTime(b)) })
			return evs, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("ingress %s/%s: no %s event after %s (last error: %v)", ns, name, reason, timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func eventTime(e corev1.Event) time.Time {
	switch {
	case !e.FirstTimestamp.IsZero():
		return e.FirstTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}

// waitServed GETs https://host/ through Traefik, verifying against roots, until
// it answers 200 with the certificate leaf; it returns the response (body
// read) and the body.
func waitServed(ctx context.Context, tb *testbed.Testbed, host string, roots *x509.CertPool, leaf *x509.Certificate, timeout time.Duration) (*http.Response, string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := tb.HTTPClientWithRoots(host, roots)
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/", nil)
		if err != nil {
			return nil, "", err
		}
		resp, err := client.Do(req)
		if err == nil {
			b, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			served := resp.TLS.PeerCertificates[0]
			switch {
			case rerr != nil:
				last = rerr.Error()
			case served.SerialNumber.Cmp(leaf.SerialNumber) != 0:
				last = "serial " + serialHex(served) + " served, want " + serialHex(leaf)
			case resp.StatusCode != http.StatusOK:
				last = "status " + resp.Status
			default:
				return resp, string(b), nil
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil, "", fmt.Errorf("https://%s/: not served with the issued certificate after %s: %s", host, timeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func serialHex(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }

func portOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return addr[i+1:]
	}
	return addr
}

// shellCommand renders argv as one shell line, quoting what needs it, one flag
// with its value per line.
func shellCommand(argv []string) string {
	var b strings.Builder
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\n\"'$\\*?;&|<>()") {
			a = strconv.Quote(a)
		}
		switch {
		case i == 0:
		case strings.HasPrefix(a, "--"):
			b.WriteString(" \\\n  ")
		default:
			b.WriteString(" ")
		}
		b.WriteString(a)
	}
	return b.String()
}
