package secrets

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ingress-acme/ingress-acme/core"
)

// ErrNotOwned is returned when a write would touch a Secret that is not ours.
var ErrNotOwned = errors.New("secret exists and is not managed by ingress-acme")

// Store writes certificate Secrets. It is safe for concurrent use.
type Store struct {
	client kubernetes.Interface
}

// NewStore returns a Store that writes through client.
func NewStore(client kubernetes.Interface) *Store {
	return &Store{client: client}
}

// Get returns the Secret namespace/name read from the API server (not a cache),
// nil with no error when it does not exist.
func (s *Store) Get(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	sec, err := s.client.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get secret %s/%s: %w", namespace, name, err)
	}
	return sec, nil
}

// Put writes desired (from Build). current is the Secret as last seen (nil when
// none was seen): an owned current is updated in place, keeping its other labels
// and annotations; with no current, the Secret is created. It returns ErrNotOwned,
// writing nothing, when the Secret exists and is not ours, also when it appeared
// since current was read. A conflict is returned as is, for the caller to retry
// with a fresh read.
func (s *Store) Put(ctx context.Context, current, desired *corev1.Secret) error {
	api := s.client.CoreV1().Secrets(desired.Namespace)
	if current == nil {
		_, err := api.Create(ctx, desired, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			if current, err = s.Get(ctx, desired.Namespace, desired.Name); err != nil {
				return err
			}
			if current == nil { // deleted again meanwhile: create it after all
				_, err = api.Create(ctx, desired, metav1.CreateOptions{})
				if err != nil {
					return fmt.Errorf("create secret %s/%s: %w", desired.Namespace, desired.Name, err)
				}
				return nil
			}
			return s.Put(ctx, current, desired) // refuses a Secret not ours
		}
		if err != nil {
			return fmt.Errorf("create secret %s/%s: %w", desired.Namespace, desired.Name, err)
		}
		return nil
	}
	if !core.Owned(current.Labels) {
		return ErrNotOwned
	}
	next := current.DeepCopy()
	if next.Labels == nil {
		next.Labels = map[string]string{}
	}
	if next.Annotations == nil {
		next.Annotations = map[string]string{}
	}
	maps.Copy(next.Labels, desired.Labels)
	maps.Copy(next.Annotations, desired.Annotations)
	next.Type = desired.Type
	next.Data = desired.Data
	if _, err := api.Update(ctx, next, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update secret %s/%s: %w", desired.Namespace, desired.Name, err)
	}
	return nil
}

// Summarize is the cache's transform for certificate Secrets, which Read
// understands (see the function Summarize).
func (s *Store) Summarize(obj any) (any, error) { return Summarize(obj) }

// Read parses a certificate Secret (see Parse; or one Summarize made) and
// returns what it holds and records. The leaf of a summary has only its
// validity, serial, authority key ID and DNS names.
func (s *Store) Read(sec *corev1.Secret) (core.Stored, error) {
	leaf, keyType, ok, err := readSummary(sec)
	if !ok {
		var c *Certificate
		if c, err = Parse(sec); err == nil {
			leaf, keyType = c.Leaf, c.KeyType
		}
	}
	if err != nil {
		return core.Stored{}, err
	}
	profile, recorded := sec.Annotations[core.AnnotationProfile]
	return core.Stored{Leaf: leaf, KeyType: keyType, Issuer: sec.Annotations[core.AnnotationIssuer],
		Directory: sec.Annotations[core.AnnotationDirectory], Profile: profile, ProfileRecorded: recorded,
		SecretKeys: sec.Annotations[core.AnnotationSecretKeys]}, nil
}

// Write builds req's Secret for cert (see Build) and stores it over current
// (see Put). It returns the certificate's leaf.
func (s *Store) Write(ctx context.Context, current *corev1.Secret, req core.Request, cert core.Certificate) (*x509.Certificate, error) {
	desired, err := Build(req.Namespace, req.Secret, cert, req.Options.Profile, req.Options.SecretKeys)
	if err != nil {
		return nil, err
	}
	if err := s.Put(ctx, current, desired); err != nil {
		return nil, err
	}
	chain, _ := DecodeChain(cert.ChainPEM) // Build parsed it
	return chain[0], nil
}

