package core

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseKeyType(t *testing.T) {
	tests := []struct {
		in      string
		want    KeyType
		wantErr bool
	}{
		{in: "ecdsa-p256", want: ECDSAP256},
		{in: "ecdsa-p384", want: ECDSAP384},
		{in: "rsa-2048", want: RSA2048},
		{in: "rsa-4096", want: RSA4096},
		{in: "  RSA-2048\t", want: RSA2048},
		{in: "ECDSA-P384", want: ECDSAP384},
		{in: "", wantErr: true},
		{in: "rsa-1024", wantErr: true},
		{in: "ed25519", wantErr: true},
		{in: "ecdsa-p256x", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseKeyType(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got err %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if err != nil && !strings.Contains(err.Error(), "ecdsa-p256, ecdsa-p384, rsa-2048, rsa-4096") {
				t.Errorf("got error %q, want it to list the valid key types", err)
			}
		})
	}
}

func TestKeyTypes(t *testing.T) {
	got := KeyTypes()
	if len(got) != 4 || got[0] != ECDSAP256 {
		t.Errorf("got %v, want four key types, %s first", got, ECDSAP256)
	}
	got[0] = "changed"
	if KeyTypes()[0] != ECDSAP256 {
		t.Errorf("got the list changed through a returned slice, want a new slice per call")
	}
}

func TestRetryAfterError(t *testing.T) {
	inner := errors.New("rate limited")
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	err := fmt.Errorf("order: %w", &RetryAfterError{Err: inner, At: at})
	var ra *RetryAfterError
	if !errors.As(err, &ra) || !ra.At.Equal(at) {
		t.Fatalf("got %v, want a *RetryAfterError at %v", err, at)
	}
	if !errors.Is(err, inner) || ra.Error() != "rate limited" {
		t.Errorf("got %q, want it to wrap and read as %q", ra.Error(), inner)
	}
}

func TestChallengeDigest(t *testing.T) {
	// SHA-256 of "abc", base64url without padding (FIPS 180-2 test vector).
	if got, want := (Challenge{KeyAuth: "abc"}).Digest(), "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if got, want := (Challenge{Token: "tok"}).Path(), "/.well-known/acme-challenge/tok"; got != want {
		t.Errorf("path: got %s, want %s", got, want)
	}
}

func TestSameHosts(t *testing.T) {
	tests := []struct {
		a, b []string
		want bool
	}{
		{[]string{"a.test", "B.test"}, []string{"b.test", "a.test"}, true},
		{[]string{"a.test", "a.test"}, []string{"A.TEST"}, true},
		{[]string{"a.test"}, []string{"a.test", "b.test"}, false},
		{nil, []string{}, true},
	}
	for _, tt := range tests {
		if got := SameHosts(tt.a, tt.b); got != tt.want {
			t.Errorf("SameHosts(%v, %v): got %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
	in := []string{"b.test", "A.test"}
	if got := NormalHosts(in); !slices.Equal(got, []string{"a.test", "b.test"}) || in[0] != "b.test" {
		t.Errorf("NormalHosts: got %v (input now %v), want [a.test b.test] and the input unchanged", got, in)
	}
}

func TestOwned(t *testing.T) {
	if !Owned(map[string]string{LabelManagedBy: ManagedBy, "x": "y"}) {
		t.Error("labelled as ours: got not owned")
	}
	for _, labels := range []map[string]string{nil, {LabelManagedBy: "helm"}, {"ingress-acme": "true"}} {
		if Owned(labels) {
			t.Errorf("%v: got owned, want not", labels)
		}
	}
}

// Every option is part of what a request asks for: a change of any ends a
// backoff.
func TestFingerprintSeesEveryOption(t *testing.T) {
	base := Request{Hosts: []string{"a.test"}, Options: Options{KeyType: ECDSAP256}}
	changes := []func(*Request){
		func(r *Request) { r.Hosts = []string{"a.test", "b.test"} },
		func(r *Request) { r.Options.KeyType = RSA2048 },
		func(r *Request) { r.Options.Profile = "shortlived" },
		func(r *Request) { r.Options.Issuer = "staging" },
		func(r *Request) { r.Options.Challenge = ChallengeDNS01 },
		func(r *Request) { r.Options.Present = "Prefix" },
		func(r *Request) { r.Options.SecretKeys = "ca.crt" },
	}
	for i, change := range changes {
		r := base
		change(&r)
		if r.Fingerprint() == base.Fingerprint() {
			t.Errorf("change %d: fingerprint unchanged (%s)", i, r.Fingerprint())
		}
	}
}
