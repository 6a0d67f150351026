package secrets

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/ingress-acme/ingress-acme/core"
)

// writes returns the verbs of the actions on client that change something.
func writes(client *fake.Clientset) []string {
	var verbs []string
	for _, a := range client.Actions() {
		switch a.GetVerb() {
		case "get", "list", "watch":
			continue
		}
		verbs = append(verbs, a.GetVerb()+" "+a.GetResource().Resource)
	}
	return verbs
}

func built(t *testing.T, hosts ...string) *corev1.Secret {
	t.Helper()
	now := time.Now()
	tc := newTestCert(t, core.ECDSAP256, hosts, now, now.Add(24*time.Hour))
	sec, err := Build("ns", "web-tls", core.Certificate{ChainPEM: tc.chainPEM, Key: tc.key, Directory: "https://ca.example/dir"}, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return sec
}

func foreignSecret() *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-tls", Labels: map[string]string{"owner": "someone"}},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: []byte("theirs"), corev1.TLSPrivateKeyKey: []byte("theirs")},
	}
}

func ownedSecret() *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   "ns",
			Name:        "web-tls",
			Labels:      map[string]string{core.LabelManagedBy: core.ManagedBy, "team": "web"},
			Annotations: map[string]string{"note": "keep me", core.AnnotationHosts: "old.example.com"},
		},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: []byte("old"), corev1.TLSPrivateKeyKey: []byte("old")},
	}
}

func TestStoreGet(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(ownedSecret())
	s := NewStore(client)

	got, err := s.Get(ctx, "ns", "web-tls")
	if err != nil {
		t.Fatal(err)
	}
	if got == nil || got.Name != "web-tls" {
		t.Errorf("got %v, want the Secret", got)
	}
	got, err = s.Get(ctx, "ns", "missing")
	if err != nil || got != nil {
		t.Errorf("got %v, %v, want nil, nil for a missing Secret", got, err)
	}

	client.PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "web-tls", errors.New("no"))
	})
	if got, err := s.Get(ctx, "ns", "web-tls"); err == nil || !apierrors.IsForbidden(err) {
		t.Errorf("got %v, %v, want a wrapped Forbidden error", got, err)
	}
}

func TestStorePut(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name       string
		existing   *corev1.Secret // in the API server
		current    func() *corev1.Secret
		wantErr    error
		wantWrites []string
		wantOurs   bool // the stored Secret is desired's content
		wantKept   map[string]string
	}{
		{
			name:       "create when none exists",
			current:    func() *corev1.Secret { return nil },
			wantWrites: []string{"create secrets"},
			wantOurs:   true,
		},
		{
			name:       "update an owned current, keeping other labels and annotations",
			existing:   ownedSecret(),
			current:    ownedSecret,
			wantWrites: []string{"update secrets"},
			wantOurs:   true,
			wantKept:   map[string]string{"team": "web", "note": "keep me"},
		},
		{
			name:       "refuse a current that is not ours",
			existing:   foreignSecret(),
			current:    foreignSecret,
			wantErr:    ErrNotOwned,
			wantWrites: nil,
		},
		{
			name:       "refuse a foreign Secret that appeared since the read",
			existing:   foreignSecret(),
			current:    func() *corev1.Secret { return nil },
			wantErr:    ErrNotOwned,
			wantWrites: []string{"create secrets"}, // the attempt, which fails
		},
		{
			name:       "update an owned Secret that appeared since the read",
			existing:   ownedSecret(),
			current:    func() *corev1.Secret { return nil },
			wantWrites: []string{"create secrets", "update secrets"},
			wantOurs:   true,
			wantKept:   map[string]string{"team": "web", "note": "keep me"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var objs []runtime.Object
			if tt.existing != nil {
				objs = append(objs, tt.existing)
			}
			client := fake.NewClientset(objs...)
			current := tt.current()
			if current != nil {
				// current as read from the API server, with its resourceVersion
				var err error
				if current, err = client.CoreV1().Secrets("ns").Get(ctx, "web-tls", metav1.GetOptions{}); err != nil {
					t.Fatal(err)
				}
				client.ClearActions()
			}
			desired := built(t, "new.example.com")

			err := NewStore(client).Put(ctx, current, desired)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got err %v, want %v", err, tt.wantErr)
			}
			if got := writes(client); strings.Join(got, ",") != strings.Join(tt.wantWrites, ",") {
				t.Errorf("got writes %v, want %v", got, tt.wantWrites)
			}
			stored, err := client.CoreV1().Secrets("ns").Get(ctx, "web-tls", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !tt.wantOurs {
				if !bytes.Equal(stored.Data[corev1.TLSCertKey], []byte("theirs")) || owned(stored) {
					t.Errorf("got the foreign Secret changed to %v, want it untouched", stored)
				}
				return
			}
			if !owned(stored) {
				t.Errorf("got labels %v, want ours", stored.Labels)
			}
			if stored.Type != corev1.SecretTypeTLS {
				t.Errorf("got type %q, want %q", stored.Type, corev1.SecretTypeTLS)
			}
			for _, k := range []string{corev1.TLSCertKey, corev1.TLSPrivateKeyKey} {
				if !bytes.Equal(stored.Data[k], desired.Data[k]) {
					t.Errorf("%s: got %q, want desired's", k, stored.Data[k])
				}
			}
			if got := stored.Annotations[core.AnnotationHosts]; got != "new.example.com" {
				t.Errorf("got hosts annotation %q, want %q", got, "new.example.com")
			}
			for k, want := range tt.wantKept {
				got, ok := stored.Labels[k]
				if !ok {
					got = stored.Annotations[k]
				}
				if got != want {
					t.Errorf("%s: got %q, want %q kept", k, got, want)
				}
			}
		})
	}
}

