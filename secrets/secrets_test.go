package secrets

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// testCert is a leaf certificate signed by a throwaway CA, with its key.
type testCert struct {
	leaf     *x509.Certificate
	key      crypto.Signer
	chainPEM []byte // leaf, then CA
	caPEM    []byte
}

// newTestCert issues a certificate for hosts valid from notBefore to notAfter,
// with a key of type kt, signed by a new self-signed ECDSA CA.
func newTestCert(t *testing.T, kt KeyType, hosts []string, notBefore, notAfter time.Time) testCert {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             notBefore.Add(-time.Hour),
		NotAfter:              notAfter.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := GenerateKey(kt)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(0xbeef42),
		DNSNames:     hosts,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(leafDER)
	if err != nil {
		t.Fatal(err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}), caPEM...)
	return testCert{leaf: leaf, key: key, chainPEM: chain, caPEM: caPEM}
}

func tlsSecret(t *testing.T, chainPEM []byte, key crypto.Signer) *corev1.Secret {
	t.Helper()
	keyPEM, err := EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-tls"},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: chainPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}
}

func TestParseKeyType(t *testing.T) {
	tests := []struct {
		in      string
		want    KeyType
		wantErr bool
	}{
		{in: "ecdsa-p256", want: ECDSAP256},
		{in: "ecdsa-p384", want: ECDSAP384},
		{in: "rsa-2048", want: RSA2048},
		{in: "rsa-4096", want: RSA4096},
		{in: "  RSA-2048\t", want: RSA2048},
		{in: "ECDSA-P384", want: ECDSAP384},
		{in: "", wantErr: true},
		{in: "rsa-1024", wantErr: true},
		{in: "ed25519", wantErr: true},
		{in: "ecdsa-p256x", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseKeyType(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got err %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if err != nil && !strings.Contains(err.Error(), "ecdsa-p256, ecdsa-p384, rsa-2048, rsa-4096") {
				t.Errorf("got error %q, want it to list the valid key types", err)
			}
		})
	}
}

func TestGenerateEncodeDecodeKey(t *testing.T) {
	tests := []struct {
		kt        KeyType
		pemType   string
		checkSize func(crypto.Signer) bool
	}{
		{ECDSAP256, "EC PRIVATE KEY", func(k crypto.Signer) bool { return k.(*ecdsa.PrivateKey).Curve == elliptic.P256() }},
		{ECDSAP384, "EC PRIVATE KEY", func(k crypto.Signer) bool { return k.(*ecdsa.PrivateKey).Curve == elliptic.P384() }},
		{RSA2048, "RSA PRIVATE KEY", nil},
		{RSA4096, "RSA PRIVATE KEY", nil},
	}
	for _, tt := range tests {
		t.Run(string(tt.kt), func(t *testing.T) {
			if tt.kt == RSA4096 && testing.Short() {
				t.Skip("rsa-4096 generation is slow")
			}
			key, err := GenerateKey(tt.kt)
			if err != nil {
				t.Fatal(err)
			}
			if got := keyTypeOf(key.Public()); got != tt.kt {
				t.Errorf("got key type %q, want %q", got, tt.kt)
			}
			if tt.checkSize != nil && !tt.checkSize(key) {
				t.Errorf("got key %T with the wrong curve", key)
			}
			pemBytes, err := EncodeKey(key)
			if err != nil {
				t.Fatal(err)
			}
			block, rest := pem.Decode(pemBytes)
			if block == nil {
				t.Fatalf("got no PEM block in %q", pemBytes)
			}
			if block.Type != tt.pemType {
				t.Errorf("got PEM type %q, want %q", block.Type, tt.pemType)
			}
			if len(bytes.TrimSpace(rest)) != 0 {
				t.Errorf("got %d trailing bytes, want none", len(rest))
			}
			back, err := DecodeKey(pemBytes)
			if err != nil {
				t.Fatal(err)
			}
			if !publicKeysEqual(key.Public(), back.Public()) {
				t.Errorf("got a different key back from DecodeKey")
			}
		})
	}
	t.Run("unknown", func(t *testing.T) {
		if k, err := GenerateKey("dsa-1024"); err == nil {
			t.Errorf("got key %T, want an error", k)
		}
	})
}

