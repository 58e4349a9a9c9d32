// Package signature is the wire contract between kawase's relay and the external system it delivers
// executed trades to: the header names of a delivery and the HMAC-SHA256 scheme that signs it. Both the
// relay (signer) and the external-system simulator (verifier) use it, so the scheme is written once.
//
// A delivery is an HTTP POST whose body is the execution's JSON, with these headers:
//
//	Idempotency-Key:    the execution id; the receiver dedups on it (a retry carries the same key)
//	Kawase-Account-Id:  the account the execution belongs to
//	Kawase-Account-Seq: the account's execution sequence number, 1, 2, 3, … without gaps
//	Kawase-Signature:   t=<unix seconds>,v1=<hex>[,v1=<hex>]
//
// Each v1 value is hex(HMAC-SHA256(secret, "<t>.<body>")) for one of the sender's active secrets. The
// signed string binds the timestamp to the exact body bytes, so neither can be changed or replayed
// later without the receiver noticing. A receiver accepts a delivery when the timestamp is within its
// tolerance of its own clock (DefaultToleranceSec) and at least one v1 value matches one of its
// secrets.
//
// Rotation uses two active secrets: the sender signs with every active secret (newest first, at most
// SecretsMax), so a receiver holding either the new or the old secret keeps accepting while it
// switches over; once it holds only the new one, the sender drops the old one.
package signature

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Header names of a delivery to the external system.
const (
	HeaderSignature      = "Kawase-Signature"
	HeaderIdempotencyKey = "Idempotency-Key"
	HeaderAccountID      = "Kawase-Account-Id"
	HeaderAccountSeq     = "Kawase-Account-Seq"
)

// Limits of the scheme.
const (
	// SecretsMax is how many secrets may be active at once: the current one and, during a rotation,
	// the previous one.
	SecretsMax = 2
	// SecretBytesMin refuses secrets too short to be keys (and placeholders like REPLACE_ME).
	SecretBytesMin = 16
	// DefaultToleranceSec is how far a signature's timestamp may be from the receiver's clock.
	DefaultToleranceSec = 300
	// headerBytesMax bounds the signature header a verifier parses.
	headerBytesMax = 1024
	// signaturesMax bounds the v1 values a verifier tries.
	signaturesMax = 4
)

// Errors of verification; all of them mean the delivery must be refused (401).
var (
	// ErrMalformed marks a missing or unparsable signature header.
	ErrMalformed = errors.New("malformed signature header")
	// ErrStale marks a timestamp outside the tolerance (an old delivery replayed, or a skewed clock).
	ErrStale = errors.New("signature timestamp outside tolerance")
	// ErrMismatch marks a signature that matches none of the receiver's secrets (tampered body or
	// wrong secret).
	ErrMismatch = errors.New("signature does not match")
)

// checkSecrets validates a list of active secrets, newest first.
func checkSecrets(secrets []string) ([][]byte, error) {
	if len(secrets) == 0 || len(secrets) > SecretsMax {
		return nil, fmt.Errorf("signature: want 1 to %d secrets, got %d", SecretsMax, len(secrets))
	}
	out := make([][]byte, len(secrets))
	for i, s := range secrets {
		if len(s) < SecretBytesMin {
			return nil, fmt.Errorf("signature: secret %d is shorter than %d bytes", i+1, SecretBytesMin)
		}
		out[i] = []byte(s)
	}
	return out, nil
}

func mac(secret []byte, t int64, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write(strconv.AppendInt(nil, t, 10))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Signer signs deliveries with every active secret.
type Signer struct {
	secrets [][]byte
}

// NewSigner returns a Signer for the active secrets, newest first (1 to SecretsMax of them).
func NewSigner(secrets []string) (*Signer, error) {
	s, err := checkSecrets(secrets)
	if err != nil {
		return nil, err
	}
	return &Signer{secrets: s}, nil
}

// Sign returns the Kawase-Signature header value for body sent at t.
func (s *Signer) Sign(t time.Time, body []byte) string {
	unix := t.Unix()
	var b strings.Builder
	b.WriteString("t=")
	b.WriteString(strconv.FormatInt(unix, 10))
	for _, secret := range s.secrets {
		b.WriteString(",v1=")
		b.WriteString(hex.EncodeToString(mac(secret, unix, body)))
	}
	return b.String()
}

// Verifier checks deliveries against the receiver's active secrets.
type Verifier struct {
	secrets   [][]byte
	tolerance time.Duration
}

// NewVerifier returns a Verifier for the active secrets (1 to SecretsMax); tolerance zero means
// DefaultToleranceSec.
func NewVerifier(secrets []string, tolerance time.Duration) (*Verifier, error) {
	s, err := checkSecrets(secrets)
	if err != nil {
		return nil, err
	}
	if tolerance <= 0 {
		tolerance = DefaultToleranceSec * time.Second
	}
	return &Verifier{secrets: s, tolerance: tolerance}, nil
}

// Verify checks header (the Kawase-Signature value) against body at the receiver's time now. Every
// error wraps ErrMalformed, ErrStale or ErrMismatch.
func (v *Verifier) Verify(header string, body []byte, now time.Time) error {
	t, sigs, err := parse(header)
	if err != nil {
		return err
	}
	skew := now.Sub(time.Unix(t, 0))
	if skew > v.tolerance || skew < -v.tolerance {
		return fmt.Errorf("%w: timestamp %d is %s from now", ErrStale, t, skew.Round(time.Second))
	}
	for _, secret := range v.secrets {
		want := mac(secret, t, body)
		for _, sig := range sigs {
			if hmac.Equal(sig, want) {
				return nil
			}
		}
	}
	return ErrMismatch
}

func parse(header string) (int64, [][]byte, error) {
	if header == "" {
		return 0, nil, fmt.Errorf("%w: missing", ErrMalformed)
	}
	if len(header) > headerBytesMax {
		return 0, nil, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, headerBytesMax)
	}
	var (
		t     int64
		haveT bool
		sigs  [][]byte
	)
	for _, part := range strings.Split(header, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return 0, nil, fmt.Errorf("%w: %q is not key=value", ErrMalformed, part)
		}
		switch k {
		case "t":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || haveT {
				return 0, nil, fmt.Errorf("%w: bad or repeated timestamp", ErrMalformed)
			}
			t, haveT = n, true
		case "v1":
			sig, err := hex.DecodeString(val)
			if err != nil || len(sig) != sha256.Size {
				return 0, nil, fmt.Errorf("%w: v1 is not a hex SHA-256 MAC", ErrMalformed)
			}
			if len(sigs) == signaturesMax {
				return 0, nil, fmt.Errorf("%w: more than %d signatures", ErrMalformed, signaturesMax)
			}
			sigs = append(sigs, sig)
		}
		// Unknown keys (future schemes such as v2) are ignored, so senders can add them first.
	}
	if !haveT || len(sigs) == 0 {
		return 0, nil, fmt.Errorf("%w: needs t and at least one v1", ErrMalformed)
	}
	return t, sigs, nil
}