func TestStorePutConflict(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(ownedSecret())
	client.PrependReactor("update", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewConflict(schema.GroupResource{Resource: "secrets"}, "web-tls", errors.New("modified"))
	})
	current, err := client.CoreV1().Secrets("ns").Get(ctx, "web-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = NewStore(client).Put(ctx, current, built(t, "a.example.com"))
	if !apierrors.IsConflict(err) {
		t.Errorf("got %v, want a Conflict error the caller can detect", err)
	}
}

func TestStorePutDoesNotModifyCurrent(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(ownedSecret())
	current, err := client.CoreV1().Secrets("ns").Get(ctx, "web-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before := current.DeepCopy()
	if err := NewStore(client).Put(ctx, current, built(t, "a.example.com")); err != nil {
		t.Fatal(err)
	}
	if string(current.Data[corev1.TLSCertKey]) != string(before.Data[corev1.TLSCertKey]) || len(current.Annotations) != len(before.Annotations) {
		t.Errorf("got current changed to %v, want it untouched (it may be a lister's object)", current)
	}
}

func TestStoreWriteReadNewKey(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	s := NewStore(client)

	key, err := s.NewKey(core.ECDSAP384)
	if err != nil {
		t.Fatal(err)
	}
	if got := keyTypeOf(key.Public()); got != core.ECDSAP384 {
		t.Errorf("got key type %q, want %q", got, core.ECDSAP384)
	}
	if k, err := s.NewKey("rsa-512"); err == nil {
		t.Errorf("got key %T, want an error", k)
	}

	now := time.Now()
	tc := newTestCert(t, core.ECDSAP256, []string{"a.example.com"}, now, now.Add(time.Hour))
	if err := writeCert(ctx, s, "ns", "web-tls", tc.chainPEM, tc.key, "https://ca.example/dir", ""); err != nil {
		t.Fatal(err)
	}
	sec, err := s.Get(ctx, "ns", "web-tls")
	if err != nil || sec == nil {
		t.Fatalf("got %v, %v, want the written Secret", sec, err)
	}
	leaf, kt, dir, err := read(s, sec)
	if err != nil {
		t.Fatal(err)
	}
	if !leaf.Equal(tc.leaf) || kt != core.ECDSAP256 || dir != "https://ca.example/dir" {
		t.Errorf("got %v %q %q, want the written certificate, ecdsa-p256, the directory", leaf.DNSNames, kt, dir)
	}

	if err := writeCert(ctx, s, "ns", "other-tls", tc.chainPEM, key, "", ""); err == nil {
		t.Errorf("got no error writing a chain with the wrong key, want one")
	}
	if sec, _ := s.Get(ctx, "ns", "other-tls"); sec != nil {
		t.Errorf("got Secret %v written despite the error, want none", sec.Name)
	}
	if _, _, _, err := read(s, &corev1.Secret{}); err == nil {
		t.Errorf("got no error reading an empty Secret, want one")
	}
}

func TestAccountSecretName(t *testing.T) {
	a := AccountSecretName("https://acme-v02.api.letsencrypt.org/directory")
	b := AccountSecretName("https://acme-staging-v02.api.letsencrypt.org/directory")
	if a == b {
		t.Errorf("got the same name %q for two directories, want different", a)
	}
	if a != AccountSecretName("https://acme-v02.api.letsencrypt.org/directory") {
		t.Errorf("got a different name for the same directory, want a stable one")
	}
	if !strings.HasPrefix(a, "ingress-acme-account-") || len(a) != len("ingress-acme-account-")+10 {
		t.Errorf("got %q, want ingress-acme-account-<10 hex>", a)
	}
}

// testKey returns a new ECDSA P-256 key.
func testKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := GenerateKey(core.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sameKey(a, b crypto.Signer) bool {
	return a != nil && b != nil && publicKeysEqual(a.Public(), b.Public())
}

func TestAccountKeysLoadOrCreate(t *testing.T) {
	ctx := context.Background()
	const dirA, dirB = "https://a.example/dir", "https://b.example/dir"
	client := fake.NewClientset()
	ak := NewAccountKeys(client, "ingress-acme")
	keyA, keyA2, keyB := testKey(t), testKey(t), testKey(t)
	calls := 0
	gen := func(k crypto.Signer) func() (crypto.Signer, error) {
		return func() (crypto.Signer, error) { calls++; return k, nil }
	}

	key, created, err := ak.LoadOrCreate(ctx, dirA, gen(keyA))
	if err != nil {
		t.Fatal(err)
	}
	if !sameKey(key, keyA) || !created || calls != 1 {
		t.Errorf("got same key %v, created %v, %d generate calls, want key A, true, 1", sameKey(key, keyA), created, calls)
	}
	sec, err := client.CoreV1().Secrets("ingress-acme").Get(ctx, AccountSecretName(dirA), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("got %v, want the account Secret stored", err)
	}
	if !owned(sec) || sec.Annotations[core.AnnotationDirectory] != dirA {
		t.Errorf("got labels %v annotations %v, want ours and the directory", sec.Labels, sec.Annotations)
	}
	if stored, err := DecodeKey(sec.Data["key.pem"]); err != nil || !sameKey(stored, keyA) {
		t.Errorf("got stored key error %v, want key A as PEM", err)
	}

	key, created, err = ak.LoadOrCreate(ctx, dirA, gen(keyA2))
	if err != nil {
		t.Fatal(err)
	}
	if !sameKey(key, keyA) || created || calls != 1 {
		t.Errorf("got same key %v, created %v, %d generate calls, want the stored key A, false, 1", sameKey(key, keyA), created, calls)
	}

	key, created, err = ak.LoadOrCreate(ctx, dirB, gen(keyB))
	if err != nil {
		t.Fatal(err)
	}
	if !sameKey(key, keyB) || !created {
		t.Errorf("got same key %v, created %v, want a new key B for another directory", sameKey(key, keyB), created)
	}
	list, err := client.CoreV1().Secrets("ingress-acme").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 2 {
		t.Errorf("got %d account Secrets, want 2 (one per directory)", len(list.Items))
	}
}

func TestAccountKeysLoadOrCreateRace(t *testing.T) {
	ctx := context.Background()
	const dir = "https://a.example/dir"
	their := testKey(t)
	theirPEM, err := EncodeKey(their)
	if err != nil {
		t.Fatal(err)
	}
	theirs := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   "ingress-acme",
			Name:        AccountSecretName(dir),
			Labels:      map[string]string{core.LabelManagedBy: core.ManagedBy},
			Annotations: map[string]string{core.AnnotationDirectory: dir},
		},
		Data: map[string][]byte{"key.pem": theirPEM},
	}
	client := fake.NewClientset(theirs)
	// The first read misses it, as if the other replica created it just after.
	gets := 0
	client.PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		gets++
		if gets == 1 {
			return true, nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, theirs.Name)
		}
		return false, nil, nil
	})
	mine := testKey(t)
	key, created, err := NewAccountKeys(client, "ingress-acme").LoadOrCreate(ctx, dir, func() (crypto.Signer, error) { return mine, nil })
	if err != nil {
		t.Fatal(err)
	}
	if !sameKey(key, their) || created {
		t.Errorf("got same as theirs %v, created %v, want their key, false", sameKey(key, their), created)
	}
}

