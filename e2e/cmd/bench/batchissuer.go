package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	acmelib "github.com/eggsampler/acme/v3"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// issuedCert is one certificate a batchIssuer obtained from the CA.
type issuedCert struct {
	Host     string
	ChainPEM []byte            // leaf first, as the CA sent it
	Key      *ecdsa.PrivateKey // P-256, the controller's default key type
	Leaf     *x509.Certificate
}

// batchIssuer obtains real certificates from an ACME CA on the testbed (a
// Pebble) outside the controller, to prepare a cluster that already holds
// many valid certificates. It answers dns-01 challenges through
// pebble-challtestsrv, the DNS server Pebble asks, so the CA really validates
// every identifier; and it spreads orders over several accounts, because
// Pebble slows down with thousands of orders on one account.
type batchIssuer struct {
	Directory   string // the CA's ACME directory URL
	Accounts    int    // orders are spread round-robin over this many accounts (default 8)
	Concurrency int    // orders in flight (default 32)
	// Progress, if set, is called now and then with the certificates done.
	Progress func(done, total int)

	tb *testbed.Testbed
}

// newBatchIssuer returns a batchIssuer for the CA at directory, one of tb's
// Pebbles (PebbleDirectory or an ExtraPebble's).
func newBatchIssuer(tb *testbed.Testbed, directory string) *batchIssuer {
	return &batchIssuer{Directory: directory, Accounts: 8, Concurrency: 32, tb: tb}
}

// Issue orders one certificate for each host (a single-name certificate with a
// P-256 key, the profile named "default") and returns them in the order of hosts.
// It stops at the first failure.
func (bi *batchIssuer) Issue(ctx context.Context, hosts []string) ([]issuedCert, error) {
	nAcct := max(1, bi.Accounts)
	conc := max(1, bi.Concurrency)
	ca, err := os.ReadFile(bi.tb.PebbleCAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("testbed: no certificate in %s", bi.tb.PebbleCAFile)
	}
	httpClient := &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil,
			TLSClientConfig:     &tls.Config{RootCAs: pool},
			MaxIdleConnsPerHost: conc + 4,
		},
	}
	client, err := acmelib.NewClient(bi.Directory, acmelib.WithHTTPClient(httpClient), acmelib.WithRetryCount(20))
	if err != nil {
		return nil, fmt.Errorf("testbed: acme client for %s: %w", bi.Directory, err)
	}
	client.PollInterval = 50 * time.Millisecond
	client.PollTimeout = 2 * time.Minute
	client.IgnoreRetryAfter = true // Pebble asks for 3-5 s and is done in milliseconds: issueOne polls

	accounts := make([]acmelib.Account, nAcct)
	for i := range accounts {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		if accounts[i], err = client.NewAccount(key, false, true, fmt.Sprintf("mailto:batch-%d@example.test", i)); err != nil {
			return nil, fmt.Errorf("testbed: new account: %w", err)
		}
	}

	out := make([]issuedCert, len(hosts))
	var next, done atomic.Int64
	var firstErr error
	var once sync.Once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(hosts) {
					return
				}
				c, err := bi.issueOne(ctx, client, accounts[i%nAcct], hosts[i])
				if err != nil {
					once.Do(func() { firstErr = fmt.Errorf("testbed: issue %s: %w", hosts[i], err); cancel() })
					return
				}
				out[i] = c
				if d := int(done.Add(1)); bi.Progress != nil && (d%500 == 0 || d == len(hosts)) {
					bi.Progress(d, len(hosts))
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// issueOne runs one order through: new order, dns-01 TXT record, challenge,
// finalize with a fresh P-256 key, download.
func (bi *batchIssuer) issueOne(ctx context.Context, client acmelib.Client, acct acmelib.Account, host string) (issuedCert, error) {
	// Pebble gives an order that names no profile a random one of those it
	// offers: name the default so every certificate has the default validity.
	order, err := client.NewOrderExtension(acct, []acmelib.Identifier{{Type: "dns", Value: host}}, acmelib.OrderExtension{Profile: "default"})
	if err != nil {
		return issuedCert{}, fmt.Errorf("new order: %w", err)
	}
	for _, authURL := range order.Authorizations {
		authz, err := client.FetchAuthorization(acct, authURL)
		if err != nil {
			return issuedCert{}, fmt.Errorf("authorization: %w", err)
		}
		if authz.Status == "valid" {
			continue
		}
		chal, ok := authz.ChallengeMap[acmelib.ChallengeTypeDNS01]
		if !ok {
			return issuedCert{}, errors.New("the CA offers no dns-01 challenge")
		}
		if err := setTXT(ctx, bi.tb, "_acme-challenge."+host+".", acmelib.EncodeDNS01KeyAuthorization(chal.KeyAuthorization)); err != nil {
			return issuedCert{}, err
		}
		if _, err := client.UpdateChallenge(acct, chal); err != nil {
			return issuedCert{}, fmt.Errorf("challenge: %w", err)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return issuedCert{}, err
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{host}}, key)
	if err != nil {
		return issuedCert{}, err
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return issuedCert{}, err
	}
	if order, err = client.FinalizeOrder(acct, order, csr); err != nil {
		return issuedCert{}, fmt.Errorf("finalize: %w", err)
	}
	// The client does not poll when told to ignore Retry-After: poll here.
	for deadline := time.Now().Add(2 * time.Minute); order.Status != "valid"; {
		if order.Status == "invalid" {
			return issuedCert{}, errors.New("the order became invalid")
		}
		if time.Now().After(deadline) {
			return issuedCert{}, fmt.Errorf("order still %s after 2 minutes", order.Status)
		}
		select {
		case <-ctx.Done():
			return issuedCert{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if order, err = client.FetchOrder(acct, order.URL); err != nil {
			return issuedCert{}, fmt.Errorf("order: %w", err)
		}
	}
	certs, err := client.FetchCertificates(acct, order.Certificate)
	if err != nil {
		return issuedCert{}, fmt.Errorf("download: %w", err)
	}
	if len(certs) == 0 {
		return issuedCert{}, errors.New("the CA sent no certificate")
	}
	var chain bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return issuedCert{Host: host, ChainPEM: chain.Bytes(), Key: key, Leaf: certs[0]}, nil
}

// setTXT makes tb's pebble-challtestsrv answer TXT queries for fqdn (with the
// trailing dot) with value.
func setTXT(ctx context.Context, tb *testbed.Testbed, fqdn, value string) error {
	body, _ := json.Marshal(map[string]string{"host": fqdn, "value": value})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tb.ChallTestSrvManagement+"/set-txt", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("testbed: set-txt %s: %w", fqdn, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("testbed: set-txt %s: %s: %s", fqdn, resp.Status, b)
	}
	return nil
}

// renewalWindow asks the CA at directory (a Pebble of tb) for its suggested
// renewal window for cert (ACME Renewal Information).
func renewalWindow(tb *testbed.Testbed, directory string, cert *x509.Certificate) (start, end time.Time, err error) {
	client, err := acmelib.NewClient(directory, acmelib.WithHTTPClient(tb.PebbleClient()))
	if err != nil {
		return start, end, err
	}
	ri, err := client.GetRenewalInfo(cert)
	if err != nil {
		return start, end, err
	}
	return ri.SuggestedWindow.Start, ri.SuggestedWindow.End, nil
}
