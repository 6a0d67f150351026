package core

import (
	"errors"
	"fmt"
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
