package testbed

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Data planes DataPlane can start besides the testbed's own Traefik, each with
// its own IngressClass of the same name.
const (
	// DataPlaneTraefik is Traefik's Kubernetes Ingress provider.
	DataPlaneTraefik = "traefik"
	// DataPlaneTraefikNGINX is Traefik's kubernetesIngressNGINX provider, which
	// reads ingress-nginx's annotations (a migration path off ingress-nginx).
	DataPlaneTraefikNGINX = "traefik-nginx"
	// DataPlaneHAProxy is jcmoraisjr/haproxy-ingress driving Debian's haproxy.
	DataPlaneHAProxy = "haproxy"
	// DataPlaneSkipper is zalando/skipper.
	DataPlaneSkipper = "skipper"
)

// DataPlanes lists every data plane DataPlane can start, in a stable order.
func DataPlanes() []string {
	return []string{DataPlaneTraefik, DataPlaneTraefikNGINX, DataPlaneHAProxy, DataPlaneSkipper}
}

// dataPlaneNamespace holds the data planes' ServiceAccount and haproxy-ingress's
// ConfigMap.
const dataPlaneNamespace = "testbed-dataplanes"

// DataPlane is an ingress controller on the testbed, on a loopback address of
// its own (127.x.y.z, not 127.0.0.1), like a load balancer address in a cluster:
// its HTTP listener is on the port Pebble sends HTTP-01 requests to (Traefik's
// web entrypoint port, on that other address), so Pebble reaches it once the
// host resolves to IP (see Route), with the Host header the CA sends.
type DataPlane struct {
	Name       string // one of DataPlanes()
	Version    string // of the binary, from hack/tools.env
	Class      string // its IngressClass (same as Name)
	Controller string // the IngressClass's spec.controller
	IP         string // loopback address its listeners bind
	HTTP       string // IP:port of plain HTTP; the port is Pebble's httpPort
	// HTTPS is IP:443 when this process may bind port 443 (root), so a
	// redirect to https://host/ is followed like in a cluster; else IP:port of
	// another free port, and HTTPS443 is false.
	HTTPS    string
	HTTPS443 bool
	Process  string // its process's name: logs/<Process>.log under Dir
}

// dataPlanes is the testbed's state for DataPlane and Route.
type dataPlanes struct {
	mu       sync.Mutex // guards the fields below; held while a data plane starts
	prefix   string     // "127.R.S.", this testbed's block of loopback addresses
	next     int        // last host number handed out in prefix
	planes   map[string]*DataPlane
	procs    map[string]*DataPlane // started processes by process name (two planes share Traefik's)
	identity *dataPlaneIdentity

	routeMu sync.RWMutex // guards routes
	routes  map[string]*DataPlane
}

// dataPlaneIdentity is the credential every data plane reads the API with.
type dataPlaneIdentity struct {
	token, tokenFile, kubeconfig string
}

// DataPlane starts the named data plane (one of DataPlanes) if it does not run
// yet, creates its IngressClass, and returns it; later calls return the same
// one. The first call builds missing binaries with hack/tools.sh. Both Traefik
// data planes are one Traefik process with both providers. Safe for concurrent
// use; a start blocks other starts.
func (tb *Testbed) DataPlane(ctx context.Context, name string) (*DataPlane, error) {
	d := &tb.dataPlanes
	d.mu.Lock()
	defer d.mu.Unlock()
	if dp := d.planes[name]; dp != nil {
		return dp, nil
	}
	if !slices.Contains(DataPlanes(), name) {
		return nil, fmt.Errorf("testbed: no data plane %q (have %s)", name, strings.Join(DataPlanes(), ", "))
	}
	if d.planes == nil {
		d.planes, d.procs = map[string]*DataPlane{}, map[string]*DataPlane{}
	}
	if err := tb.dataPlaneTools(ctx, name); err != nil {
		return nil, err
	}
	if d.identity == nil {
		id, err := tb.dataPlaneIdentity(ctx)
		if err != nil {
			return nil, err
		}
		d.identity = id
	}
	t0 := time.Now()
	var dp *DataPlane
	var err error
	switch name {
	case DataPlaneTraefik, DataPlaneTraefikNGINX:
		dp, err = tb.startTraefikPlanes(ctx)
		if err == nil {
			dp = d.planes[name]
		}
	case DataPlaneHAProxy:
		dp, err = tb.startHAProxy(ctx)
	case DataPlaneSkipper:
		dp, err = tb.startSkipper(ctx)
	}
	if err != nil {
		return nil, err
	}
	tb.logf("testbed: data plane %s %s ready in %.2fs: http %s, https %s, class %s", dp.Name, dp.Version, time.Since(t0).Seconds(), dp.HTTP, dp.HTTPS, dp.Class)
	return dp, nil
}

