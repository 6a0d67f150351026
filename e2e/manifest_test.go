package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// The manifest in deploy/ applied to a real API server, and a controller
// running under its RBAC alone.

// The manifest applies to a real API server (server-side dry run first, then
// for real), its Deployment is locked down and probes the right endpoints, and
// a controller holding only the manifest's ServiceAccount token, in the
// manifest's namespace, issues a certificate: a missing RBAC verb fails here.
//
// Parallel: the namespace ingress-acme and the ClusterRoleBinding ingress-acme
// are this test's alone. The ClusterRole ingress-acme is also what
// GrantManifestRBAC creates for every other test's controller, from the same
// file, so applying it changes no rule they rely on. (Run among the sequential
// tests, its 20 s would sit between their two API server restarts, and the
// second one's Traefik check depends on how long ago the first was.)
func TestManifestApplies(t *testing.T) {
	t.Parallel()
	objs := applyManifest(t, deployPath(t, "ingress-acme.yaml"))
	checkManifestApplied(t, objs)

	// The controller, with nothing but the manifest's ServiceAccount token: its
	// Lease and account Secret in ingress-acme, the certificate in a test
	// namespace.
	ns := newNamespace(t)
	ctl := startManifestController(t, ns)
	startBackend(t, ns, "web")
	// One certificate issued (Secret created, Ingress updated twice, solver
	// Service and EndpointSlice created, Events), and one short-lived one renewed
	// (Secret updated).
	h, hs := host(ns, "manifest"), host(ns, "short")
	created := createIngress(t, ninetyDayIngress(ns, "manifest", "web", h))
	short := newIngress(ns, "short", "web", true, hs)
	short.Annotations[profileAnnotation] = "shortlived"
	createIngress(t, short)
	_, leaf := waitCertificate(t, ns, "manifest-tls", 60*time.Second, h)
	waitServed(t, h, leaf, servedWithin)
	waitRestored(t, created)
	if len(events(t, ns, "manifest", "Issued")) == 0 {
		t.Error("no Issued event: events are not writable with the manifest's RBAC")
	}
	_, shortLeaf := waitCertificate(t, ns, "short-tls", 60*time.Second, hs)
	_, renewed := waitRenewed(t, ns, "short-tls", shortLeaf, 2*shortLived, hs)
	waitServed(t, hs, renewed, servedWithin)

	checkManifestController(t, ctl, ns)
}

// manifestNamespace is the namespace of the manifest's objects.
const manifestNamespace = "ingress-acme"

