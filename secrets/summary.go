package secrets

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ingress-acme/ingress-acme/core"
)

// summaryKey holds, in a summarized Secret's Data, either "error: " and why
// the certificate is not usable, or its key type and the leaf's fields that
// deciding on it reads (see leafSummary). It never reaches the API: writes
// replace Data whole.
const summaryKey = "ingress-acme.io/summary"

// Summarize is an informer transform (client-go's cache.TransformFunc) that
// keeps of a certificate Secret only what deciding on it needs: its metadata
// (no managed fields, no annotations derived from the certificate), its key
// type, and the leaf's validity, serial, authority key ID and DNS names: about
// 150 bytes where the leaf's DER takes 900. The private key and the chain never
// sit in the cache, so memory grows slowly with the number of certificates.
// Anything else passes unchanged. Read understands both forms. It is idempotent, as client-go requires: with
// streaming lists the reflector transforms each object as it arrives and the
// informer's queue transforms it again.
func Summarize(obj any) (any, error) {
	s, ok := obj.(*corev1.Secret)
	if !ok || s.Type != corev1.SecretTypeTLS {
		return obj, nil
	}
	if _, done := s.Data[summaryKey]; done {
		return obj, nil
	}
	out := &corev1.Secret{TypeMeta: s.TypeMeta, ObjectMeta: s.ObjectMeta, Type: s.Type}
	out.ManagedFields = nil
	out.Annotations = withoutDerived(s.Annotations)
	c, err := Parse(s)
	if err != nil {
		out.Data = map[string][]byte{summaryKey: []byte("error: " + err.Error())}
		return out, nil
	}
	out.Data = map[string][]byte{summaryKey: leafSummary(c.KeyType, c.Leaf)}
	return out, nil
}

// leafSummary is "keyType notBefore notAfter serial authorityKeyID dnsNames":
// Unix seconds, hex, hex, names joined by commas.
func leafSummary(keyType core.KeyType, leaf *x509.Certificate) []byte {
	return fmt.Appendf(nil, "%s %d %d %x %x %s", keyType, leaf.NotBefore.Unix(), leaf.NotAfter.Unix(),
		leaf.SerialNumber, leaf.AuthorityKeyId, strings.Join(leaf.DNSNames, ","))
}

// parseLeafSummary reads leafSummary's output back into a certificate that
// has just those fields: what Read's callers use of a cached one.
func parseLeafSummary(sum string) (core.KeyType, *x509.Certificate, error) {
	f := strings.Split(sum, " ")
	if len(f) != 6 {
		return "", nil, fmt.Errorf("summary %q: want 6 fields", sum)
	}
	notBefore, err1 := strconv.ParseInt(f[1], 10, 64)
	notAfter, err2 := strconv.ParseInt(f[2], 10, 64)
	serial, ok := new(big.Int).SetString(f[3], 16)
	var err3 error
	if !ok {
		err3 = errors.New("bad serial")
	}
	aki, err4 := hex.DecodeString(f[4])
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return "", nil, fmt.Errorf("summary %q: %w", sum, err)
	}
	leaf := &x509.Certificate{NotBefore: time.Unix(notBefore, 0).UTC(), NotAfter: time.Unix(notAfter, 0).UTC(),
		SerialNumber: serial, AuthorityKeyId: aki}
	if f[5] != "" {
		leaf.DNSNames = strings.Split(f[5], ",")
	}
	return core.KeyType(f[0]), leaf, nil
}

// derivedAnnotations are those Build writes from the certificate itself, for
// people to read: nothing reads them back, and Put writes them anew.
var derivedAnnotations = []string{core.AnnotationHosts, core.AnnotationNotAfter, core.AnnotationSerial, core.AnnotationKeyType}

// withoutDerived returns a copy of annotations less derivedAnnotations.
func withoutDerived(annotations map[string]string) map[string]string {
	out := make(map[string]string, len(annotations))
	for k, v := range annotations {
		if !slices.Contains(derivedAnnotations, k) {
			out[k] = v
		}
	}
	return out
}

// readSummary reads a Secret that Summarize made; ok is false for any other.
// Its leaf has only the fields leafSummary keeps.
func readSummary(s *corev1.Secret) (leaf *x509.Certificate, keyType core.KeyType, ok bool, err error) {
	sum, has := s.Data[summaryKey]
	if !has {
		return nil, "", false, nil
	}
	if why, bad := strings.CutPrefix(string(sum), "error: "); bad {
		return nil, "", true, errors.New(why)
	}
	keyType, leaf, err = parseLeafSummary(string(sum))
	return leaf, keyType, true, err
}
