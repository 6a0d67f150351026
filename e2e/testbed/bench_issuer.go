package testbed

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
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	acmelib "github.com/eggsampler/acme/v3"
)

// IssuedCert is one certificate a BatchIssuer obtained from the CA.
type IssuedCert struct {
	Host     string
	ChainPEM []byte            // leaf first, as the CA sent it
	Key      *ecdsa.PrivateKey // P-256, the controller's default key type
	Leaf     *x509.Certificate
}

// BatchIssuer obtains real certificates from an ACME CA on the testbed (a
// Pebble) outside the controller, to prepare a cluster that already holds
// many valid certificates. It answers dns-01 challenges through
// pebble-challtestsrv, the DNS server Pebble asks, so the CA really validates
// every identifier; and it spreads orders over several accounts, because
// Pebble slows down with thousands of orders on one account.
type BatchIssuer struct {
	Directory   string // the CA's ACME directory URL
	Accounts    int    // orders are spread round-robin over this many accounts (default 8)
	Concurrency int    // orders in flight (default 32)
	// Progress, if set, is called now and then with the certificates done.
	Progress func(done, total int)

	tb *Testbed
}

// NewBatchIssuer returns a BatchIssuer for the CA at directory, one of the
// testbed's Pebbles (PebbleDirectory or an ExtraPebble's).
func (tb *Testbed) NewBatchIssuer(directory string) *BatchIssuer {
	return &BatchIssuer{Directory: directory, Accounts: 8, Concurrency: 32, tb: tb}
}

// PebbleLog returns the path of the log of the Pebble named name: "pebble" for
// the testbed's own, "pebble-<name>" for one started by ExtraPebble(name). It
// logs every request it handles ("GET /path -> calling handler()") with a
// timestamp to the second.
func (tb *Testbed) PebbleLog(name string) string {
	return filepath.Join(tb.Dir, "logs", name+".log")
}

// Issue orders one certificate for each host (a single-name certificate with a
// P-256 key, the profile named "default") and returns them in the order of hosts.
// It stops at the first failure.
func (bi *BatchIssuer) Issue(ctx context.Context, hosts []string) ([]IssuedCert, error) {
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

	out := make([]IssuedCert, len(hosts))
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
func (bi *BatchIssuer) issueOne(ctx context.Context, client acmelib.Client, acct acmelib.Account, host string) (IssuedCert, error) {
	// Pebble gives an order that names no profile a random one of those it
	// offers: name the default so every certificate has the default validity.
	order, err := client.NewOrderExtension(acct, []acmelib.Identifier{{Type: "dns", Value: host}}, acmelib.OrderExtension{Profile: "default"})
	if err != nil {
		return IssuedCert{}, fmt.Errorf("new order: %w", err)
	}
	for _, authURL := range order.Authorizations {
		authz, err := client.FetchAuthorization(acct, authURL)
		if err != nil {
			return IssuedCert{}, fmt.Errorf("authorization: %w", err)
		}
		if authz.Status == "valid" {
			continue
		}
		chal, ok := authz.ChallengeMap[acmelib.ChallengeTypeDNS01]
		if !ok {
			return IssuedCert{}, errors.New("the CA offers no dns-01 challenge")
		}
		if err := bi.tb.SetTXT(ctx, "_acme-challenge."+host+".", acmelib.EncodeDNS01KeyAuthorization(chal.KeyAuthorization)); err != nil {
			return IssuedCert{}, err
		}
		if _, err := client.UpdateChallenge(acct, chal); err != nil {
			return IssuedCert{}, fmt.Errorf("challenge: %w", err)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return IssuedCert{}, err
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{host}}, key)
	if err != nil {
		return IssuedCert{}, err
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return IssuedCert{}, err
	}
	if order, err = client.FinalizeOrder(acct, order, csr); err != nil {
		return IssuedCert{}, fmt.Errorf("finalize: %w", err)
	}
	// The client does not poll when told to ignore Retry-After: poll here.
	for deadline := time.Now().Add(2 * time.Minute); order.Status != "valid"; {
		if order.Status == "invalid" {
			return IssuedCert{}, errors.New("the order became invalid")
		}
		if time.Now().After(deadline) {
			return IssuedCert{}, fmt.Errorf("order still %s after 2 minutes", order.Status)
		}
		select {
		case <-ctx.Done():
			return IssuedCert{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if order, err = client.FetchOrder(acct, order.URL); err != nil {
			return IssuedCert{}, fmt.Errorf("order: %w", err)
		}
	}
	certs, err := client.FetchCertificates(acct, order.Certificate)
	if err != nil {
		return IssuedCert{}, fmt.Errorf("download: %w", err)
	}
	if len(certs) == 0 {
		return IssuedCert{}, errors.New("the CA sent no certificate")
	}
	var chain bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return IssuedCert{Host: host, ChainPEM: chain.Bytes(), Key: key, Leaf: certs[0]}, nil
}

// SetTXT makes pebble-challtestsrv answer TXT queries for fqdn (with the
// trailing dot) with value.
func (tb *Testbed) SetTXT(ctx context.Context, fqdn, value string) error {
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

// RenewalWindow asks the CA at directory (a Pebble of the testbed) for its
// suggested renewal window for cert (ACME Renewal Information).
func (tb *Testbed) RenewalWindow(directory string, cert *x509.Certificate) (start, end time.Time, err error) {
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

// ExtraPebbleShortLived is ExtraPebble (no extra environment, no External
// Account Binding) whose "shortlived" profile issues certificates valid for
// short, whatever Options.ShortLivedValidity says; other Pebbles keep theirs.
func (tb *Testbed) ExtraPebbleShortLived(ctx context.Context, name string, short time.Duration) (*ExtraCA, error) {
	saved := tb.opts.ShortLivedValidity
	tb.opts.ShortLivedValidity = short
	defer func() { tb.opts.ShortLivedValidity = saved }()
	return tb.ExtraPebble(ctx, name, nil, nil)
}
