package secrets

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/ingress-acme/ingress-acme/core"
)

// In a summarized Secret's Data, summaryKey holds the key type of a usable
// certificate or "error: " and why it is not usable, and leafKey the leaf
// certificate, DER (two thirds of its PEM). Neither reaches the API: writes
// replace Data whole.
const (
	summaryKey = "ingress-acme.io/summary"
	leafKey    = "ingress-acme.io/leaf"
)

// Summarize is an informer transform (client-go's cache.TransformFunc) that
// keeps of a certificate Secret only what deciding on it needs: its metadata
// (no managed fields, no annotations derived from the certificate), its leaf
// certificate (DER), and a summary of its key. The private key and the rest of
// the chain never sit in the cache, so memory grows slowly with the number of
// certificates. Anything else passes unchanged. Read
// understands both forms. It is idempotent, as client-go requires: with
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
	out.Data = map[string][]byte{
		leafKey:    bytes.Clone(c.Leaf.Raw),
		summaryKey: []byte(c.KeyType),
	}
	return out, nil
}

// derivedAnnotations are those Build writes from the certificate itself, for
// people to read: nothing reads them back, and Put writes them anew.
var derivedAnnotations = []string{AnnotationHosts, AnnotationNotAfter, AnnotationSerial, core.AnnotationKeyType}

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
func readSummary(s *corev1.Secret) (leaf *x509.Certificate, keyType core.KeyType, ok bool, err error) {
	sum, has := s.Data[summaryKey]
	if !has {
		return nil, "", false, nil
	}
	if why, bad := strings.CutPrefix(string(sum), "error: "); bad {
		return nil, "", true, errors.New(why)
	}
	leaf, err = x509.ParseCertificate(s.Data[leafKey])
	if err != nil {
		return nil, "", true, fmt.Errorf("%s: %w", corev1.TLSCertKey, err)
	}
	return leaf, core.KeyType(sum), true, nil
}
