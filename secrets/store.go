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
	if !Owned(current) {
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

// Read parses a certificate Secret (see Parse) and returns its leaf, key type and
// issuing directory.
func (s *Store) Read(sec *corev1.Secret) (leaf *x509.Certificate, keyType, directory string, err error) {
	c, err := Parse(sec)
	if err != nil {
		return nil, "", "", err
	}
	return c.Leaf, string(c.KeyType), c.Directory, nil
}

// Write builds the Secret namespace/name for chainPEM and key (see Build) and
// stores it over current (see Put).
func (s *Store) Write(ctx context.Context, current *corev1.Secret, namespace, name string, chainPEM []byte, key crypto.Signer, directory string) error {
	desired, err := Build(namespace, name, chainPEM, key, directory)
	if err != nil {
		return err
	}
	return s.Put(ctx, current, desired)
}

// NewKey generates a private key of the named type (see ParseKeyType).
func (s *Store) NewKey(keyType string) (crypto.Signer, error) {
	kt, err := ParseKeyType(keyType)
	if err != nil {
		return nil, err
	}
	return GenerateKey(kt)
}

// AccountKeys keeps ACME account keys in Secrets of one namespace, one Secret per
// directory URL. It is safe for concurrent use.
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

// LoadOrCreate returns the account key PEM stored for directoryURL. When there is
// none, it stores the one generate returns and returns that; when another process
// stored one first, it returns theirs. created tells whether this call stored it.
func (a *AccountKeys) LoadOrCreate(ctx context.Context, directoryURL string, generate func() ([]byte, error)) (keyPEM []byte, created bool, err error) {
	api := a.client.CoreV1().Secrets(a.namespace)
	name := AccountSecretName(directoryURL)
	load := func() ([]byte, bool, error) {
		sec, err := api.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, false, err
		}
		if sec.Annotations[AnnotationDirectory] != directoryURL || len(sec.Data[accountKeyField]) == 0 {
			return nil, false, fmt.Errorf("secret %s/%s does not hold the account key for %s", a.namespace, name, directoryURL)
		}
		return sec.Data[accountKeyField], false, nil
	}
	key, _, err := load()
	if err == nil {
		return key, false, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, false, fmt.Errorf("load account key: %w", err)
	}
	if key, err = generate(); err != nil {
		return nil, false, err
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Namespace:   a.namespace,
			Labels:      map[string]string{LabelManagedBy: ManagedBy, "ingress-acme.io/role": "account"},
			Annotations: map[string]string{AnnotationDirectory: directoryURL},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{accountKeyField: key},
	}
	_, err = api.Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return load()
	}
	if err != nil {
		return nil, false, fmt.Errorf("store account key: %w", err)
	}
	return key, true, nil
}
