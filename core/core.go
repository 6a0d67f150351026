// Package core holds the names and small values that several of ingress-acme's
// packages must agree on: the label and annotation keys and who owns an object
// (names.go), the neutral certificate request that sources produce and the
// engine works on (request.go), the values that cross between the engine and an
// issuer or a challenge solver (order.go), and the key types. It imports only
// the standard library and holds no state.
package core

import (
	"fmt"
	"slices"
	"strings"
)

// KeyType names a certificate private key algorithm.
type KeyType string

// The key types a certificate can have; ECDSAP256 is the default.
const (
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
	RSA2048   KeyType = "rsa-2048"
	RSA4096   KeyType = "rsa-4096"
)

// KeyTypes lists every key type, the default first. Each call returns a new slice.
func KeyTypes() []KeyType { return []KeyType{ECDSAP256, ECDSAP384, RSA2048, RSA4096} }

// KeyTypeNames is KeyTypes joined by ", ", for messages.
func KeyTypeNames() string {
	names := make([]string, 0, 4)
	for _, k := range KeyTypes() {
		names = append(names, string(k))
	}
	return strings.Join(names, ", ")
}

// ParseKeyType returns the key type named s (any case, trimmed), or an error
// naming the valid ones.
func ParseKeyType(s string) (KeyType, error) {
	kt := KeyType(strings.ToLower(strings.TrimSpace(s)))
	if slices.Contains(KeyTypes(), kt) {
		return kt, nil
	}
	return "", fmt.Errorf("unknown key type %q (want one of %s)", s, KeyTypeNames())
}
