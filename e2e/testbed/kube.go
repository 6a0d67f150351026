package testbed

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"regexp"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Kubeconfig writes a kubeconfig file at path that reaches the API server with
// the bearer token (e.g. from ServiceAccountToken), verifying its TLS.
func (tb *Testbed) Kubeconfig(token, path string) error {
	return tb.writeKubeconfig(token, "user", path)
}

func (tb *Testbed) writeKubeconfig(token, user, path string) error {
	ca, err := os.ReadFile(tb.APIServerCAFile)
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: %q
    certificate-authority-data: %s
users:
- name: %q
  user:
    token: %q
contexts:
- name: testbed
  context:
    cluster: testbed
    user: %q
current-context: testbed
`, tb.APIServerURL, base64.StdEncoding.EncodeToString(ca), user, token, user)
	return os.WriteFile(path, []byte(cfg), 0o600)
}

// ServiceAccountToken returns a token for the ServiceAccount ns/name from the
// TokenRequest API, valid for 24 hours. It creates the namespace and the
// ServiceAccount first if they are missing.
func (tb *Testbed) ServiceAccountToken(ctx context.Context, ns, name string) (string, error) {
	core := tb.client.CoreV1()
	_, err := core.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("testbed: namespace %s: %w", ns, err)
	}
	_, err = core.ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("testbed: serviceaccount %s/%s: %w", ns, name, err)
	}
	expiry := int64(24 * 3600)
	tr, err := core.ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("testbed: token for %s/%s: %w", ns, name, err)
	}
	return tr.Status.Token, nil
}

var notDNSLabel = regexp.MustCompile(`[^a-z0-9-]+`)

// CreateNamespace creates a namespace named from base (lower-cased, anything
// outside [a-z0-9-] made a dash, shortened) plus a random suffix, and returns
// its name. Namespaces never finish deleting on the testbed (there is no
// controller-manager), so every test should use a fresh one.
func (tb *Testbed) CreateNamespace(ctx context.Context, base string) (string, error) {
	name := strings.Trim(notDNSLabel.ReplaceAllString(strings.ToLower(base), "-"), "-")
	if len(name) > 50 {
		name = strings.TrimRight(name[:50], "-")
	}
	if name == "" {
		name = "test"
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name = fmt.Sprintf("%s-%x", name, b)
	_, err := tb.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("testbed: namespace %s: %w", name, err)
	}
	return name, nil
}
