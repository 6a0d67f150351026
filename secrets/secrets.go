// Package secrets builds, parses, reads and writes the kubernetes.io/tls Secrets
// that hold ingress-acme's certificates, generates and encodes their private
// keys, and keeps the ACME account keys in Secrets of the controller's namespace.
//
// A Secret is ours when core.Owned says so of its labels. Nothing in this
// package ever modifies a Secret that is not ours.
package secrets

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ingress-acme/ingress-acme/core"
)

// GenerateKey returns a new private key of type kt, or an error for a type not
// in core.KeyTypes.
func GenerateKey(kt core.KeyType) (crypto.Signer, error) {
	switch kt {
	case core.ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case core.ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case core.RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case core.RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, fmt.Errorf("unknown key type %q", kt)
}

// keyTypeOf tells the key type of a public key, or "" for anything else.
func keyTypeOf(pub crypto.PublicKey) core.KeyType {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return core.ECDSAP256
		case elliptic.P384():
			return core.ECDSAP384
		}
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 2048:
			return core.RSA2048
		case 4096:
			return core.RSA4096
		}
	}
	return ""
}

// EncodeKey returns key as PEM: SEC 1 for ECDSA, PKCS #1 for RSA, the encodings
// every ingress controller reads.
func EncodeKey(key crypto.Signer) ([]byte, error) {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("encode ecdsa key: %w", err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}), nil
	}
	return nil, fmt.Errorf("unsupported key type %T", key)
}

// DecodeKey parses the first private key PEM block of data (SEC 1, PKCS #1 or
// PKCS #8). Its errors never include the key material.
func DecodeKey(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no private key PEM block")
		}
		switch block.Type {
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(block.Bytes)
			if err != nil {
				return nil, errors.New("invalid EC private key")
			}
			return k, nil
		case "RSA PRIVATE KEY":
			k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
			if err != nil {
				return nil, errors.New("invalid RSA private key")
			}
			return k, nil
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, errors.New("invalid PKCS #8 private key")
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("unsupported private key type %T", k)
			}
			return s, nil
		}
	}
}

// Certificate is what a Secret of ours holds, parsed.
type Certificate struct {
	Leaf      *x509.Certificate
	Chain     []*x509.Certificate // Leaf first
	KeyType   core.KeyType        // "" for a key of a type not in core.KeyTypes
	Directory string              // the identity of the issuer it was asked of, from its annotation
}

// Parse reads a certificate Secret: tls.crt must be a PEM chain whose first
// certificate matches the private key in tls.key. It returns an error for a
// Secret that is missing either, unparsable or mismatched; the error never
// contains key material.
func Parse(s *corev1.Secret) (*Certificate, error) {
	if s == nil {
		return nil, errors.New("no secret")
	}
	chain, err := DecodeChain(s.Data[corev1.TLSCertKey])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", corev1.TLSCertKey, err)
	}
	key, err := DecodeKey(s.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", corev1.TLSPrivateKeyKey, err)
	}
	if !publicKeysEqual(chain[0].PublicKey, key.Public()) {
		return nil, errors.New("tls.key does not match the certificate in tls.crt")
	}
	return &Certificate{
		Leaf:      chain[0],
		Chain:     chain,
		KeyType:   keyTypeOf(key.Public()),
		Directory: s.Annotations[core.AnnotationDirectory],
	}, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// DecodeChain parses every CERTIFICATE block of a PEM bundle, leaf first.
func DecodeChain(data []byte) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, errors.New("no certificate PEM block")
	}
	return chain, nil
}

// Build returns the kubernetes.io/tls Secret namespace/name holding cert,
// labelled as ours and annotated with its hosts, expiry, serial, key type, the
// issuer it was asked of (name and identity), the CA that signed it and the
// profile it was ordered with. Its data are tls.crt (the chain, leaf first) and tls.key, and the
// extra keys of secretKeys (see core.Options.SecretKeys), which it records.
func Build(namespace, name string, cert core.Certificate, profile, secretKeys string) (*corev1.Secret, error) {
	chain, err := DecodeChain(cert.ChainPEM)
	if err != nil {
		return nil, err
	}
	if !publicKeysEqual(chain[0].PublicKey, cert.Key.Public()) {
		return nil, errors.New("the issued certificate does not match the private key")
	}
	data, err := contents(cert, secretKeys)
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	annotations := map[string]string{
		core.AnnotationHosts:     strings.Join(leaf.DNSNames, ","),
		core.AnnotationNotAfter:  leaf.NotAfter.UTC().Format(time.RFC3339),
		core.AnnotationSerial:    fmt.Sprintf("%x", leaf.SerialNumber),
		core.AnnotationKeyType:   string(keyTypeOf(cert.Key.Public())),
		core.AnnotationIssuer:    cert.Issuer,
		core.AnnotationDirectory: cert.Directory,
		core.AnnotationSignedBy:  cert.SignedBy,
		core.AnnotationProfile:   profile,
		// Always written: an update keeps the annotations it does not write.
		core.AnnotationSecretKeys: secretKeys,
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Namespace:   namespace,
			Labels:      map[string]string{core.LabelManagedBy: core.ManagedBy},
			Annotations: annotations,
		},
		Type: corev1.SecretTypeTLS,
		Data: data,
	}, nil
}

// contents are the Secret data for cert: tls.crt and tls.key, and the extra
// keys secretKeys names. No extra key is known yet: any is an error.
func contents(cert core.Certificate, secretKeys string) (map[string][]byte, error) {
	keyPEM, err := EncodeKey(cert.Key)
	if err != nil {
		return nil, err
	}
	data := map[string][]byte{
		corev1.TLSCertKey:       bytes.Clone(cert.ChainPEM),
		corev1.TLSPrivateKeyKey: keyPEM,
	}
	if secretKeys != "" {
		return nil, fmt.Errorf("unknown Secret keys %q", secretKeys)
	}
	return data, nil
}
