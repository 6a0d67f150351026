// Package solver answers ACME HTTP-01 challenges: an in-process HTTP server for
// the key authorizations, the edits that route a challenge path of an Ingress to
// it, the selector-less Service and EndpointSlice that point at it, and the
// self-check that a challenge answers through the ingress before the CA is asked.
package solver

import (
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ingress-acme/ingress-acme/core"
)

// maxTokenLength bounds the tokens served; RFC 8555 tokens are 43 characters
// (128 bits, base64url) and CAs use no more than a few times that.
const maxTokenLength = 256

// ValidToken reports whether token is a plausible ACME token: 1 to 256 characters
// of the base64url alphabet.
func ValidToken(token string) bool {
	if token == "" || len(token) > maxTokenLength {
		return false
	}
	for i := 0; i < len(token); i++ {
		c := token[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Outcomes a Server reports for each request it answers.
const (
	OutcomeServed   = "served"
	OutcomeNotFound = "not_found"
	OutcomeBadReq   = "bad_request"
)

// Server answers GET and HEAD of /.well-known/acme-challenge/<token> with the key
// authorization of a live token, only for the host the token was presented for,
// and 404 for everything else. It is safe for concurrent use.
type Server struct {
	observe func(outcome string)

	// mu guards tokens.
	mu     sync.RWMutex
	tokens map[string]presented // by token
}

type presented struct {
	host    string
	keyAuth string
}

// NewServer returns a Server with no live tokens. observe, if not nil, is called
// with one of the Outcome constants for every request.
func NewServer(observe func(outcome string)) *Server {
	if observe == nil {
		observe = func(string) {}
	}
	return &Server{observe: observe, tokens: map[string]presented{}}
}

// Present makes token answer keyAuth for requests to host until Remove(token).
// An invalid token is ignored (it could never be requested).
func (s *Server) Present(host, token, keyAuth string) {
	if !ValidToken(token) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[token] = presented{host: strings.ToLower(host), keyAuth: keyAuth}
}

// Remove stops answering token. Removing a token that is not live does nothing.
func (s *Server) Remove(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, token)
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		s.observe(OutcomeBadReq)
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	token, ok := strings.CutPrefix(r.URL.Path, core.ChallengePathPrefix)
	if !ok || !ValidToken(token) || r.URL.RawQuery != "" {
		s.observe(OutcomeNotFound)
		http.NotFound(w, r)
		return
	}
	s.mu.RLock()
	p, live := s.tokens[token]
	s.mu.RUnlock()
	if !live || p.host != requestHost(r) {
		s.observe(OutcomeNotFound)
		http.NotFound(w, r)
		return
	}
	s.observe(OutcomeServed)
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte(p.keyAuth))
}

// requestHost is the request's Host without port, lowercased.
func requestHost(r *http.Request) string {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.ToLower(strings.TrimSuffix(host, "."))
}

// NewHTTPServer returns an http.Server for handler on addr with timeouts and a
// header size bound fit for a public-facing challenge responder.
func NewHTTPServer(addr string, handler http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
}
