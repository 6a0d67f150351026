package acme

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"math/big"

	"github.com/ingress-acme/ingress-acme/core"
)

// orderKeySalt separates the keys OrderKey derives from any other use of the
// account key; a new derivation would take a new salt.
const orderKeySalt = "ingress-acme.io order key v1"

// OrderKey returns the private key for the certificate of o, of keyType. For
// the ECDSA key types it is derived from the account key and o.URL (HKDF-SHA256,
// then FIPS 186-5 A.2.1), so every process that holds the account, a restarted
// one or another replica, makes the same key again and can finish an order
// that was finalized before it died, without a new order and without the key
// ever being stored outside the Secret. Each order has its own URL, so no two
// certificates share a key. ok is false for key types it does not derive
// (RSA): the caller makes a random key, and such an order is not resumed once
// finalized.
func (c *Client) OrderKey(ctx context.Context, o core.Order, keyType core.KeyType) (key crypto.Signer, ok bool, err error) {
	curve := curveOf(keyType)
	if curve == nil {
		return nil, false, nil
	}
	s, err := c.session(ctx)
	if err != nil {
		return nil, false, err
	}
	k, err := deriveKey(s.accountKey(), curve, orderKeyLabel(keyType, o.URL))
	return k, err == nil, err
}

// orderKeyLabel is what tells apart the keys derived for orders.
func orderKeyLabel(keyType core.KeyType, orderURL string) string {
	return string(keyType) + " " + orderURL
}

// curveOf is the curve of an ECDSA key type; nil for any other.
func curveOf(keyType core.KeyType) elliptic.Curve {
	switch keyType {
	case core.ECDSAP256:
		return elliptic.P256()
	case core.ECDSAP384:
		return elliptic.P384()
	}
	return nil
}

// deriveKey derives an ECDSA key on curve from account's private key and
// label: the scalar is 64 bits longer than the curve's order from HKDF, then
// reduced into [1, n-1], so its bias is negligible.
func deriveKey(account crypto.Signer, curve elliptic.Curve, label string) (*ecdsa.PrivateKey, error) {
	secret, err := x509.MarshalPKCS8PrivateKey(account)
	if err != nil {
		return nil, fmt.Errorf("acme: order key: %w", err)
	}
	n := curve.Params().N
	size := (n.BitLen() + 7) / 8
	okm, err := hkdf.Key(sha256.New, secret, []byte(orderKeySalt), label, size+8)
	if err != nil {
		return nil, fmt.Errorf("acme: order key: %w", err)
	}
	nMinus1 := new(big.Int).Sub(n, big.NewInt(1))
	d := new(big.Int).SetBytes(okm)
	d.Mod(d, nMinus1).Add(d, big.NewInt(1))
	key, err := ecdsa.ParseRawPrivateKey(curve, d.FillBytes(make([]byte, size)))
	if err != nil {
		return nil, fmt.Errorf("acme: order key: %w", err)
	}
	return key, nil
}

// sameKey tells whether cert is for key's public key.
func sameKey(cert *x509.Certificate, key crypto.Signer) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(cert.PublicKey)
}