// applyManifest applies the manifest with kubectl as a CI job would (its
// Namespace, then a server-side dry run of the whole, then the whole) and
// returns its objects as testbed.Manifest parses them.
func applyManifest(t *testing.T, manifest string) []runtime.Object {
	t.Helper()
	ctx := context.Background()
	kubectl := bed.Tools.Kubectl
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(kubectl, append([]string{"--kubeconfig", bed.AdminKubeconfig}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// The ClusterRole exists before kubectl looks, so that kubectl never races
	// GrantManifestRBAC to create it (its create would fail AlreadyExists).
	objs, err := testbed.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if cr, ok := o.(*rbacv1.ClusterRole); ok {
			if _, err := bed.Client().RbacV1().ClusterRoles().Create(ctx, cr, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	}
	// A server-side dry run cannot create the Namespace its other objects live
	// in (they all fail with "namespaces ingress-acme not found"), so the
	// manifest's own Namespace goes first, for real, as a CI job would do.
	nsFile := filepath.Join(t.TempDir(), "namespace.yaml")
	if err := os.WriteFile(nsFile, manifestDoc(t, manifest, "Namespace"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl apply (the Namespace):\n%s", strings.TrimSpace(run("apply", "-f", nsFile)))
	t.Logf("kubectl apply --dry-run=server:\n%s", strings.TrimSpace(run("apply", "--dry-run=server", "-f", manifest)))
	t.Logf("kubectl apply:\n%s", strings.TrimSpace(run("apply", "-f", manifest)))
	return objs
}

// checkManifestApplied checks that every object of the manifest exists, that
// its Deployment, as the API server defaulted and stored it and as written
// (in objs), keeps the manifest's promises, and the Service's ports. It stops
// the test on any failure.
func checkManifestApplied(t *testing.T, objs []runtime.Object) {
	t.Helper()
	ctx := context.Background()
	const home = manifestNamespace
	cs := bed.Client()
	check := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
	_, err := cs.CoreV1().Namespaces().Get(ctx, home, metav1.GetOptions{})
	check("Namespace ingress-acme", err)
	_, err = cs.CoreV1().ServiceAccounts(home).Get(ctx, "ingress-acme", metav1.GetOptions{})
	check("ServiceAccount", err)
	_, err = cs.CoreV1().ConfigMaps(home).Get(ctx, "ingress-acme", metav1.GetOptions{})
	check("ConfigMap", err)
	_, err = cs.RbacV1().ClusterRoles().Get(ctx, "ingress-acme", metav1.GetOptions{})
	check("ClusterRole", err)
	_, err = cs.RbacV1().ClusterRoleBindings().Get(ctx, "ingress-acme", metav1.GetOptions{})
	check("ClusterRoleBinding", err)
	_, err = cs.RbacV1().Roles(home).Get(ctx, "ingress-acme", metav1.GetOptions{})
	check("Role", err)
	_, err = cs.RbacV1().RoleBindings(home).Get(ctx, "ingress-acme", metav1.GetOptions{})
	check("RoleBinding", err)
	svc, err := cs.CoreV1().Services(home).Get(ctx, "ingress-acme", metav1.GetOptions{})
	check("Service", err)
	applied, err := cs.AppsV1().Deployments(home).Get(ctx, "ingress-acme", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("Deployment: %v", err)
	}

	// The Deployment as the API server defaulted and stored it, and as written.
	checkDeployment(t, "applied", applied)
	for _, o := range objs {
		if d, ok := o.(*appsv1.Deployment); ok {
			checkDeployment(t, "file", d)
		}
	}
	if svc != nil {
		ports := map[string]int32{}
		for _, p := range svc.Spec.Ports {
			ports[p.Name] = p.Port
		}
		if ports["metrics"] != 9402 || ports["challenge"] != 8089 {
			t.Errorf("Service ports: got %v, want metrics 9402 and challenge 8089", ports)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// startManifestController starts a controller for the certificates of ns
// with nothing but the manifest's ServiceAccount token, its Lease and account
// in the manifest's namespace.
func startManifestController(t *testing.T, ns string) *controller {
	t.Helper()
	const home = manifestNamespace
	dir := t.TempDir()
	token, err := bed.ServiceAccountToken(context.Background(), home, "ingress-acme")
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := bed.Kubeconfig(token, kubeconfig); err != nil {
		t.Fatal(err)
	}
	ctl := newControllerWith(t, testbed.ControllerOptions{
		Namespace:  ns,
		Dir:        dir,
		Kubeconfig: kubeconfig,
		// Later flags win: the Lease and the account live in ingress-acme.
		Extra: append(slices.Clone(e2eFlags), "--controller-namespace", home, "--namespace", ns),
	})
	ctl.start()
	return ctl
}

// checkManifestController checks that ctl, the controller under the
// manifest's RBAC for ns, holds and renews its Lease, still runs, wrote its
// account Secret, and was never forbidden a request.
func checkManifestController(t *testing.T, ctl *controller, ns string) {
	t.Helper()
	ctx := context.Background()
	const home = manifestNamespace
	cs := bed.Client()
	// The Lease is held, and renewed (update) since it was taken (create).
	lease, err := cs.CoordinationV1().Leases(home).Get(ctx, "ingress-acme", metav1.GetOptions{})
	if err != nil {
		t.Errorf("Lease ingress-acme/ingress-acme: %v", err)
	} else {
		if got, want := ptrValue(lease.Spec.HolderIdentity), "testbed-"+ns; got != want {
			t.Errorf("Lease holder: got %q, want %q", got, want)
		}
		if lease.Spec.AcquireTime == nil || lease.Spec.RenewTime == nil || !lease.Spec.RenewTime.After(lease.Spec.AcquireTime.Time) {
			t.Errorf("Lease not renewed since acquired: acquire %v, renew %v", lease.Spec.AcquireTime, lease.Spec.RenewTime)
		}
	}
	if !ctl.Running() {
		t.Errorf("the controller exited:\n%s", ctl.LogTail(20))
	}
	accounts, err := cs.CoreV1().Secrets(home).List(ctx, metav1.ListOptions{LabelSelector: "ingress-acme.io/role=account"})
	if err != nil || len(accounts.Items) == 0 {
		t.Errorf("account Secret in ingress-acme: got %d (%v), want one", len(accounts.Items), err)
	}
	for _, rec := range ctl.logs() {
		if strings.Contains(fmt.Sprint(rec), "forbidden") {
			t.Errorf("a request was forbidden under the manifest's RBAC: %v", rec)
		}
	}
}

// manifestDoc returns the one YAML document of path whose kind is kind.
func manifestDoc(t *testing.T, path, kind string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var found []byte
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if meta.Kind == kind {
			if found != nil {
				t.Fatalf("%s: two documents of kind %s", path, kind)
			}
			found = doc
		}
	}
	if found == nil {
		t.Fatalf("%s: no %s", path, kind)
	}
	return found
}

func ptrValue(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// checkDeployment checks what the manifest promises of its pod: non-root, a
// read-only root filesystem, no capabilities, the runtime's seccomp profile,
// resources, probes on the health endpoints, and POD_IP from the downward API.
func checkDeployment(t *testing.T, src string, d *appsv1.Deployment) {
	t.Helper()
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%s: %d containers, want 1", src, len(pod.Containers))
	}
	c := pod.Containers[0]
	psc := pod.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	csc := c.SecurityContext
	if csc == nil {
		csc = &corev1.SecurityContext{}
	}
	isTrue := func(ps ...*bool) bool {
		for _, p := range ps {
			if p != nil {
				return *p
			}
		}
		return false
	}
	if !isTrue(csc.RunAsNonRoot, psc.RunAsNonRoot) {
		t.Errorf("%s: runAsNonRoot is not true", src)
	}
	for _, uid := range []*int64{csc.RunAsUser, psc.RunAsUser} {
		if uid != nil && *uid == 0 {
			t.Errorf("%s: runAsUser 0", src)
		}
	}
	if !isTrue(csc.ReadOnlyRootFilesystem) {
		t.Errorf("%s: readOnlyRootFilesystem is not true", src)
	}
	if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation is not false", src)
	}
	if csc.Privileged != nil && *csc.Privileged {
		t.Errorf("%s: privileged", src)
	}
	if csc.Capabilities == nil || !slices.Contains(csc.Capabilities.Drop, "ALL") || len(csc.Capabilities.Add) > 0 {
		t.Errorf("%s: capabilities: got %+v, want drop [ALL] and nothing added", src, csc.Capabilities)
	}
	seccomp := psc.SeccompProfile
	if csc.SeccompProfile != nil {
		seccomp = csc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccompProfile: got %+v, want RuntimeDefault", src, seccomp)
	}
	req, lim := c.Resources.Requests, c.Resources.Limits
	if req.Cpu().IsZero() || req.Memory().IsZero() || lim.Memory().IsZero() {
		t.Errorf("%s: resources: got requests %v limits %v, want cpu and memory requests and a memory limit", src, req, lim)
	}
	metricsPort := int32(0)
	for _, p := range c.Ports {
		if p.Name == "metrics" {
			metricsPort = p.ContainerPort
		}
	}
	if metricsPort != 9402 {
		t.Errorf("%s: container port metrics: got %d, want 9402 (the default --metrics-addr)", src, metricsPort)
	}
	for _, pr := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"livenessProbe", c.LivenessProbe, "/healthz"}, {"readinessProbe", c.ReadinessProbe, "/readyz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("%s: no HTTP %s", src, pr.name)
			continue
		}
		g := pr.probe.HTTPGet
		port := g.Port.IntVal
		if g.Port.StrVal != "" {
			if g.Port.StrVal == "metrics" {
				port = metricsPort
			} else {
				port = -1
			}
		}
		if g.Path != pr.path || port != metricsPort {
			t.Errorf("%s: %s: got %s on port %s, want %s on the metrics port", src, pr.name, g.Path, g.Port.String(), pr.path)
		}
	}
	podIP := false
	for _, e := range c.Env {
		if e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP" {
			podIP = true
		}
	}
	if !podIP {
		t.Errorf("%s: no env POD_IP from fieldRef status.podIP", src)
	}
	if pod.ServiceAccountName != "ingress-acme" {
		t.Errorf("%s: serviceAccountName: got %q, want ingress-acme", src, pod.ServiceAccountName)
	}
	if pod.AutomountServiceAccountToken != nil && !*pod.AutomountServiceAccountToken {
		t.Errorf("%s: automountServiceAccountToken false: the controller needs its token", src)
	}
}
