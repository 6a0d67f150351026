package testbed

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// serviceAccountIssuer is the API server's --service-account-issuer.
const serviceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

// randomToken returns 32 random hex characters.
func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// prepareStatic writes what does not depend on ports: the service account key
// pair and the static token file.
func (tb *Testbed) prepareStatic() error {
	pki := filepath.Join(tb.Dir, "pki")
	tb.saKey, tb.saPub = filepath.Join(pki, "sa.key"), filepath.Join(pki, "sa.pub")
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(tb.saKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(tb.saPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return err
	}
	tb.adminTok, tb.traefikToken = randomToken(), randomToken()
	// token,user,uid,"group1,group2"
	tokens := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n%s,traefik,traefik\n", tb.adminTok, tb.traefikToken)
	tb.tokensFile = filepath.Join(pki, "tokens.csv")
	if err := os.WriteFile(tb.tokensFile, []byte(tokens), 0o600); err != nil {
		return err
	}
	tb.certDir = filepath.Join(tb.Dir, "data", "apiserver-certs")
	tb.APIServerCAFile = filepath.Join(tb.certDir, "apiserver.crt")
	tb.etcdData = filepath.Join(tb.Dir, "data", "etcd")
	tb.traefikConfig = filepath.Join(tb.Dir, "conf", "traefik.yml")
	tb.pebbleConfig = filepath.Join(tb.Dir, "conf", "pebble-config.json")
	tb.AdminKubeconfig = filepath.Join(tb.Dir, "conf", "admin.kubeconfig")
	tb.PebbleCAFile = tb.Tools.PebbleMiniCA
	ca, err := os.ReadFile(tb.PebbleCAFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return fmt.Errorf("testbed: no certificate in %s", tb.PebbleCAFile)
	}
	tb.pebbleTLS = &tls.Config{RootCAs: pool}
	return nil
}

// defineProcesses describes how to run and probe each component.
func (tb *Testbed) defineProcesses() {
	add := func(p *process) {
		p.logPath = filepath.Join(tb.Dir, "logs", p.name+".log")
		p.pidPath = filepath.Join(tb.Dir, "run", p.name+".pid")
		if p.grace == 0 {
			p.grace = 5 * time.Second
		}
		if p.timeout == 0 {
			p.timeout = 30 * time.Second
		}
		tb.procs[p.name] = p
	}
	plain := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	add(&process{
		name: Etcd,
		command: func() ([]string, []string) {
			client, peer := "http://"+hostPort(tb.etcdPort), "http://"+hostPort(tb.etcdPeerPort)
			return []string{tb.Tools.Etcd,
				"--name", "testbed", "--data-dir", tb.etcdData,
				"--listen-client-urls", client, "--advertise-client-urls", client,
				"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
				"--initial-cluster", "testbed=" + peer,
				"--unsafe-no-fsync", // test data only
			}, nil
		},
		ready: func(ctx context.Context) error {
			body, err := get(ctx, plain, tb.EtcdURL+"/health", "")
			if err != nil {
				return err
			}
			var h struct{ Health string }
			if json.Unmarshal(body, &h) != nil || h.Health != "true" {
				return fmt.Errorf("/health: %s", body)
			}
			return nil
		},
	})
	add(&process{
		name:    KubeAPIServer,
		grace:   2 * time.Second, // it holds SIGTERM >10 s while watches are open; SIGKILL is fine here
		timeout: 90 * time.Second,
		command: func() ([]string, []string) {
			return []string{tb.Tools.KubeAPIServer,
				"--etcd-servers=" + tb.EtcdURL,
				"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
				"--secure-port=" + strconv.Itoa(tb.apiPort),
				"--cert-dir=" + tb.certDir,
				"--token-auth-file=" + tb.tokensFile,
				"--service-account-issuer=" + serviceAccountIssuer,
				"--service-account-key-file=" + tb.saPub,
				"--service-account-signing-key-file=" + tb.saKey,
				"--service-cluster-ip-range=127.100.0.0/16",
				"--authorization-mode=RBAC",
				// The reconciler would write 127.0.0.1 into the kubernetes
				// Endpoints, which validation rejects.
				"--endpoint-reconciler-type=none",
			}, nil
		},
		ready: func(ctx context.Context) error {
			ca, err := os.ReadFile(tb.APIServerCAFile)
			if err != nil {
				return err // written by the API server early in its start
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(ca) {
				return fmt.Errorf("no certificate in %s yet", tb.APIServerCAFile)
			}
			c := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true, TLSClientConfig: &tls.Config{RootCAs: pool}}}
			_, err = get(ctx, c, tb.APIServerURL+"/readyz", tb.adminTok)
			return err
		},
	})
	add(&process{
		name: ChallTestSrv,
		command: func() ([]string, []string) {
			// Its defaults listen on all interfaces: disable every server but
			// DNS and management, and bind those to loopback.
			return []string{tb.Tools.ChallTestSrv,
				"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
				"-dnsserver", tb.ChallTestSrvDNS,
				"-management", hostPort(tb.ctsMgmtPort),
				"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "",
			}, nil
		},
		ready: func(ctx context.Context) error {
			var d net.Dialer
			for _, a := range []string{hostPort(tb.ctsMgmtPort), tb.ChallTestSrvDNS} {
				c, err := d.DialContext(ctx, "tcp", a)
				if err != nil {
					return err
				}
				c.Close()
			}
			return nil
		},
	})
	add(&process{
		name: Traefik,
		command: func() ([]string, []string) {
			return []string{tb.Tools.Traefik, "--configFile=" + tb.traefikConfig}, nil
		},
		ready: func(ctx context.Context) error {
			_, err := get(ctx, plain, tb.TraefikPing, "")
			return err
		},
	})
	add(&process{
		name: Pebble,
		command: func() ([]string, []string) {
			env := append([]string{"PEBBLE_VA_NOSLEEP=1"}, tb.opts.PebbleEnv...)
			return []string{tb.Tools.Pebble, "-config", tb.pebbleConfig, "-dnsserver", tb.ChallTestSrvDNS}, env
		},
		ready: func(ctx context.Context) error {
			_, err := get(ctx, tb.PebbleClient(), tb.PebbleDirectory, "")
			return err
		},
	})
}

