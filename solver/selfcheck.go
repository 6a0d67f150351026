package solver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// SelfCheck fetches a challenge the way the CA will, through the ingress, before
// the CA is asked to validate it. It is safe for concurrent use.
type SelfCheck struct {
	client  *http.Client
	timeout time.Duration
	observe func(ok bool)
}

// NewSelfCheck returns a SelfCheck that gives up after timeout. With address
// ("host:port") set, every plain-HTTP connection goes to that address whatever the
// host, for clusters where the Ingress's public name does not reach the ingress
// controller from inside (no hairpin NAT); the Host header is the challenge's
// host either way. Redirects are followed like the CA does, HTTPS ones without
// verifying the certificate, since the CA does not verify it either. observe, if
// not nil, is called after every attempt.
func NewSelfCheck(address string, timeout time.Duration, observe func(ok bool)) *SelfCheck {
	if observe == nil {
		observe = func(bool) {}
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	transport := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if _, port, err := net.SplitHostPort(addr); err == nil && port == "80" && address != "" {
				addr = address
			}
			return dialer.DialContext(ctx, network, addr)
		},
		TLSClientConfig:       &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the CA does not verify redirected HTTPS either
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: 5 * time.Second,
	}
	return &SelfCheck{
		client: &http.Client{
			Transport: transport,
			Timeout:   10 * time.Second,
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) >= 10 {
					return errors.New("stopped after 10 redirects")
				}
				return nil
			},
		},
		timeout: timeout,
		observe: observe,
	}
}

// Check GETs http://host/.well-known/acme-challenge/token until it answers
// keyAuth exactly, retrying on a short growing backoff (10 ms to 500 ms) since a
// new Ingress path takes the ingress controller a moment to load. It returns nil
// on the first exact answer, or an error with the last failure once the timeout
// passes or ctx ends.
func (c *SelfCheck) Check(ctx context.Context, host, token, keyAuth string) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	url := "http://" + host + ChallengePathPrefix + token
	delay := 10 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := c.once(ctx, url, keyAuth)
		c.observe(err == nil)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("self-check %s: no answer after %d attempts: %w", url, attempt, err)
		case <-time.After(delay):
		}
		delay = min(delay*3/2, 500*time.Millisecond)
	}
}

func (c *SelfCheck) once(ctx context.Context, url, keyAuth string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if strings.TrimSpace(string(body)) != keyAuth {
		return errors.New("answer is not the key authorization")
	}
	return nil
}
