package testbed

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Backend is an HTTP server on loopback that Traefik reaches through a
// Kubernetes Service of the same name.
type Backend struct {
	Namespace string
	Name      string // of the Service and the base of the EndpointSlice's name
	Addr      string // 127.0.0.1:PORT the server listens on
	Port      int

	srv *http.Server
}

// Close stops the server (the Service and EndpointSlice stay).
func (b *Backend) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := b.srv.Shutdown(ctx); err != nil {
		_ = b.srv.Close()
	}
}

// Backend starts an HTTP server on 127.0.0.1:0 running handler (nil: answer
// 200 "backend <name>" to every request) and creates in ns a selector-less
// Service name (port "http", 80) plus an EndpointSlice for it with addressType
// FQDN and address 127.0.0.1 on the server's port: Endpoints and IPv4 slices
// reject loopback addresses, FQDN slices do not, and Traefik dials
// 127.0.0.1:<port> for them. Close the Backend when done.
func (tb *Testbed) Backend(ctx context.Context, ns, name string, handler http.Handler) (*Backend, error) {
	if handler == nil {
		body := "backend " + name
		handler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprint(w, body)
		})
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &Backend{
		Namespace: ns,
		Name:      name,
		Addr:      l.Addr().String(),
		Port:      l.Addr().(*net.TCPAddr).Port,
		srv:       &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second},
	}
	go func() { _ = b.srv.Serve(l) }()
	if err := tb.exposeLoopback(ctx, ns, name, b.Port); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// exposeLoopback creates (or updates) the selector-less Service ns/name with
// port "http" 80 and an FQDN EndpointSlice pointing it at 127.0.0.1:port.
func (tb *Testbed) exposeLoopback(ctx context.Context, ns, name string, port int) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(int32(port))}},
		},
	}
	core := tb.client.CoreV1()
	if _, err := core.Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("testbed: service %s/%s: %w", ns, name, err)
	}
	portName, proto, p32, ready := "http", corev1.ProtocolTCP, int32(port), true
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name + "-loopback",
			Namespace: ns,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: name,
				discoveryv1.LabelManagedBy:   "testbed.ingress-acme",
			},
		},
		AddressType: discoveryv1.AddressTypeFQDN,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{"127.0.0.1"},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		}},
		Ports: []discoveryv1.EndpointPort{{Name: &portName, Protocol: &proto, Port: &p32}},
	}
	if _, err := tb.quietClient.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("testbed: endpointslice %s/%s: %w", ns, slice.Name, err)
	}
	return nil
}

// HTTPClient returns a client that sends every request to Traefik, whatever
// the URL's host: http:// URLs to IngressHTTP and https:// URLs to
// IngressHTTPS; or, for a host given a data plane with Route, to that data
// plane's listeners. The URL's host is the Host header and the TLS server name, so
// GET http://app.test/ reaches the Ingress for app.test. If host is not empty
// it replaces the URL's host as Host header and server name.
//
// Certificates are not verified (use HTTPClientWithRoots for that); the
// response's TLS field shows what was served. Keep-alives are off: every
// request makes a new connection, so it sees Traefik's current certificates.
func (tb *Testbed) HTTPClient(host string) *http.Client {
	return tb.HTTPClientWithRoots(host, nil)
}

// HTTPClientWithRoots is HTTPClient verifying https:// against roots (nil: no
// verification).
func (tb *Testbed) HTTPClientWithRoots(host string, roots *x509.CertPool) *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		Proxy:             nil,
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			h, _, _ := net.SplitHostPort(addr)
			plain, _ := tb.ingressAddrs(h)
			return dialer.DialContext(ctx, network, plain)
		},
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			serverName := host
			if serverName == "" {
				h, _, err := net.SplitHostPort(addr)
				if err != nil {
					return nil, err
				}
				serverName = h
			}
			h, _, _ := net.SplitHostPort(addr)
			_, secure := tb.ingressAddrs(h)
			raw, err := dialer.DialContext(ctx, network, secure)
			if err != nil {
				return nil, err
			}
			conn := tls.Client(raw, &tls.Config{
				ServerName:         serverName,
				RootCAs:            roots,
				InsecureSkipVerify: roots == nil, //nolint:gosec // documented: inspect resp.TLS instead
				NextProtos:         []string{"http/1.1"},
			})
			if err := conn.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, err
			}
			return conn, nil
		},
		ResponseHeaderTimeout: 10 * time.Second,
	}
	var rt http.RoundTripper = tr
	if host != "" {
		rt = hostOverride{host: host, next: tr}
	}
	return &http.Client{Transport: rt, Timeout: 15 * time.Second}
}

// hostOverride sets the Host header of every request.
type hostOverride struct {
	host string
	next http.RoundTripper
}

func (h hostOverride) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL == nil {
		return nil, errors.New("testbed: request without URL")
	}
	r := req.Clone(req.Context())
	r.Host = h.host
	if !strings.EqualFold(r.URL.Scheme, "http") && !strings.EqualFold(r.URL.Scheme, "https") {
		return nil, fmt.Errorf("testbed: unsupported scheme %q", r.URL.Scheme)
	}
	return h.next.RoundTrip(r)
}