// Route makes hosts reach dp: pebble-challtestsrv answers them with dp.IP (so
// Pebble validates them there) and HTTPClient sends their requests to dp's
// listeners. Hosts without a route resolve to 127.0.0.1 and reach the testbed's
// own Traefik, as before.
func (tb *Testbed) Route(ctx context.Context, dp *DataPlane, hosts ...string) error {
	for _, h := range hosts {
		if err := tb.AddDNS(ctx, h, dp.IP); err != nil {
			return err
		}
	}
	d := &tb.dataPlanes
	d.routeMu.Lock()
	defer d.routeMu.Unlock()
	if d.routes == nil {
		d.routes = map[string]*DataPlane{}
	}
	for _, h := range hosts {
		d.routes[strings.ToLower(h)] = dp
	}
	return nil
}

// ingressAddrs returns where HTTPClient sends requests for host: its data
// plane's listeners, or the testbed's Traefik.
func (tb *Testbed) ingressAddrs(host string) (httpAddr, httpsAddr string) {
	d := &tb.dataPlanes
	d.routeMu.RLock()
	defer d.routeMu.RUnlock()
	if dp := d.routes[strings.ToLower(host)]; dp != nil {
		return dp.HTTP, dp.HTTPS
	}
	return tb.IngressHTTP, tb.IngressHTTPS
}

// dataPlaneTools makes sure the binaries of the named data plane are installed,
// running hack/tools.sh when they are not.
func (tb *Testbed) dataPlaneTools(ctx context.Context, name string) error {
	var need []string
	switch name {
	case DataPlaneHAProxy:
		need = []string{tb.Tools.HAProxyIngress, filepath.Join(tb.Tools.HAProxyIngressRootfs, "etc", "templates")}
		if _, err := exec.LookPath("haproxy"); err != nil {
			need = append(need, "haproxy")
		}
	case DataPlaneSkipper:
		need = []string{tb.Tools.Skipper}
	default:
		return nil
	}
	var missing []string
	for _, f := range need {
		if _, err := os.Stat(f); f == "haproxy" || err != nil {
			missing = append(missing, f)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	script := filepath.Join(tb.Tools.RepoRoot, "hack", "tools.sh")
	tb.logf("testbed: data plane %s: missing %s: running %s", name, strings.Join(missing, ", "), script)
	if err := runStreaming(ctx, tb.logf, script); err != nil {
		return fmt.Errorf("testbed: %s: %w", script, err)
	}
	if _, err := exec.LookPath("haproxy"); name == DataPlaneHAProxy && err != nil {
		return fmt.Errorf("testbed: haproxy is still not installed after %s", script)
	}
	return nil
}

// dataPlaneIdentity creates ServiceAccount testbed-dataplanes/ingress with what
// an ingress controller reads and writes, and returns its credentials as a
// token, a token file and a kubeconfig.
func (tb *Testbed) dataPlaneIdentity(ctx context.Context) (*dataPlaneIdentity, error) {
	read := []string{"get", "list", "watch"}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "testbed-dataplane"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services", "endpoints", "secrets", "configmaps", "pods", "nodes", "namespaces"}, Verbs: read},
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch", "update"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
			{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"ingresses", "ingressclasses"}, Verbs: read},
			{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"ingresses/status"}, Verbs: []string{"update", "patch"}},
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch", "create", "update"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "testbed-dataplane"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "ingress", Namespace: dataPlaneNamespace}},
	}
	rbac := tb.client.RbacV1()
	if _, err := rbac.ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("testbed: data plane ClusterRole: %w", err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("testbed: data plane ClusterRoleBinding: %w", err)
	}
	token, err := tb.ServiceAccountToken(ctx, dataPlaneNamespace, "ingress")
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(tb.Dir, "conf", "dataplanes")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	id := &dataPlaneIdentity{token: token, tokenFile: filepath.Join(dir, "token"), kubeconfig: filepath.Join(dir, "kubeconfig")}
	if err := os.WriteFile(id.tokenFile, []byte(token), 0o600); err != nil {
		return nil, err
	}
	if err := tb.writeKubeconfig(token, "dataplane", id.kubeconfig); err != nil {
		return nil, err
	}
	return id, nil
}