func TestAccountKeysLoadOrCreateErrors(t *testing.T) {
	ctx := context.Background()
	const dir = "https://a.example/dir"
	gen := func(called *bool) func() (crypto.Signer, error) {
		return func() (crypto.Signer, error) { *called = true; return testKey(t), nil }
	}
	t.Run("secret for another directory", func(t *testing.T) {
		client := fake.NewClientset(&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{
				Namespace:   "ingress-acme",
				Name:        AccountSecretName(dir),
				Annotations: map[string]string{core.AnnotationDirectory: "https://other.example/dir"},
			},
			Data: map[string][]byte{"key.pem": []byte("k")},
		})
		called := false
		key, _, err := NewAccountKeys(client, "ingress-acme").LoadOrCreate(ctx, dir, gen(&called))
		if err == nil {
			t.Errorf("got key %v, want an error", key != nil)
		}
		if called {
			t.Errorf("got generate called, want the Secret left alone")
		}
	})
	t.Run("empty key", func(t *testing.T) {
		client := fake.NewClientset(&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{
				Namespace:   "ingress-acme",
				Name:        AccountSecretName(dir),
				Annotations: map[string]string{core.AnnotationDirectory: dir},
			},
		})
		var called bool
		if key, _, err := NewAccountKeys(client, "ingress-acme").LoadOrCreate(ctx, dir, gen(&called)); err == nil {
			t.Errorf("got key %v, want an error", key != nil)
		}
	})
	t.Run("unparsable key", func(t *testing.T) {
		secret := "-----BEGIN EC PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END EC PRIVATE KEY-----\n"
		client := fake.NewClientset(&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{
				Namespace:   "ingress-acme",
				Name:        AccountSecretName(dir),
				Annotations: map[string]string{core.AnnotationDirectory: dir},
			},
			Data: map[string][]byte{"key.pem": []byte(secret)},
		})
		called := false
		_, _, err := NewAccountKeys(client, "ingress-acme").LoadOrCreate(ctx, dir, gen(&called))
		if err == nil || strings.Contains(err.Error(), "c2VjcmV0LWJ5dGVz") {
			t.Errorf("got %v, want an error without the key material", err)
		}
		if called {
			t.Errorf("got generate called, want the Secret left alone")
		}
	})
	t.Run("generate fails", func(t *testing.T) {
		client := fake.NewClientset()
		boom := errors.New("boom")
		_, created, err := NewAccountKeys(client, "ingress-acme").LoadOrCreate(ctx, dir, func() (crypto.Signer, error) { return nil, boom })
		if !errors.Is(err, boom) || created {
			t.Errorf("got %v, created %v, want boom, false", err, created)
		}
		if got := writes(client); len(got) != 0 {
			t.Errorf("got writes %v, want none", got)
		}
	})
	t.Run("read fails", func(t *testing.T) {
		client := fake.NewClientset()
		client.PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "x", errors.New("no"))
		})
		called := false
		_, _, err := NewAccountKeys(client, "ingress-acme").LoadOrCreate(ctx, dir, gen(&called))
		if !apierrors.IsForbidden(err) {
			t.Errorf("got %v, want the Forbidden error", err)
		}
		if called {
			t.Errorf("got a key generated after a failed read, want none (it could replace an existing account)")
		}
	})
}

