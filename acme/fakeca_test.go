package acme

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeCA is a small ACME server: enough of RFC 8555 and ARI for this package's
// tests. It checks no signature; it records what it was sent.
type fakeCA struct {
	srv *httptest.Server
	ari bool // offers renewalInfo

	// mu guards everything below.
	mu             sync.Mutex
	next           int
	accounts       map[string]bool // by JWK
	orders         map[string]*fakeOrder
	authzs         map[string]*fakeAuthz
	requests       []string            // "METHOD /path", in order
	newOrders      []map[string]any    // new-order payloads
	problems       map[string]fakeProb // by path prefix: answer with this problem
	failValidation bool
	refuse         *fakeProb // answer to new orders with replaces
	processing     bool      // finalize answers processing; the next fetch is valid
	retryAfter     string    // Retry-After of renewal information
	window         [2]time.Time
	caKey          *ecdsa.PrivateKey
	caCert         *x509.Certificate
}

type fakeProb struct {
	status     int
	typ        string
	retryAfter string
}

type fakeOrder struct {
	status, replaces string
	hosts            []string
	authzs           []string // ids
	certPEM          []byte
}

type fakeAuthz struct {
	host, status, chalStatus, token string
	posts                           int // POSTs of "{}" to its challenge
}

func newFakeCA(t *testing.T, ari bool) *fakeCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake CA"}, IsCA: true,
		BasicConstraintsValid: true, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	now := time.Now().UTC().Truncate(time.Second)
	ca := &fakeCA{ari: ari, accounts: map[string]bool{}, orders: map[string]*fakeOrder{}, authzs: map[string]*fakeAuthz{},
		problems: map[string]fakeProb{}, caKey: key, caCert: cert, window: [2]time.Time{now.Add(time.Hour), now.Add(2 * time.Hour)}}
	ca.srv = httptest.NewServer(http.HandlerFunc(ca.serve))
	t.Cleanup(ca.srv.Close)
	return ca
}

func (ca *fakeCA) url(path string) string { return ca.srv.URL + path }

// count returns how many requests were "METHOD /path-prefix".
func (ca *fakeCA) count(prefix string) int {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	n := 0
	for _, r := range ca.requests {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

func (ca *fakeCA) setProblem(prefix string, p fakeProb) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.problems[prefix] = p
}

func (ca *fakeCA) clearProblems() {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	clear(ca.problems)
}

// refuseReplaces makes the CA answer p to new orders that replace a certificate.
func (ca *fakeCA) refuseReplaces(p fakeProb) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.refuse = &p
}

func (ca *fakeCA) serve(w http.ResponseWriter, r *http.Request) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.requests = append(ca.requests, r.Method+" "+r.URL.Path)
	ca.next++
	w.Header().Set("Replay-Nonce", fmt.Sprintf("nonce-%d", ca.next))
	for prefix, p := range ca.problems {
		if strings.HasPrefix(r.URL.Path, prefix) {
			if p.retryAfter != "" {
				w.Header().Set("Retry-After", p.retryAfter)
			}
			ca.problem(w, p.status, p.typ)
			return
		}
	}
	switch {
	case r.URL.Path == "/dir":
		d := map[string]any{"newNonce": ca.url("/nonce"), "newAccount": ca.url("/acct"), "newOrder": ca.url("/order-plz"),
			"meta": map[string]any{"profiles": map[string]string{"shortlived": "6 days"}}}
		if ca.ari {
			d["renewalInfo"] = ca.url("/ari")
		}
		writeJSON(w, http.StatusOK, d)
	case r.URL.Path == "/nonce":
		w.WriteHeader(http.StatusOK)
	case strings.HasPrefix(r.URL.Path, "/ari/"):
		if ca.retryAfter != "" {
			w.Header().Set("Retry-After", ca.retryAfter)
		}
		writeJSON(w, http.StatusOK, map[string]any{"suggestedWindow": map[string]time.Time{"start": ca.window[0], "end": ca.window[1]}})
	case r.Method == http.MethodPost:
		ca.post(w, r)
	default:
		ca.problem(w, http.StatusNotFound, "malformed")
	}
}