// newDataPlane allocates the next loopback address of this testbed's block for
// a data plane and its HTTPS port. The block, 127.R.S.0/24 with R and S random,
// keeps test binaries running side by side apart.
func (tb *Testbed) newDataPlane(name, version, controller, process string) (*DataPlane, error) {
	d := &tb.dataPlanes
	if d.prefix == "" {
		r, _ := rand.Int(rand.Reader, big.NewInt(254))
		s, _ := rand.Int(rand.Reader, big.NewInt(256))
		d.prefix = fmt.Sprintf("127.%d.%d.", r.Int64()+1, s.Int64())
		d.next = 1
	}
	for range 10 {
		d.next++
		if d.next > 254 {
			return nil, errors.New("testbed: out of data plane addresses")
		}
		ip := d.prefix + strconv.Itoa(d.next)
		// The HTTP port is fixed (Pebble's); the address must be free there.
		l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(tb.webPort)))
		if err != nil {
			continue
		}
		l.Close()
		dp := &DataPlane{
			Name: name, Version: version, Class: name, Controller: controller, IP: ip,
			HTTP: net.JoinHostPort(ip, strconv.Itoa(tb.webPort)), Process: process,
		}
		if l, err := net.Listen("tcp", net.JoinHostPort(ip, "443")); err == nil {
			l.Close()
			dp.HTTPS, dp.HTTPS443 = net.JoinHostPort(ip, "443"), true
		} else {
			var port int
			if err := freePorts(&port); err != nil {
				return nil, err
			}
			dp.HTTPS = net.JoinHostPort(ip, strconv.Itoa(port))
		}
		return dp, nil
	}
	return nil, fmt.Errorf("testbed: no free loopback address for %s in %s0/24", name, d.prefix)
}

// startDataPlaneProcess runs p (registered in tb.procs so that Stop ends it)
// and creates the IngressClass of each plane it serves.
func (tb *Testbed) startDataPlaneProcess(ctx context.Context, p *process, planes ...*DataPlane) error {
	p.logPath = filepath.Join(tb.Dir, "logs", p.name+".log")
	p.pidPath = filepath.Join(tb.Dir, "run", p.name+".pid")
	if p.grace == 0 {
		p.grace = 5 * time.Second
	}
	if p.timeout == 0 {
		p.timeout = 60 * time.Second
	}
	tb.mu.Lock()
	if _, dup := tb.procs[p.name]; dup {
		tb.mu.Unlock()
		return fmt.Errorf("testbed: %s exists", p.name)
	}
	tb.procs[p.name] = p
	tb.mu.Unlock()
	for _, dp := range planes {
		class := &networkingv1.IngressClass{
			ObjectMeta: metav1.ObjectMeta{Name: dp.Class},
			Spec:       networkingv1.IngressClassSpec{Controller: dp.Controller},
		}
		if _, err := tb.client.NetworkingV1().IngressClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("testbed: IngressClass %s: %w", dp.Class, err)
		}
	}
	if err := tb.run(ctx, p); err != nil {
		tb.mu.Lock()
		p.stop()
		tb.mu.Unlock()
		return fmt.Errorf("testbed: %w\n--- last 30 lines of %s ---\n%s", err, p.logPath, p.tail(30))
	}
	d := &tb.dataPlanes
	for _, dp := range planes {
		d.planes[dp.Name] = dp
		d.procs[p.name] = dp
	}
	return nil
}