// allocate picks ports for a component and writes its configuration.
func (tb *Testbed) allocate(name string) error {
	switch name {
	case Etcd:
		if err := freePorts(&tb.etcdPort, &tb.etcdPeerPort); err != nil {
			return err
		}
		tb.EtcdURL = "http://" + hostPort(tb.etcdPort)
		return os.RemoveAll(tb.etcdData) // fresh data on a retry too
	case KubeAPIServer:
		if err := freePorts(&tb.apiPort); err != nil {
			return err
		}
		tb.APIServerURL = "https://" + hostPort(tb.apiPort)
		return nil
	case ChallTestSrv:
		if err := freePorts(&tb.dnsPort, &tb.ctsMgmtPort); err != nil {
			return err
		}
		tb.ChallTestSrvDNS = hostPort(tb.dnsPort)
		tb.ChallTestSrvManagement = "http://" + hostPort(tb.ctsMgmtPort)
		return nil
	case Traefik:
		if err := freePorts(&tb.webPort, &tb.websecurePort, &tb.traefikPort); err != nil {
			return err
		}
		tb.IngressHTTP, tb.IngressHTTPS = hostPort(tb.webPort), hostPort(tb.websecurePort)
		tb.TraefikPing = "http://" + hostPort(tb.traefikPort) + "/ping"
		cfg, err := traefikOptions{
			Web: tb.IngressHTTP, WebSecure: tb.IngressHTTPS, Ping: hostPort(tb.traefikPort), API: true,
			APIServer: tb.APIServerURL, Token: tb.traefikToken, CAFile: tb.APIServerCAFile,
		}.yaml()
		if err != nil {
			return err
		}
		return os.WriteFile(tb.traefikConfig, cfg, 0o644)
	case Pebble:
		if err := freePorts(&tb.pebblePort, &tb.pebbleMgmtPort); err != nil {
			return err
		}
		tb.PebbleDirectory = "https://" + hostPort(tb.pebblePort) + "/dir"
		tb.PebbleManagement = "https://" + hostPort(tb.pebbleMgmtPort)
		b, err := tb.pebbleJSON()
		if err != nil {
			return err
		}
		return os.WriteFile(tb.pebbleConfig, b, 0o644)
	}
	return fmt.Errorf("testbed: unknown component %q", name)
}