func TestEncodeKeyUnsupported(t *testing.T) {
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := EncodeKey(ed); err == nil {
		t.Errorf("got %q, want an error for an ed25519 key", out)
	}
}

func TestDecodeKey(t *testing.T) {
	ec, err := GenerateKey(ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	ecPEM, err := EncodeKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8PEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edDER, err := x509.MarshalPKCS8PrivateKey(ed)
	if err != nil {
		t.Fatal(err)
	}
	edPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: edDER})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not parsed")})
	// secretish is key-like material in a block that fails to parse: the error
	// must not echo it.
	secretish := []byte("0123456789-very-secret-key-material-0123456789")
	badEC := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: secretish})
	badRSA := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: secretish})
	badPKCS8 := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: secretish})

	tests := []struct {
		name    string
		in      []byte
		wantErr bool
	}{
		{name: "sec1", in: ecPEM},
		{name: "pkcs8", in: pkcs8PEM},
		{name: "after a certificate block", in: append(bytes.Clone(certPEM), ecPEM...)},
		{name: "ed25519 pkcs8", in: edPEM},
		{name: "empty", in: nil, wantErr: true},
		{name: "not PEM", in: []byte("hello"), wantErr: true},
		{name: "only a certificate", in: certPEM, wantErr: true},
		{name: "bad sec1", in: badEC, wantErr: true},
		{name: "bad pkcs1", in: badRSA, wantErr: true},
		{name: "bad pkcs8", in: badPKCS8, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := DecodeKey(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got err %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				msg := err.Error()
				for _, leak := range []string{string(secretish), base64.StdEncoding.EncodeToString(secretish)[:20]} {
					if strings.Contains(msg, leak) {
						t.Errorf("got error %q, want no key material in it", msg)
					}
				}
				return
			}
			if k == nil {
				t.Fatal("got nil key, want one")
			}
		})
	}
}

func TestOwned(t *testing.T) {
	tests := []struct {
		name string
		sec  *corev1.Secret
		want bool
	}{
		{name: "nil", sec: nil, want: false},
		{name: "no labels", sec: &corev1.Secret{}, want: false},
		{name: "other manager", sec: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{LabelManagedBy: "cert-manager"}}}, want: false},
		{name: "our value on another label", sec: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"managed-by": ManagedBy}}}, want: false},
		{name: "ours", sec: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{LabelManagedBy: ManagedBy, "x": "y"}}}, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Owned(tt.sec); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	if Selector != "app.kubernetes.io/managed-by=ingress-acme" {
		t.Errorf("got selector %q, want %q", Selector, "app.kubernetes.io/managed-by=ingress-acme")
	}
}