// dialReady reports whether something accepts connections at addr.
func dialReady(ctx context.Context, addr string) error {
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// startTraefikPlanes starts one Traefik with both Ingress providers: the
// Kubernetes Ingress one for IngressClass traefik and the kubernetesIngressNGINX
// one for IngressClass traefik-nginx. Its file provider defines the middleware
// redirect-to-https@file, an HTTP to HTTPS redirect for Ingresses to name.
func (tb *Testbed) startTraefikPlanes(ctx context.Context) (*DataPlane, error) {
	version := tb.Tools.Versions["TRAEFIK_VERSION"]
	const proc = "traefik-dataplanes"
	plain, err := tb.newDataPlane(DataPlaneTraefik, version, "traefik.io/ingress-controller", proc)
	if err != nil {
		return nil, err
	}
	nginx := *plain
	nginx.Name, nginx.Class, nginx.Controller = DataPlaneTraefikNGINX, DataPlaneTraefikNGINX, "k8s.io/ingress-nginx"
	var pingPort int
	if err := freePorts(&pingPort); err != nil {
		return nil, err
	}
	dir := filepath.Join(tb.Dir, "conf", "dataplanes")
	dynamic := filepath.Join(dir, "traefik-dynamic.yml")
	if err := os.WriteFile(dynamic, []byte(traefikDynamic), 0o644); err != nil {
		return nil, err
	}
	id := tb.dataPlanes.identity
	static, err := traefikOptions{
		Web: plain.HTTP, WebSecure: plain.HTTPS, Ping: hostPort(pingPort),
		APIServer: tb.APIServerURL, Token: id.token, CAFile: tb.APIServerCAFile,
		IngressClass: plain.Class, NGINXClass: nginx.Class, NGINXController: nginx.Controller,
		DynamicFile: dynamic,
	}.yaml()
	if err != nil {
		return nil, err
	}
	config := filepath.Join(dir, "traefik.yml")
	if err := os.WriteFile(config, static, 0o644); err != nil {
		return nil, err
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	p := &process{
		name: proc,
		command: func() ([]string, []string) {
			return []string{tb.Tools.Traefik, "--configFile=" + config}, nil
		},
		ready: func(ctx context.Context) error {
			_, err := get(ctx, client, "http://"+hostPort(pingPort)+"/ping", "")
			return err
		},
	}
	if err := tb.startDataPlaneProcess(ctx, p, plain, &nginx); err != nil {
		return nil, err
	}
	return plain, nil
}

// startHAProxy starts haproxy-ingress (which runs haproxy) for IngressClass
// haproxy, configured by ConfigMap testbed-dataplanes/haproxy-ingress.
func (tb *Testbed) startHAProxy(ctx context.Context) (*DataPlane, error) {
	const proc = "haproxy-ingress"
	dp, err := tb.newDataPlane(DataPlaneHAProxy, tb.Tools.Versions["HAPROXY_INGRESS_VERSION"], "haproxy-ingress.github.io/controller", proc)
	if err != nil {
		return nil, err
	}
	var healthz, haproxyHealthz, stats, prom int
	if err := freePorts(&healthz, &haproxyHealthz, &stats, &prom); err != nil {
		return nil, err
	}
	_, httpsPort, _ := net.SplitHostPort(dp.HTTPS)
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: proc, Namespace: dataPlaneNamespace},
		Data: map[string]string{
			"http-port":               strconv.Itoa(tb.webPort),
			"https-port":              httpsPort,
			"bind-ip-addr-http":       dp.IP,
			"bind-ip-addr-healthz":    "127.0.0.1",
			"healthz-port":            strconv.Itoa(haproxyHealthz),
			"bind-ip-addr-stats":      "127.0.0.1",
			"stats-port":              strconv.Itoa(stats),
			"bind-ip-addr-prometheus": "127.0.0.1",
			"prometheus-port":         strconv.Itoa(prom),
		},
	}
	if _, err := tb.client.CoreV1().ConfigMaps(dataPlaneNamespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("testbed: haproxy-ingress ConfigMap: %w", err)
	}
	// It reads its templates from ./rootfs and haproxy's Lua scripts from
	// <prefix>/etc/haproxy/lua: a work folder with copies of both.
	work := filepath.Join(tb.Dir, "data", proc)
	fs := filepath.Join(work, "fs")
	lua := filepath.Join(fs, "etc", "haproxy", "lua")
	if err := os.MkdirAll(lua, 0o755); err != nil {
		return nil, err
	}
	if err := os.CopyFS(filepath.Join(work, "rootfs"), os.DirFS(tb.Tools.HAProxyIngressRootfs)); err != nil {
		return nil, err
	}
	if err := os.CopyFS(lua, os.DirFS(filepath.Join(tb.Tools.HAProxyIngressRootfs, "etc", "lua"))); err != nil {
		return nil, err
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	p := &process{
		name: proc,
		dir:  work,
		command: func() ([]string, []string) {
			return []string{tb.Tools.HAProxyIngress,
				"--kubeconfig=" + tb.dataPlanes.identity.kubeconfig,
				"--local-filesystem-prefix=" + fs,
				"--update-status=false",
				"--watch-gateway=false",
				"--configmap=" + dataPlaneNamespace + "/" + proc,
				"--ingress-class=" + dp.Class,
				"--healthz-addr=" + hostPort(healthz),
				// By default it applies changes at most every 2 s, a tenth of the
				// testbed's 20 s certificates: a renewal late in that window would
				// meet an expired certificate still served. Like Traefik's
				// throttle, lifted here; real lifetimes leave hours.
				"--rate-limit-update=10",
			}, []string{"POD_NAMESPACE=" + dataPlaneNamespace}
		},
		ready: func(ctx context.Context) error {
			if _, err := get(ctx, client, "http://"+hostPort(healthz)+"/healthz", ""); err != nil {
				return err
			}
			return dialReady(ctx, dp.HTTP) // haproxy itself, after the first sync
		},
	}
	if err := tb.startDataPlaneProcess(ctx, p, dp); err != nil {
		return nil, err
	}
	return dp, nil
}

// startSkipper starts skipper for IngressClass skipper: it reads the API with a
// token file (it takes no kubeconfig), EndpointSlices, polls every 500 ms,
// keeps the Host header for backends, and serves TLS from the Ingresses'
// Secrets on HTTPS.
func (tb *Testbed) startSkipper(ctx context.Context) (*DataPlane, error) {
	const proc = "skipper"
	dp, err := tb.newDataPlane(DataPlaneSkipper, tb.Tools.Versions["SKIPPER_VERSION"], "zalando.org/skipper", proc)
	if err != nil {
		return nil, err
	}
	var support int
	if err := freePorts(&support); err != nil {
		return nil, err
	}
	p := &process{
		name: proc,
		command: func() ([]string, []string) {
			return []string{tb.Tools.Skipper,
				"-address=" + dp.HTTPS,
				"-insecure-address=" + dp.HTTP,
				"-support-listener=" + hostPort(support),
				"-kubernetes",
				"-kubernetes-url=" + tb.APIServerURL,
				"-kubernetes-token-file=" + tb.dataPlanes.identity.tokenFile,
				"-enable-kubernetes-endpointslices",
				"-source-poll-timeout=500",
				"-kubernetes-ingress-class=^" + dp.Class + "$",
				"-kubernetes-enable-tls",
				"-wait-for-healthcheck-interval=0",
				// By default skipper sends backends the Host header of the
				// backend's address; ingress-acme's challenge server answers a
				// token only for its own host.
				"-proxy-preserve-host",
				"-application-log-level=INFO",
			}, []string{"SSL_CERT_FILE=" + tb.APIServerCAFile}
		},
		ready: func(ctx context.Context) error { return dialReady(ctx, dp.HTTP) },
	}
	if err := tb.startDataPlaneProcess(ctx, p, dp); err != nil {
		return nil, err
	}
	return dp, nil
}
