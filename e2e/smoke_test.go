package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// eventually calls f every interval until it returns nil or timeout passes,
// and returns f's last error then.
func eventually(ctx context.Context, interval, timeout time.Duration, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := f(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %s: %w", timeout, err)
		case <-time.After(interval):
		}
	}
}

// getBody GETs url with c and returns the body of a 200.
func getBody(ctx context.Context, c *http.Client, url string) (*http.Response, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, "", err
	}
	if resp.StatusCode != http.StatusOK {
		return resp, string(b), fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return resp, string(b), nil
}

// TestSmoke checks the testbed end to end without the controller: an Ingress
// routes through Traefik to a loopback backend, and a TLS Secret named in its
// spec.tls is served for its host.
func TestSmoke(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	cs := bed.Client()
	ns, err := bed.CreateNamespace(ctx, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	be, err := bed.Backend(ctx, ns, "web", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(be.Close)

	const host = "smoke.test"
	ing := smokeIngress(ns, "smoke", host, "web")
	t0 := time.Now()
	if ing, err = cs.NetworkingV1().Ingresses(ns).Create(ctx, ing, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	client := bed.HTTPClient("")
	err = eventually(ctx, 20*time.Millisecond, 10*time.Second, func(ctx context.Context) error {
		_, body, err := getBody(ctx, client, "http://"+host+"/")
		if err == nil && body != "backend web" {
			err = fmt.Errorf("body %q", body)
		}
		return err
	})
	if err != nil {
		t.Fatalf("http://%s/ through Traefik: %v", host, err)
	}
	t.Logf("http://%s/ served by the backend %.0f ms after the Ingress was created", host, time.Since(t0).Seconds()*1000)

	caPool, leafDER, certPEM, keyPEM := makeCert(t, host)
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "smoke-tls", Namespace: ns},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}
	if _, err := cs.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ing.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{host}, SecretName: secret.Name}}
	t0 = time.Now()
	if _, err := cs.NetworkingV1().Ingresses(ns).Update(ctx, ing, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	tlsClient := bed.HTTPClientWithRoots("", caPool)
	err = eventually(ctx, 20*time.Millisecond, 10*time.Second, func(ctx context.Context) error {
		resp, body, err := getBody(ctx, tlsClient, "https://"+host+"/")
		if err != nil {
			return err
		}
		if got := resp.TLS.PeerCertificates[0].Raw; !bytes.Equal(got, leafDER) {
			return fmt.Errorf("served certificate is not ours (%s)", resp.TLS.PeerCertificates[0].Subject)
		}
		if body != "backend web" {
			return fmt.Errorf("body %q", body)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("https://%s/ through Traefik: %v", host, err)
	}
	t.Logf("https://%s/ served our certificate %.0f ms after spec.tls was set", host, time.Since(t0).Seconds()*1000)
}

// smokeIngress returns an Ingress (no class: Traefik takes class-less ones)
// routing host/ (Prefix) to port 80 of the Service svc.
func smokeIngress(ns, name, host, svc string) *networkingv1.Ingress {
	prefix := networkingv1.PathTypePrefix
	return &networkingv1.Ingress{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: networkingv1.IngressSpec{Rules: []networkingv1.IngressRule{{
			Host: host,
			IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{
				Paths: []networkingv1.HTTPIngressPath{{
					Path:     "/",
					PathType: &prefix,
					Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
						Name: svc, Port: networkingv1.ServiceBackendPort{Number: 80},
					}},
				}},
			}},
		}}},
	}
}

// makeCert returns a pool with a new self-signed CA, and a leaf for host
// signed by it: its DER, and the PEM of the leaf and its key.
func makeCert(t *testing.T, host string) (pool *x509.CertPool, leafDER, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "e2e test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err = x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(ca)
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return pool, leafDER, certPEM, keyPEM
}

// TestPebbleRestart stops and restarts Pebble: its directory goes away and
// comes back on the same address, with a new root. Not parallel: it takes a
// shared component away (top-level parallel tests only run once the serial
// ones are done).
func TestPebbleRestart(t *testing.T) {
	ctx := t.Context()
	pc := bed.PebbleClient()
	if _, _, err := getBody(ctx, pc, bed.PebbleDirectory); err != nil {
		t.Fatalf("directory before the restart: %v", err)
	}
	rootBefore, err := bed.PebbleRoots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bed.StopProcess("pebble"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := getBody(ctx, pc, bed.PebbleDirectory); err == nil {
		t.Fatal("directory answers with Pebble stopped")
	}
	if err := bed.StartProcess("pebble"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := getBody(ctx, pc, bed.PebbleDirectory); err != nil {
		t.Fatalf("directory after the restart: %v", err)
	}
	rootAfter, err := bed.PebbleRoots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(rootBefore, rootAfter) {
		t.Error("Pebble kept its root across a restart; tests relying on new roots would be wrong")
	}
}

// TestAPIServerRestart restarts kube-apiserver: objects survive (etcd keeps
// its data), its serving certificate stays the same (the admin client works
// again), and Traefik's watches come back: an Ingress created after the
// restart is served. Not parallel, like TestPebbleRestart; it returns only once
// Traefik routes again, so later tests find a healthy testbed.
func TestAPIServerRestart(t *testing.T) {
	ctx := t.Context()
	cs := bed.Client()
	ns, err := bed.CreateNamespace(ctx, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	if err := bed.StopProcess("kube-apiserver"); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil {
		t.Fatal("API server answers while stopped")
	}
	if err := bed.StartProcess("kube-apiserver"); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if _, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
		t.Fatalf("namespace %s after the restart: %v", ns, err)
	}
	be, err := bed.Backend(ctx, ns, "canary", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(be.Close)
	const host = "canary.test"
	if _, err := cs.NetworkingV1().Ingresses(ns).Create(ctx, smokeIngress(ns, "canary", host, "canary"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	client := bed.HTTPClient("")
	err = eventually(ctx, 20*time.Millisecond, 60*time.Second, func(ctx context.Context) error {
		_, body, err := getBody(ctx, client, "http://"+host+"/")
		if err == nil && body != "backend canary" {
			err = fmt.Errorf("body %q", body)
		}
		return err
	})
	if err != nil {
		t.Fatalf("Traefik does not route a new Ingress after the API server restart: %v", err)
	}
	t.Logf("Traefik routes a new Ingress %.2fs after the API server restart", time.Since(t0).Seconds())
}
