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

	"github.com/ingress-acme/ingress-acme/core"
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
func newTestCert(t *testing.T, kt core.KeyType, hosts []string, notBefore, notAfter time.Time) testCert {
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

func TestGenerateEncodeDecodeKey(t *testing.T) {
	tests := []struct {
		kt        core.KeyType
		pemType   string
		checkSize func(crypto.Signer) bool
	}{
		{core.ECDSAP256, "EC PRIVATE KEY", func(k crypto.Signer) bool { return k.(*ecdsa.PrivateKey).Curve == elliptic.P256() }},
		{core.ECDSAP384, "EC PRIVATE KEY", func(k crypto.Signer) bool { return k.(*ecdsa.PrivateKey).Curve == elliptic.P384() }},
		{core.RSA2048, "RSA PRIVATE KEY", nil},
		{core.RSA4096, "RSA PRIVATE KEY", nil},
	}
	for _, tt := range tests {
		t.Run(string(tt.kt), func(t *testing.T) {
			if tt.kt == core.RSA4096 && testing.Short() {
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
	ec, err := GenerateKey(core.ECDSAP256)
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
		{name: "other manager", sec: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{core.LabelManagedBy: "cert-manager"}}}, want: false},
		{name: "our value on another label", sec: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"managed-by": core.ManagedBy}}}, want: false},
		{name: "ours", sec: &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{core.LabelManagedBy: core.ManagedBy, "x": "y"}}}, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := owned(tt.sec); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	if core.Selector != "app.kubernetes.io/managed-by=ingress-acme" {
		t.Errorf("got selector %q, want %q", core.Selector, "app.kubernetes.io/managed-by=ingress-acme")
	}
}

func TestParse(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	good := newTestCert(t, core.ECDSAP384, []string{"a.example.com", "b.example.com"}, now, now.Add(90*24*time.Hour))
	other := newTestCert(t, core.ECDSAP256, []string{"a.example.com"}, now, now.Add(90*24*time.Hour))
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
			s.Annotations = map[string]string{core.AnnotationDirectory: "https://ca.example/dir"}
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
			if c.KeyType != core.ECDSAP384 {
				t.Errorf("got key type %q, want %q", c.KeyType, core.ECDSAP384)
			}
			if c.Directory != "https://ca.example/dir" {
				t.Errorf("got directory %q, want %q", c.Directory, "https://ca.example/dir")
			}
		})
	}
}

func TestDecodeChain(t *testing.T) {
	now := time.Now()
	c := newTestCert(t, core.ECDSAP256, []string{"a.example.com"}, now, now.Add(time.Hour))
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

func TestBuild(t *testing.T) {
	notBefore := time.Now().Truncate(time.Second)
	notAfter := notBefore.Add(90 * 24 * time.Hour)
	tc := newTestCert(t, core.RSA2048, []string{"a.example.com", "b.example.com"}, notBefore, notAfter)

	sec, err := Build("ns", "web-tls", core.Certificate{ChainPEM: tc.chainPEM, Key: tc.key, Directory: "https://ca.example/dir"}, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if sec.Namespace != "ns" || sec.Name != "web-tls" {
		t.Errorf("got %s/%s, want ns/web-tls", sec.Namespace, sec.Name)
	}
	if sec.Type != corev1.SecretTypeTLS {
		t.Errorf("got type %q, want %q", sec.Type, corev1.SecretTypeTLS)
	}
	if !owned(sec) {
		t.Errorf("got labels %v, want the Secret owned", sec.Labels)
	}
	wantAnn := map[string]string{
		core.AnnotationHosts:     "a.example.com,b.example.com",
		core.AnnotationNotAfter:  notAfter.UTC().Format(time.RFC3339),
		core.AnnotationSerial:    "beef42",
		core.AnnotationKeyType:   string(core.RSA2048),
		core.AnnotationDirectory: "https://ca.example/dir",
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
	if parsed.KeyType != core.RSA2048 || parsed.Directory != "https://ca.example/dir" || !parsed.Leaf.Equal(tc.leaf) {
		t.Errorf("got %q %q %v, want the built certificate back", parsed.KeyType, parsed.Directory, parsed.Leaf.Subject)
	}

	t.Run("mismatched key", func(t *testing.T) {
		other, err := GenerateKey(core.ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		if s, err := Build("ns", "web-tls", core.Certificate{ChainPEM: tc.chainPEM, Key: other, Directory: ""}, "", ""); err == nil {
			t.Errorf("got Secret %v, want an error", s.Name)
		}
	})
	t.Run("no certificate", func(t *testing.T) {
		if s, err := Build("ns", "web-tls", core.Certificate{ChainPEM: []byte("nope"), Key: tc.key, Directory: ""}, "", ""); err == nil {
			t.Errorf("got Secret %v, want an error", s.Name)
		}
	})
}