func TestParse(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	good := newTestCert(t, ECDSAP384, []string{"a.example.com", "b.example.com"}, now, now.Add(90*24*time.Hour))
	other := newTestCert(t, ECDSAP256, []string{"a.example.com"}, now, now.Add(90*24*time.Hour))
	goodKeyPEM, err := EncodeKey(good.key)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		sec     func() *corev1.Secret
		wantErr string // substring; "" for success
	}{
		{name: "valid", sec: func() *corev1.Secret {
			s := tlsSecret(t, good.chainPEM, good.key)
			s.Annotations = map[string]string{AnnotationDirectory: "https://ca.example/dir"}
			return s
		}},
		{name: "nil", sec: func() *corev1.Secret { return nil }, wantErr: "no secret"},
		{name: "no tls.crt", sec: func() *corev1.Secret {
			s := tlsSecret(t, good.chainPEM, good.key)
			delete(s.Data, corev1.TLSCertKey)
			return s
		}, wantErr: "tls.crt"},
		{name: "no tls.key", sec: func() *corev1.Secret {
			s := tlsSecret(t, good.chainPEM, good.key)
			delete(s.Data, corev1.TLSPrivateKeyKey)
			return s
		}, wantErr: "tls.key"},
		{name: "garbage certificate", sec: func() *corev1.Secret {
			s := tlsSecret(t, good.chainPEM, good.key)
			s.Data[corev1.TLSCertKey] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})
			return s
		}, wantErr: "tls.crt"},
		{name: "key of another certificate", sec: func() *corev1.Secret {
			return tlsSecret(t, good.chainPEM, other.key)
		}, wantErr: "does not match"},
		{name: "CA first", sec: func() *corev1.Secret {
			s := tlsSecret(t, append(bytes.Clone(good.caPEM), good.chainPEM...), good.key)
			return s
		}, wantErr: "does not match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(tt.sec())
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("got certificate, want an error containing %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("got error %q, want it to contain %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), string(goodKeyPEM)) || strings.Contains(err.Error(), "PRIVATE KEY") {
					t.Errorf("got error %q, want no key material", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !c.Leaf.Equal(good.leaf) {
				t.Errorf("got leaf %v, want %v", c.Leaf.Subject, good.leaf.Subject)
			}
			if got, want := len(c.Chain), 2; got != want {
				t.Errorf("got chain of %d, want %d", got, want)
			}
			if !c.Chain[0].Equal(c.Leaf) {
				t.Errorf("got chain[0] %v, want the leaf", c.Chain[0].Subject)
			}
			if c.KeyType != ECDSAP384 {
				t.Errorf("got key type %q, want %q", c.KeyType, ECDSAP384)
			}
			if c.Directory != "https://ca.example/dir" {
				t.Errorf("got directory %q, want %q", c.Directory, "https://ca.example/dir")
			}
		})
	}
}

func TestDecodeChain(t *testing.T) {
	now := time.Now()
	c := newTestCert(t, ECDSAP256, []string{"a.example.com"}, now, now.Add(time.Hour))
	keyPEM, err := EncodeKey(c.key)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		in      []byte
		want    int
		wantErr bool
	}{
		{name: "leaf and CA", in: c.chainPEM, want: 2},
		{name: "skips other blocks", in: append(bytes.Clone(keyPEM), c.chainPEM...), want: 2},
		{name: "leaf only", in: c.chainPEM[:len(c.chainPEM)-len(c.caPEM)], want: 1},
		{name: "empty", in: nil, wantErr: true},
		{name: "key only", in: keyPEM, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := DecodeChain(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got err %v, want error %v", err, tt.wantErr)
			}
			if len(chain) != tt.want {
				t.Errorf("got %d certificates, want %d", len(chain), tt.want)
			}
			if len(chain) > 0 && !chain[0].Equal(c.leaf) {
				t.Errorf("got first certificate %v, want the leaf", chain[0].Subject)
			}
		})
	}
}

