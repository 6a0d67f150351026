package soak

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// caOrder is one ACME order as the CA saw it, recorded by caRecorder.
type caOrder struct {
	URL      string    // the order's URL path
	Hosts    []string  // identifiers, sorted
	Replaces string    // the ARI certificate ID of the "replaces" field, if any
	Profile  string    // the "profile" field, if any
	Created  time.Time // when the CA answered 201 to the new-order request
	// LastActivity is the last request touching the order, its authorizations,
	// challenges, finalization or certificate.
	LastActivity time.Time
	Status       string    // last status the CA reported for the order
	Done         time.Time // when it became valid or invalid (zero: not yet)
	Lost         time.Time // when the CA restarted and forgot it (zero: not lost)
}

// end is when the order stopped existing for the CA: done or lost; zero if it
// is still alive.
func (o *caOrder) end() time.Time {
	switch {
	case o.Done.IsZero():
		return o.Lost
	case o.Lost.IsZero():
		return o.Done
	}
	return minTime(o.Done, o.Lost)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// caRecorder is a TLS-terminating reverse proxy in front of a Pebble that
// records every order the controller places, from the CA's side: identifiers,
// "replaces", status, tokens, and the last request touching each order. The
// controller trusts it through --acme-ca-bundle; Pebble builds its URLs from
// the Host header, which the proxy keeps, so every request comes back through.
type caRecorder struct {
	Addr   string // 127.0.0.1:PORT, serving TLS
	CAFile string // PEM of the root that signs its serving certificate

	srv *http.Server

	// mu guards everything below.
	mu       sync.Mutex
	orders   []*caOrder
	byPath   map[string]*caOrder // order, authorization, challenge, finalize and certificate paths
	byToken  map[string]*caOrder
	ariStart map[string]time.Time // serial (hex) -> start of the renewal window the CA suggested
	requests int
	failures int // answers with status >= 500 (Pebble down: 502)
}

// newCARecorder starts a recorder forwarding to the Pebble at target (an
// https://host:port base URL) through client's transport; its root goes to dir.
func newCARecorder(dir string, target *url.URL, transport http.RoundTripper) (*caRecorder, error) {
	certPEM, keyPEM, caPEM, err := selfSignedFor127()
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	r := &caRecorder{CAFile: filepath.Join(dir, "ca-recorder.pem"), byPath: map[string]*caOrder{}, byToken: map[string]*caOrder{}, ariStart: map[string]time.Time{}}
	if err := os.WriteFile(r.CAFile, caPEM, 0o644); err != nil {
		return nil, err
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host // Pebble's URLs name the address the controller used
		},
		Transport:      transport,
		ModifyResponse: r.observe,
		ErrorLog:       log.New(io.Discard, "", 0),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r.Addr = ln.Addr().String()
	// The request body (a JWS) is read here and handed to observe through the
	// context, since the outgoing request streams it to Pebble.
	handler := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		req.Body = io.NopCloser(bytes.NewReader(body))
		rp.ServeHTTP(w, req.WithContext(context.WithValue(req.Context(), jwsBodyKey{}, body)))
	})
	r.srv = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = r.srv.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})) }()
	return r, nil
}

func (r *caRecorder) Close() { _ = r.srv.Close() }

// jwsBodyKey is the context key of the request body observe reads.
type jwsBodyKey struct{}

// observe records what a CA response says about orders.
func (r *caRecorder) observe(resp *http.Response) error {
	now := time.Now()
	req := resp.Request
	reqBody, _ := req.Context().Value(jwsBodyKey{}).([]byte)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return err
	}
	path := req.URL.Path
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	if resp.StatusCode >= 500 {
		r.failures++
	}
	var payload struct {
		Identifiers []struct{ Value string } `json:"identifiers"`
		Replaces    string                   `json:"replaces"`
		Profile     string                   `json:"profile"`
	}
	jwsPayload(reqBody, &payload)
	var doc struct {
		Status         string   `json:"status"`
		Authorizations []string `json:"authorizations"`
		Finalize       string   `json:"finalize"`
		Certificate    string   `json:"certificate"`
		Challenges     []struct {
			URL   string `json:"url"`
			Token string `json:"token"`
		} `json:"challenges"`
	}
	var ari struct {
		SuggestedWindow struct{ Start time.Time } `json:"suggestedWindow"`
	}
	if resp.StatusCode == http.StatusOK && json.Unmarshal(body, &ari) == nil && !ari.SuggestedWindow.Start.IsZero() {
		if serial, ok := ariSerial(path[strings.LastIndexByte(path, '/')+1:]); ok {
			r.ariStart[serial.Text(16)] = ari.SuggestedWindow.Start
		}
	}
	_ = json.Unmarshal(body, &doc)

	o := r.byPath[path]
	if resp.StatusCode == http.StatusCreated && len(payload.Identifiers) > 0 && doc.Finalize != "" {
		loc, _ := url.Parse(resp.Header.Get("Location"))
		if loc == nil {
			return nil
		}
		o = &caOrder{URL: loc.Path, Replaces: payload.Replaces, Profile: payload.Profile, Created: now}
		for _, id := range payload.Identifiers {
			o.Hosts = append(o.Hosts, strings.ToLower(id.Value))
		}
		slices.Sort(o.Hosts)
		r.orders = append(r.orders, o)
		r.byPath[o.URL] = o
	}
	if o == nil {
		return nil
	}
	o.LastActivity = now
	if resp.StatusCode >= 300 {
		return nil
	}
	for _, u := range append(slices.Clone(doc.Authorizations), doc.Finalize, doc.Certificate) {
		if p, err := url.Parse(u); err == nil && p.Path != "" {
			r.byPath[p.Path] = o
		}
	}
	for _, ch := range doc.Challenges {
		if p, err := url.Parse(ch.URL); err == nil {
			r.byPath[p.Path] = o
		}
		if ch.Token != "" {
			r.byToken[ch.Token] = o
		}
	}
	isOrder := path == o.URL || doc.Finalize != ""
	switch {
	case isOrder && doc.Status != "":
		o.Status = doc.Status
		if (doc.Status == "valid" || doc.Status == "invalid") && o.Done.IsZero() {
			o.Done = now
		}
	case len(doc.Challenges) > 0 && doc.Status == "invalid" && o.Done.IsZero():
		o.Status, o.Done = "invalid", now // a failed authorization fails the order
	}
	return nil
}