// pebbleJSON is Pebble's configuration: loopback listeners, challenges sent to
// Traefik's entrypoints, and the default profile's validity from Options.
func (tb *Testbed) pebbleJSON() ([]byte, error) {
	return tb.pebbleJSONFor(tb.pebblePort, tb.pebbleMgmtPort, nil)
}

// pebbleJSONFor is pebbleJSON for a Pebble listening on port and mgmtPort; with
// eabKeys (key ID -> base64url HMAC key) it requires External Account Binding.
func (tb *Testbed) pebbleJSONFor(port, mgmtPort int, eabKeys map[string]string) ([]byte, error) {
	validity := tb.opts.CertValidity
	if validity == 0 {
		validity = 90 * 24 * time.Hour
	}
	if validity < time.Second {
		return nil, fmt.Errorf("testbed: CertValidity %s is under a second", validity)
	}
	short := tb.opts.ShortLivedValidity
	if short == 0 {
		short = 6 * 24 * time.Hour
	}
	if short < time.Second {
		return nil, fmt.Errorf("testbed: ShortLivedValidity %s is under a second", short)
	}
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  hostPort(port),
		"managementListenAddress":        hostPort(mgmtPort),
		"certificate":                    tb.Tools.PebbleCert,
		"privateKey":                     tb.Tools.PebbleKey,
		"httpPort":                       tb.webPort,
		"tlsPort":                        tb.websecurePort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": len(eabKeys) > 0,
		"externalAccountMACKeys":         eabKeys,
		"domainBlocklist":                []string{"blocked-domain.example"},
		"retryAfter":                     map[string]int{"authz": 3, "order": 5},
		"keyAlgorithm":                   "ecdsa",
		"profiles": map[string]any{
			"default":    map[string]any{"description": "The profile you know and love", "validityPeriod": int64(validity / time.Second)},
			"shortlived": map[string]any{"description": "A short-lived cert profile", "validityPeriod": int64(short / time.Second)},
		},
	}}
	return json.MarshalIndent(cfg, "", "  ")
}

// afterAPIServer sets up admin access and the RBAC Traefik needs.
func (tb *Testbed) afterAPIServer(ctx context.Context) error {
	ca, err := os.ReadFile(tb.APIServerCAFile)
	if err != nil {
		return err
	}
	tb.AdminConfig = &rest.Config{
		Host:            tb.APIServerURL,
		BearerToken:     tb.adminTok,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca},
		QPS:             200,
		Burst:           400,
		Timeout:         30 * time.Second,
	}
	cs, err := kubernetes.NewForConfig(tb.AdminConfig)
	if err != nil {
		return err
	}
	tb.client = cs
	// Backend's FQDN EndpointSlices draw a deprecation warning on every write.
	quiet := rest.CopyConfig(tb.AdminConfig)
	quiet.WarningHandler = rest.NoWarnings{}
	if tb.quietClient, err = kubernetes.NewForConfig(quiet); err != nil {
		return err
	}
	if err := tb.writeKubeconfig(tb.adminTok, "admin", tb.AdminKubeconfig); err != nil {
		return err
	}
	return tb.applyTraefikRBAC(ctx)
}

// applyTraefikRBAC grants the traefik user what its Ingress provider reads.
func (tb *Testbed) applyTraefikRBAC(ctx context.Context) error {
	read := []string{"get", "list", "watch"}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "traefik-ingress"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services", "secrets", "nodes"}, Verbs: read},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
			{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"ingresses", "ingressclasses"}, Verbs: read},
			{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"ingresses/status"}, Verbs: []string{"update"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "traefik-ingress"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "traefik"}},
	}
	rbac := tb.client.RbacV1()
	if _, err := rbac.ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("testbed: traefik ClusterRole: %w", err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("testbed: traefik ClusterRoleBinding: %w", err)
	}
	return nil
}

// get GETs url (with a bearer token if given) and returns the body of a 200.
func get(ctx context.Context, c *http.Client, url, token string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, errors.New(resp.Status)
	}
	return body, nil
}