// Rewrite gives the Secret current names (ours) the data req's options ask
// for, from the certificate and key it holds (read afresh: the cache keeps
// neither), keeping what it records of how it was ordered.
func (s *Store) Rewrite(ctx context.Context, current *corev1.Secret, req core.Request) error {
	full, err := s.Get(ctx, req.Namespace, req.Secret)
	if err != nil || full == nil {
		return fmt.Errorf("rewrite secret %s/%s: %w", req.Namespace, req.Secret, errors.Join(err, errors.New("gone")))
	}
	key, err := DecodeKey(full.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return fmt.Errorf("rewrite secret %s/%s: %w", req.Namespace, req.Secret, err)
	}
	cert := core.Certificate{ChainPEM: full.Data[corev1.TLSCertKey], Key: key,
		Issuer: full.Annotations[core.AnnotationIssuer], Directory: full.Annotations[core.AnnotationDirectory],
		SignedBy: full.Annotations[core.AnnotationSignedBy]}
	desired, err := Build(req.Namespace, req.Secret, cert, full.Annotations[core.AnnotationProfile], req.Options.SecretKeys)
	if err != nil {
		return err
	}
	return s.Put(ctx, full, desired)
}

// NewKey generates a private key of keyType (see GenerateKey).
func (s *Store) NewKey(keyType core.KeyType) (crypto.Signer, error) {
	return GenerateKey(keyType)
}

// AccountKeys keeps ACME account keys in Secrets of one namespace, one Secret per
// directory URL; it implements acme.AccountKeys. It is safe for concurrent use.
type AccountKeys struct {
	client    kubernetes.Interface
	namespace string
}

// NewAccountKeys returns AccountKeys storing in namespace through client.
func NewAccountKeys(client kubernetes.Interface, namespace string) *AccountKeys {
	return &AccountKeys{client: client, namespace: namespace}
}

const accountKeyField = "key.pem"

// AccountSecretName is the name of the Secret that holds the account key for the
// ACME directory at directoryURL.
func AccountSecretName(directoryURL string) string {
	sum := sha256.Sum256([]byte(directoryURL))
	return "ingress-acme-account-" + hex.EncodeToString(sum[:])[:10]
}

// LoadOrCreate returns the account key stored for directoryURL (PEM, read with
// DecodeKey). When there is none, it stores the one generate returns (encoded
// with EncodeKey) and returns that; when another process stored one first, it
// returns theirs. created tells whether this call stored it. Its errors never
// contain key material.
func (a *AccountKeys) LoadOrCreate(ctx context.Context, directoryURL string, generate func() (crypto.Signer, error)) (key crypto.Signer, created bool, err error) {
	key, err = a.load(ctx, directoryURL)
	if err == nil {
		return key, false, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, false, fmt.Errorf("load account key: %w", err)
	}
	if key, err = generate(); err != nil {
		return nil, false, err
	}
	keyPEM, err := EncodeKey(key)
	if err != nil {
		return nil, false, err
	}
	_, err = a.client.CoreV1().Secrets(a.namespace).Create(ctx, a.accountSecret(directoryURL, keyPEM), metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		key, err = a.load(ctx, directoryURL)
		return key, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("store account key: %w", err)
	}
	return key, true, nil
}

// load reads the account key of directoryURL; a NotFound error when none is stored.
func (a *AccountKeys) load(ctx context.Context, directoryURL string) (crypto.Signer, error) {
	name := AccountSecretName(directoryURL)
	sec, err := a.client.CoreV1().Secrets(a.namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if sec.Annotations[core.AnnotationDirectory] != directoryURL || len(sec.Data[accountKeyField]) == 0 {
		return nil, fmt.Errorf("secret %s/%s does not hold the account key for %s", a.namespace, name, directoryURL)
	}
	key, err := DecodeKey(sec.Data[accountKeyField])
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: account key: %w", a.namespace, name, err)
	}
	return key, nil
}

func (a *AccountKeys) accountSecret(directoryURL string, keyPEM []byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:        AccountSecretName(directoryURL),
			Namespace:   a.namespace,
			Labels:      map[string]string{core.LabelManagedBy: core.ManagedBy, core.LabelRole: core.RoleAccount},
			Annotations: map[string]string{core.AnnotationDirectory: directoryURL},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{accountKeyField: keyPEM},
	}
}
