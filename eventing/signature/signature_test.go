package signature

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const (
	secretOld = "old-secret-0123456789abcdef"
	secretNew = "new-secret-0123456789abcdef"
	secretBad = "bad-secret-0123456789abcdef"
)

func mustSigner(t *testing.T, secrets ...string) *Signer {
	t.Helper()
	s, err := NewSigner(secrets)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustVerifier(t *testing.T, secrets ...string) *Verifier {
	t.Helper()
	v, err := NewVerifier(secrets, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestSignAndVerify(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	body := []byte(`{"executionId":"x1"}`)
	h := mustSigner(t, secretNew).Sign(now, body)
	if !strings.HasPrefix(h, "t=1700000000,v1=") || strings.Count(h, "v1=") != 1 {
		t.Fatalf("header %q", h)
	}
	v := mustVerifier(t, secretNew)
	if err := v.Verify(h, body, now.Add(30*time.Second)); err != nil {
		t.Fatalf("good signature refused: %v", err)
	}
	cases := []struct {
		name   string
		header string
		body   []byte
		now    time.Time
		want   error
	}{
		{"tampered body", h, []byte(`{"executionId":"x2"}`), now, ErrMismatch},
		{"stale", h, body, now.Add(2 * time.Minute), ErrStale},
		{"from the future", h, body, now.Add(-2 * time.Minute), ErrStale},
		{"wrong secret", mustSigner(t, secretBad).Sign(now, body), body, now, ErrMismatch},
		{"tampered timestamp", strings.Replace(h, "t=1700000000", "t=1700000001", 1), body, now, ErrMismatch},
		{"missing", "", body, now, ErrMalformed},
		{"no v1", "t=1700000000", body, now, ErrMalformed},
		{"bad hex", "t=1700000000,v1=zz", body, now, ErrMalformed},
		{"garbage", "hello", body, now, ErrMalformed},
	}
	for _, c := range cases {
		if err := v.Verify(c.header, c.body, c.now); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
}

// TestRotation: during a rotation the sender signs with both secrets, so a receiver holding either
// accepts; a sender that has dropped the old secret is refused by a receiver that only holds it.
func TestRotation(t *testing.T) {
	now := time.Now()
	body := []byte("b")
	both := mustSigner(t, secretNew, secretOld).Sign(now, body)
	if strings.Count(both, "v1=") != 2 {
		t.Fatalf("rotation header %q", both)
	}
	for _, recv := range [][]string{{secretOld}, {secretNew}, {secretNew, secretOld}} {
		if err := mustVerifier(t, recv...).Verify(both, body, now); err != nil {
			t.Errorf("receiver %v refused a rotation signature: %v", recv, err)
		}
	}
	onlyNew := mustSigner(t, secretNew).Sign(now, body)
	if err := mustVerifier(t, secretOld).Verify(onlyNew, body, now); !errors.Is(err, ErrMismatch) {
		t.Errorf("old-only receiver accepted a new-only signature: %v", err)
	}
	if err := mustVerifier(t, secretNew, secretOld).Verify(onlyNew, body, now); err != nil {
		t.Errorf("receiver with both refused a new-only signature: %v", err)
	}
}

func TestSecretsChecked(t *testing.T) {
	for _, secrets := range [][]string{nil, {"short"}, {secretNew, secretOld, secretBad}} {
		if _, err := NewSigner(secrets); err == nil {
			t.Errorf("NewSigner(%v) accepted", secrets)
		}
		if _, err := NewVerifier(secrets, 0); err == nil {
			t.Errorf("NewVerifier(%v) accepted", secrets)
		}
	}
}
