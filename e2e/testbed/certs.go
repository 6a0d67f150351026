package testbed

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
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
