package testbed

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"fmt"

	"github.com/ingress-acme/ingress-acme/secrets"
)

// KeyTypeOf names the key type of a certificate's public key as the
// annotation ingress-acme.io/key-type does: ecdsa-p256, ecdsa-p384, rsa-2048...
func KeyTypeOf(c *x509.Certificate) string {
	switch k := c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		return map[elliptic.Curve]string{elliptic.P256(): "ecdsa-p256", elliptic.P384(): "ecdsa-p384"}[k.Curve]
	case *rsa.PublicKey:
		return fmt.Sprintf("rsa-%d", k.N.BitLen())
	}
	return fmt.Sprintf("%T", c.PublicKey)
}

// VerifyChainPEM parses chainPEM (a tls.crt: leaf first, then intermediates)
// and verifies the leaf against roots (say, from PebbleRootPool) for every
// host. It returns the leaf.
func VerifyChainPEM(chainPEM []byte, roots *x509.CertPool, hosts ...string) (*x509.Certificate, error) {
	certs, err := secrets.DecodeChain(chainPEM)
	if err != nil {
		return nil, err
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	for _, h := range hosts {
		if _, err := certs[0].Verify(x509.VerifyOptions{DNSName: h, Roots: roots, Intermediates: inter}); err != nil {
			return nil, fmt.Errorf("verify for %s: %w", h, err)
		}
	}
	return certs[0], nil
}