func TestStatesRoundTrip(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	s := NewStates(client, "ctrl")
	if err := s.Save(ctx, "ns/a-tls", []byte(`{"failures":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(ctx, "ns/a-tls", []byte(`{"failures":2}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(ctx, "ns/b-tls", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(got["ns/a-tls"]) != `{"failures":2}` || len(got) != 2 {
		t.Errorf("load: got %q, want the last record of each of 2 keys", got)
	}
	if err := s.Delete(ctx, "ns/a-tls"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "ns/a-tls"); err != nil {
		t.Errorf("deleting again: got %v, want nil", err)
	}
	got, _ = s.Load(ctx)
	if _, ok := got["ns/a-tls"]; ok || len(got) != 1 {
		t.Errorf("after delete: got %q, want only ns/b-tls", got)
	}
}

func TestSummarizeKeepsWhatReadNeeds(t *testing.T) {
	now := time.Now()
	tc := newTestCert(t, core.RSA2048, []string{"a.example.com"}, now, now.Add(time.Hour))
	full, err := Build("ns", "web-tls", core.Certificate{ChainPEM: tc.chainPEM, Key: tc.key, Directory: "https://ca.example/dir"}, "", "")
	if err != nil {
		t.Fatal(err)
	}
	full.Annotations["example.com/foreign"] = "kept"
	obj, err := Summarize(full)
	if err != nil {
		t.Fatal(err)
	}
	sum := obj.(*corev1.Secret)
	for _, k := range derivedAnnotations {
		if _, has := sum.Annotations[k]; has {
			t.Errorf("summary keeps annotation %s, derived from the certificate", k)
		}
	}
	if got := sum.Annotations["example.com/foreign"]; got != "kept" {
		t.Errorf("summary's foreign annotation: got %q, want it kept (Put keeps it when it writes)", got)
	}
	if _, has := full.Annotations[core.AnnotationHosts]; !has {
		t.Error("Summarize changed the Secret it was given")
	}
	if _, has := sum.Data[corev1.TLSPrivateKeyKey]; has {
		t.Error("summary keeps the private key, want it dropped")
	}
	if len(sum.Data) != 1 || len(sum.Data[summaryKey]) > 200 {
		t.Errorf("summary keeps %d Data entries, %d bytes of summary, want one short one", len(sum.Data), len(sum.Data[summaryKey]))
	}
	s := NewStore(fake.NewClientset())
	leaf, kt, dir, err := read(s, sum)
	if err != nil || !sameSummaryFields(leaf, tc.leaf) || kt != core.RSA2048 || dir != "https://ca.example/dir" {
		t.Errorf("read of summary: got %v %q %q %v, want the leaf's fields, rsa-2048, the directory", leaf, kt, dir, err)
	}

	broken := full.DeepCopy()
	broken.Data[corev1.TLSPrivateKeyKey] = []byte("junk")
	obj, _ = Summarize(broken)
	_, _, _, fullErr := read(s, broken)
	if _, _, _, err := read(s, obj.(*corev1.Secret)); err == nil || fullErr == nil || err.Error() != fullErr.Error() {
		t.Errorf("read of a broken summary: got %v, want the full read's error %v", err, fullErr)
	}
	// Idempotent: streaming lists transform an object twice (reflector, then
	// the informer's queue); a summary summarized again stays the same.
	for _, once := range []*corev1.Secret{sum, obj.(*corev1.Secret)} {
		twice, _ := Summarize(once)
		_, _, _, err1 := read(s, once)
		_, _, _, err2 := read(s, twice.(*corev1.Secret))
		if !equality.Semantic.DeepEqual(twice, once) || fmt.Sprint(err1) != fmt.Sprint(err2) {
			t.Errorf("summarized twice: got %v (read: %v), want it as summarized once (read: %v)", twice.(*corev1.Secret).Data, err2, err1)
		}
	}
	other := &corev1.Secret{Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"x": []byte("y")}}
	if obj, _ := Summarize(other); obj != other {
		t.Error("a Secret that is not kubernetes.io/tls was changed, want it passed through")
	}
}

// sameSummaryFields compares what a summary keeps of a leaf.
func sameSummaryFields(got, want *x509.Certificate) bool {
	return got != nil && got.NotBefore.Equal(want.NotBefore.Truncate(time.Second)) && got.NotAfter.Equal(want.NotAfter.Truncate(time.Second)) &&
		got.SerialNumber.Cmp(want.SerialNumber) == 0 && bytes.Equal(got.AuthorityKeyId, want.AuthorityKeyId) &&
		slices.Equal(got.DNSNames, want.DNSNames)
}

func TestLeafSummaryRoundTrip(t *testing.T) {
	now := time.Now().UTC()
	for _, leaf := range []*x509.Certificate{
		{NotBefore: now, NotAfter: now.Add(90 * 24 * time.Hour), SerialNumber: new(big.Int).SetBytes(bytes.Repeat([]byte{0xfe}, 18)),
			AuthorityKeyId: []byte{1, 2, 3, 0xff}, DNSNames: []string{"a.example.com", "*.b.example.com"}},
		{NotBefore: now, NotAfter: now.Add(time.Minute), SerialNumber: big.NewInt(1)}, // no AKI, no names
	} {
		kt, got, err := parseLeafSummary(string(leafSummary(core.ECDSAP256, leaf)))
		if err != nil || kt != core.ECDSAP256 || !sameSummaryFields(got, leaf) {
			t.Errorf("round trip of %q: got %q %+v %v", leafSummary(core.ECDSAP256, leaf), kt, got, err)
		}
	}
	for _, bad := range []string{"", "rsa-2048 1 2 3", "rsa-2048 x 2 3 4 a", "rsa-2048 1 2 zz 4 a", "rsa-2048 1 2 3 zz a"} {
		if _, _, err := parseLeafSummary(bad); err == nil {
			t.Errorf("parseLeafSummary(%q): got nil error", bad)
		}
	}
}

// owned is core.Owned of a Secret that may be nil.
func owned(s *corev1.Secret) bool { return s != nil && core.Owned(s.Labels) }

// writeCert is Store.Write of chainPEM and key as a request for namespace/name.
func writeCert(ctx context.Context, s *Store, namespace, name string, chainPEM []byte, key crypto.Signer, directory, profile string) error {
	_, err := s.Write(ctx, nil, core.Request{Namespace: namespace, Secret: name, Options: core.Options{Profile: profile}},
		core.Certificate{ChainPEM: chainPEM, Key: key, Directory: directory})
	return err
}

// read is Store.Read's leaf, key type and directory.
func read(s *Store, sec *corev1.Secret) (*x509.Certificate, core.KeyType, string, error) {
	st, err := s.Read(sec)
	return st.Leaf, st.KeyType, st.Directory, err
}

// Read gives what the engine decides on, from the API server's Secret and
// from the cache's summary alike: the issuer asked of (name and identity),
// the profile and whether it was recorded, and the extra keys written.
func TestReadRecordsWhatWasAsked(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	tc := newTestCert(t, core.ECDSAP256, []string{"a.example.com"}, now, now.Add(time.Hour))
	s := NewStore(fake.NewClientset())
	req := core.Request{Namespace: "ns", Secret: "web-tls", Options: core.Options{Profile: "shortlived"}}
	leaf, err := s.Write(ctx, nil, req, core.Certificate{ChainPEM: tc.chainPEM, Key: tc.key, Issuer: "staging", Directory: "https://ca.example/dir"})
	if err != nil {
		t.Fatal(err)
	}
	if leaf == nil || !core.SameHosts(leaf.DNSNames, []string{"a.example.com"}) {
		t.Fatalf("Write: got leaf %v, want the certificate for a.example.com", leaf)
	}
	sec, err := s.Get(ctx, "ns", "web-tls")
	if err != nil {
		t.Fatal(err)
	}
	sum, _ := s.Summarize(sec.DeepCopy())
	for name, in := range map[string]*corev1.Secret{"full": sec, "summary": sum.(*corev1.Secret)} {
		got, err := s.Read(in)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got.Issuer != "staging" || got.Directory != "https://ca.example/dir" || got.Profile != "shortlived" || !got.ProfileRecorded || got.SecretKeys != "" {
			t.Errorf("%s: got %+v, want issuer staging at https://ca.example/dir, profile shortlived recorded, no extra keys", name, got)
		}
	}
	delete(sec.Annotations, core.AnnotationProfile)
	if got, _ := s.Read(sec); got.ProfileRecorded {
		t.Errorf("a Secret that records no profile: got ProfileRecorded, want false")
	}
}

// Rewrite gives a Secret the keys asked for from what it holds, without an
// order; keys no longer asked for go.
func TestRewrite(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	tc := newTestCert(t, core.ECDSAP256, []string{"a.example.com"}, now, now.Add(time.Hour))
	sec, err := Build("ns", "web-tls", core.Certificate{ChainPEM: tc.chainPEM, Key: tc.key, Issuer: "default", Directory: "https://ca.example/dir"}, "", "")
	if err != nil {
		t.Fatal(err)
	}
	sec.Annotations[core.AnnotationSecretKeys] = "old.pem" // written with a key no longer asked for
	sec.Data["old.pem"] = []byte("old")
	client := fake.NewClientset(sec)
	s := NewStore(client)
	req := core.Request{Namespace: "ns", Secret: "web-tls"}
	if err := s.Rewrite(ctx, sec, req); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Get(ctx, "ns", "web-tls")
	if _, has := got.Data["old.pem"]; has || !bytes.Equal(got.Data[corev1.TLSCertKey], tc.chainPEM) {
		t.Errorf("data keys: got %v, want tls.crt (unchanged) and tls.key alone", slices.Sorted(maps.Keys(got.Data)))
	}
	if st, err := s.Read(got); err != nil || st.SecretKeys != "" || st.Issuer != "default" || st.Directory != "https://ca.example/dir" {
		t.Errorf("read back: got %+v, %v; want no extra keys, the issuer kept", st, err)
	}
	if err := s.Rewrite(ctx, sec, core.Request{Namespace: "ns", Secret: "web-tls", Options: core.Options{SecretKeys: "nonsense"}}); err == nil {
		t.Error("Rewrite with an unknown key: got nil, want an error")
	}
}