func (ca *fakeCA) problem(w http.ResponseWriter, status int, typ string) {
	w.Header().Set("Content-Type", "application/problem+json")
	writeJSON(w, status, map[string]any{"type": "urn:ietf:params:acme:error:" + typ, "detail": "fake " + typ, "status": status})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// post answers a JWS POST: the protected header is read, the signature not.
func (ca *fakeCA) post(w http.ResponseWriter, r *http.Request) {
	var jws struct{ Protected, Payload string }
	body, _ := io.ReadAll(r.Body)
	if json.Unmarshal(body, &jws) != nil {
		ca.problem(w, http.StatusBadRequest, "malformed")
		return
	}
	var prot struct {
		JWK json.RawMessage `json:"jwk"`
		KID string          `json:"kid"`
	}
	h, _ := base64.RawURLEncoding.DecodeString(jws.Protected)
	_ = json.Unmarshal(h, &prot)
	payload, _ := base64.RawURLEncoding.DecodeString(jws.Payload)
	path := r.URL.Path
	id := path[strings.LastIndex(path, "/")+1:]
	switch {
	case path == "/acct":
		ca.account(w, string(prot.JWK), payload)
	case path == "/order-plz":
		ca.newOrder(w, payload)
	case strings.HasPrefix(path, "/order/"):
		ca.order(w, id)
	case strings.HasPrefix(path, "/authz/"):
		ca.authz(w, id)
	case strings.HasPrefix(path, "/chal/"):
		ca.challenge(w, id, payload)
	case strings.HasPrefix(path, "/finalize/"):
		ca.finalize(w, id, payload)
	case strings.HasPrefix(path, "/cert/") && ca.orders[id] != nil:
		w.Header().Set("Content-Type", "application/pem-certificate-chain")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(ca.orders[id].certPEM)
	default:
		ca.problem(w, http.StatusNotFound, "malformed")
	}
}

func (ca *fakeCA) account(w http.ResponseWriter, jwk string, payload []byte) {
	var req struct{ OnlyReturnExisting bool }
	_ = json.Unmarshal(payload, &req)
	if !ca.accounts[jwk] && req.OnlyReturnExisting {
		ca.problem(w, http.StatusBadRequest, "accountDoesNotExist")
		return
	}
	status := http.StatusOK
	if !ca.accounts[jwk] {
		ca.accounts[jwk], status = true, http.StatusCreated
	}
	w.Header().Set("Location", ca.url("/acct/1"))
	writeJSON(w, status, map[string]string{"status": "valid"})
}

func (ca *fakeCA) newOrder(w http.ResponseWriter, payload []byte) {
	var req map[string]any
	_ = json.Unmarshal(payload, &req)
	ca.newOrders = append(ca.newOrders, req)
	var body struct {
		Identifiers []struct{ Value string }
		Replaces    string
	}
	_ = json.Unmarshal(payload, &body)
	if body.Replaces != "" && ca.refuse != nil {
		if ca.refuse.retryAfter != "" {
			w.Header().Set("Retry-After", ca.refuse.retryAfter)
		}
		ca.problem(w, ca.refuse.status, ca.refuse.typ)
		return
	}
	id := fmt.Sprint(len(ca.orders) + 1)
	o := &fakeOrder{status: "pending", replaces: body.Replaces}
	for _, ident := range body.Identifiers {
		aid := fmt.Sprintf("%s-%d", id, len(o.authzs))
		ca.authzs[aid] = &fakeAuthz{host: ident.Value, status: "pending", chalStatus: "pending", token: "tok" + aid}
		o.hosts, o.authzs = append(o.hosts, ident.Value), append(o.authzs, aid)
	}
	ca.orders[id] = o
	w.Header().Set("Location", ca.url("/order/"+id))
	writeJSON(w, http.StatusCreated, ca.orderJSON(id))
}

func (ca *fakeCA) orderJSON(id string) map[string]any {
	o := ca.orders[id]
	var ids []map[string]string
	var authzs []string
	ready := o.status == "pending"
	for i, aid := range o.authzs {
		ids = append(ids, map[string]string{"type": "dns", "value": o.hosts[i]})
		authzs = append(authzs, ca.url("/authz/"+aid))
		ready = ready && ca.authzs[aid].status == "valid"
	}
	if ready {
		o.status = "ready"
	}
	j := map[string]any{"status": o.status, "identifiers": ids, "authorizations": authzs, "finalize": ca.url("/finalize/" + id)}
	if o.replaces != "" {
		j["replaces"] = o.replaces
	}
	if o.status == "valid" {
		j["certificate"] = ca.url("/cert/" + id)
	}
	return j
}

func (ca *fakeCA) order(w http.ResponseWriter, id string) {
	o := ca.orders[id]
	if o == nil {
		ca.problem(w, http.StatusNotFound, "malformed")
		return
	}
	if o.status == "processing" && o.certPEM != nil {
		o.status = "valid"
	}
	writeJSON(w, http.StatusOK, ca.orderJSON(id))
}

func (ca *fakeCA) authz(w http.ResponseWriter, id string) {
	a := ca.authzs[id]
	if a == nil {
		ca.problem(w, http.StatusNotFound, "malformed")
		return
	}
	if a.chalStatus == "processing" { // validated between two fetches
		a.chalStatus, a.status = "valid", "valid"
		if ca.failValidation {
			a.chalStatus, a.status = "invalid", "invalid"
		}
	}
	ch := map[string]any{"type": "http-01", "url": ca.url("/chal/" + id), "token": a.token, "status": a.chalStatus}
	if a.chalStatus == "invalid" {
		ch["error"] = map[string]any{"type": "urn:ietf:params:acme:error:unauthorized", "detail": "wrong answer", "status": 403}
	}
	writeJSON(w, http.StatusOK, map[string]any{"identifier": map[string]string{"type": "dns", "value": a.host},
		"status": a.status, "challenges": []any{ch, map[string]any{"type": "dns-01", "url": ca.url("/chal/dns" + id), "token": "dns", "status": "pending"}}})
}

func (ca *fakeCA) challenge(w http.ResponseWriter, id string, payload []byte) {
	a := ca.authzs[id]
	if a == nil {
		ca.problem(w, http.StatusNotFound, "malformed")
		return
	}
	if string(payload) == "{}" && a.chalStatus == "pending" {
		a.posts++
		a.chalStatus = "processing"
	}
	w.Header().Add("Link", fmt.Sprintf("<%s>;rel=\"up\"", ca.url("/authz/"+id)))
	writeJSON(w, http.StatusOK, map[string]any{"type": "http-01", "url": ca.url("/chal/" + id), "token": a.token, "status": a.chalStatus})
}

func (ca *fakeCA) finalize(w http.ResponseWriter, id string, payload []byte) {
	o := ca.orders[id]
	var req struct{ CSR string }
	_ = json.Unmarshal(payload, &req)
	der, _ := base64.RawURLEncoding.DecodeString(req.CSR)
	csr, err := x509.ParseCertificateRequest(der)
	if o == nil || o.status != "ready" || err != nil {
		ca.problem(w, http.StatusForbidden, "orderNotReady")
		return
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(ca.next)), DNSNames: csr.DNSNames,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	leaf, err := x509.CreateCertificate(rand.Reader, tmpl, ca.caCert, csr.PublicKey, ca.caKey)
	if err != nil {
		ca.problem(w, http.StatusInternalServerError, "serverInternal")
		return
	}
	o.certPEM = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.caCert.Raw})...)
	o.status = "valid"
	if ca.processing {
		o.status = "processing"
	}
	w.Header().Set("Location", ca.url("/order/"+id))
	writeJSON(w, http.StatusOK, ca.orderJSON(id))
}

// memKeys is an AccountKeys in memory.
type memKeys struct {
	mu  sync.Mutex // guards key
	key crypto.Signer
}

func (m *memKeys) LoadOrCreate(_ context.Context, _ string, generate func() (crypto.Signer, error)) (crypto.Signer, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.key != nil {
		return m.key, false, nil
	}
	k, err := generate()
	m.key = k
	return k, err == nil, err
}

// newTestClient returns a Client of ca with generous limits.
func newTestClient(t *testing.T, ca *fakeCA, modify ...func(*Config)) (*Client, *memKeys) {
	t.Helper()
	keys := &memKeys{}
	cfg := Config{DirectoryURL: ca.url("/dir"), Keys: keys, PollTimeout: 5 * time.Second,
		Limits: Limits{RequestsPerSecond: 1000, RequestBurst: 1000, NewOrdersPer3h: 1000, NewAccountsPer3h: 1000, RenewalInfoPerSecond: 1000, MaxWait: time.Second}}
	for _, m := range modify {
		m(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, keys
}