func TestCovers(t *testing.T) {
	now := time.Now()
	tc := newTestCert(t, ECDSAP256, []string{"a.example.com", "B.example.com"}, now, now.Add(time.Hour))
	c := &Certificate{Leaf: tc.leaf}
	tests := []struct {
		hosts []string
		want  bool
	}{
		{hosts: nil, want: true},
		{hosts: []string{"a.example.com"}, want: true},
		{hosts: []string{"b.example.com", "A.EXAMPLE.COM"}, want: true},
		{hosts: []string{"a.example.com", "c.example.com"}, want: false},
		{hosts: []string{"example.com"}, want: false},
		{hosts: []string{"x.a.example.com"}, want: false},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.hosts, ","), func(t *testing.T) {
			if got := c.Covers(tt.hosts); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRenewAt(t *testing.T) {
	notBefore := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	notAfter := notBefore.Add(90 * 24 * time.Hour)
	c := &Certificate{Leaf: &x509.Certificate{NotBefore: notBefore, NotAfter: notAfter}}
	day := 24 * time.Hour
	tests := []struct {
		name        string
		renewBefore time.Duration
		want        time.Time
	}{
		{name: "zero: a third of the lifetime", renewBefore: 0, want: notAfter.Add(-30 * day)},
		{name: "negative: a third", renewBefore: -time.Hour, want: notAfter.Add(-30 * day)},
		{name: "ten days", renewBefore: 10 * day, want: notAfter.Add(-10 * day)},
		{name: "just under the lifetime", renewBefore: 90*day - time.Second, want: notBefore.Add(time.Second)},
		{name: "the whole lifetime: a third", renewBefore: 90 * day, want: notAfter.Add(-30 * day)},
		{name: "longer than the lifetime: a third", renewBefore: 365 * day, want: notAfter.Add(-30 * day)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := c.RenewAt(tt.renewBefore); !got.Equal(tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("six-day certificate", func(t *testing.T) {
		short := &Certificate{Leaf: &x509.Certificate{NotBefore: notBefore, NotAfter: notBefore.Add(6 * day)}}
		if got, want := short.RenewAt(30*day), notBefore.Add(4*day); !got.Equal(want) {
			t.Errorf("got %v, want %v", got, want)
		}
	})
}

func TestBuild(t *testing.T) {
	notBefore := time.Now().Truncate(time.Second)
	notAfter := notBefore.Add(90 * 24 * time.Hour)
	tc := newTestCert(t, RSA2048, []string{"a.example.com", "b.example.com"}, notBefore, notAfter)

	sec, err := Build("ns", "web-tls", tc.chainPEM, tc.key, "https://ca.example/dir")
	if err != nil {
		t.Fatal(err)
	}
	if sec.Namespace != "ns" || sec.Name != "web-tls" {
		t.Errorf("got %s/%s, want ns/web-tls", sec.Namespace, sec.Name)
	}
	if sec.Type != corev1.SecretTypeTLS {
		t.Errorf("got type %q, want %q", sec.Type, corev1.SecretTypeTLS)
	}
	if !Owned(sec) {
		t.Errorf("got labels %v, want the Secret owned", sec.Labels)
	}
	wantAnn := map[string]string{
		AnnotationHosts:     "a.example.com,b.example.com",
		AnnotationNotAfter:  notAfter.UTC().Format(time.RFC3339),
		AnnotationSerial:    "beef42",
		AnnotationKeyType:   string(RSA2048),
		AnnotationDirectory: "https://ca.example/dir",
	}
	for k, want := range wantAnn {
		if got := sec.Annotations[k]; got != want {
			t.Errorf("annotation %s: got %q, want %q", k, got, want)
		}
	}
	if !bytes.Equal(sec.Data[corev1.TLSCertKey], tc.chainPEM) {
		t.Errorf("got tls.crt %q, want the chain as given", sec.Data[corev1.TLSCertKey])
	}
	// The Secret must not alias the caller's buffer.
	sec.Data[corev1.TLSCertKey][0] ^= 0xff
	if tc.chainPEM[0] == sec.Data[corev1.TLSCertKey][0] {
		t.Errorf("got tls.crt sharing memory with chainPEM, want a copy")
	}
	sec.Data[corev1.TLSCertKey][0] ^= 0xff

	parsed, err := Parse(sec)
	if err != nil {
		t.Fatalf("Parse(Build(...)): %v", err)
	}
	if parsed.KeyType != RSA2048 || parsed.Directory != "https://ca.example/dir" || !parsed.Leaf.Equal(tc.leaf) {
		t.Errorf("got %q %q %v, want the built certificate back", parsed.KeyType, parsed.Directory, parsed.Leaf.Subject)
	}

	t.Run("mismatched key", func(t *testing.T) {
		other, err := GenerateKey(ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		if s, err := Build("ns", "web-tls", tc.chainPEM, other, ""); err == nil {
			t.Errorf("got Secret %v, want an error", s.Name)
		}
	})
	t.Run("no certificate", func(t *testing.T) {
		if s, err := Build("ns", "web-tls", []byte("nope"), tc.key, ""); err == nil {
			t.Errorf("got Secret %v, want an error", s.Name)
		}
	})
}