// jwsPayload decodes the payload of a flattened JWS request body into v; a
// body that is not one leaves v as it was.
func jwsPayload(body []byte, v any) {
	var jws struct {
		Payload string `json:"payload"`
	}
	if json.Unmarshal(body, &jws) != nil || jws.Payload == "" {
		return
	}
	raw, err := base64.RawURLEncoding.DecodeString(jws.Payload)
	if err != nil {
		return
	}
	_ = json.Unmarshal(raw, v)
}

// caRestarted marks every order still alive as lost: a Pebble restart forgets them.
func (r *caRecorder) caRestarted(at time.Time) []*caOrder {
	r.mu.Lock()
	defer r.mu.Unlock()
	var lost []*caOrder
	for _, o := range r.orders {
		if o.end().IsZero() {
			o.Lost = at
			lost = append(lost, o)
		}
	}
	return lost
}

// snapshot returns copies of every order so far.
func (r *caRecorder) snapshot() []caOrder {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]caOrder, len(r.orders))
	for i, o := range r.orders {
		out[i] = *o
	}
	return out
}

// orderOf returns a copy of the order whose challenge has token.
func (r *caRecorder) orderOf(token string) (caOrder, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o := r.byToken[token]
	if o == nil {
		return caOrder{}, false
	}
	return *o, true
}

// renewalWindowStart is the start of the renewal window the CA suggested for
// the certificate with serial (hex), if the controller asked.
func (r *caRecorder) renewalWindowStart(serial string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.ariStart[serial]
	return t, ok
}

func (r *caRecorder) counts() (requests, failures int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests, r.failures
}

// ariSerial returns the serial number of an ARI certificate ID
// (base64url(AKI) "." base64url(serial)).
func ariSerial(id string) (*big.Int, bool) {
	_, s, ok := strings.Cut(id, ".")
	if !ok {
		return nil, false
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return nil, false
	}
	return new(big.Int).SetBytes(b), true
}

// selfSignedFor127 makes a root and a serving certificate for 127.0.0.1
// signed by it, valid for a day.
func selfSignedFor127() (certPEM, keyPEM, caPEM []byte, err error) {
	return certWithRoot("soak CA recorder", []net.IP{net.ParseIP("127.0.0.1")}, "localhost")
}

// certWithRoot makes a root named name and a serving certificate for ips and
// hosts signed by it, valid for a day.
func certWithRoot(name string, ips []net.IP, hosts ...string) (certPEM, keyPEM, caPEM []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: ips, DNSNames: hosts,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), nil
}

// pebbleTransport is a keep-alive transport trusting Pebble's own serving
// certificate, made from pebble (the testbed's PebbleClient).
func pebbleTransport(pebble *http.Client) (http.RoundTripper, error) {
	base, ok := pebble.Transport.(*http.Transport)
	if !ok {
		return nil, errors.New("PebbleClient has no *http.Transport")
	}
	tr := base.Clone()
	tr.DisableKeepAlives = false
	tr.ResponseHeaderTimeout = 30 * time.Second
	return tr, nil
}

// caRoots accumulates every root the soak's CA had (it makes a new one on each
// restart): certificates it issued earlier stay valid for clients that trust
// them.
type caRoots struct {
	// mu guards pool and pems.
	mu   sync.Mutex
	pool *x509.CertPool
	pems [][]byte
}

// add fetches the CA's current root from its management interface through
// pebble (the testbed's PebbleClient) and adds it.
func (c *caRoots) add(ctx context.Context, pebble *http.Client, management string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, management+"/roots/0", nil)
	if err != nil {
		return err
	}
	resp, err := pebble.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	pemBytes, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return errors.New("roots: " + resp.Status)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	pool := x509.NewCertPool() // a new pool: readers may hold the old one
	for _, p := range append(c.pems, pemBytes) {
		if !pool.AppendCertsFromPEM(p) {
			return errors.New("roots: no certificate")
		}
	}
	c.pool, c.pems = pool, append(c.pems, pemBytes)
	return nil
}

func (c *caRoots) get() *x509.CertPool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pool
}
