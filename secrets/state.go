package secrets

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ingress-acme/ingress-acme/core"
)

// States keeps a small record per certificate that must outlive the process
// (what it is is the caller's business: opaque bytes here), one Secret each in
// one namespace, labelled as ours with role "state". Safe for concurrent use.
type States struct {
	client    kubernetes.Interface
	namespace string
}

// NewStates returns States kept in namespace through client.
func NewStates(client kubernetes.Interface, namespace string) *States {
	return &States{client: client, namespace: namespace}
}

const stateField = "state"

// stateName is the Secret that holds the record of key.
func stateName(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "ingress-acme-state-" + hex.EncodeToString(sum[:])[:16]
}

// Load lists every record, by key, in one request.
func (s *States) Load(ctx context.Context) (map[string][]byte, error) {
	list, err := s.client.CoreV1().Secrets(s.namespace).List(ctx, metav1.ListOptions{
		LabelSelector: core.Selector + "," + core.LabelRole + "=" + core.RoleState})
	if err != nil {
		return nil, fmt.Errorf("list certificate states: %w", err)
	}
	out := map[string][]byte{}
	for _, sec := range list.Items {
		if key := sec.Annotations[core.AnnotationStateOf]; key != "" && sec.Name == stateName(key) {
			out[key] = sec.Data[stateField]
		}
	}
	return out, nil
}

// Save stores data as the record of key, creating or replacing it.
func (s *States) Save(ctx context.Context, key string, data []byte) error {
	api := s.client.CoreV1().Secrets(s.namespace)
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:        stateName(key),
			Namespace:   s.namespace,
			Labels:      map[string]string{core.LabelManagedBy: core.ManagedBy, core.LabelRole: core.RoleState},
			Annotations: map[string]string{core.AnnotationStateOf: key},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{stateField: data},
	}
	_, err := api.Update(ctx, sec, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		_, err = api.Create(ctx, sec, metav1.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("save state of %s: %w", key, err)
	}
	return nil
}

// Delete removes the record of key; none is no error.
func (s *States) Delete(ctx context.Context, key string) error {
	err := s.client.CoreV1().Secrets(s.namespace).Delete(ctx, stateName(key), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete state of %s: %w", key, err)
	}
	return nil
}
