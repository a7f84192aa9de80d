// Package mfa is cvpn's second factor: TOTP codes (RFC 6238; SHA-1, 6 digits,
// 30-second steps, one step of clock skew either way), the secrets sealed in
// the state store, and the rule that a code is never accepted twice.
//
// It owns enrolment, reset and code verification. It does not decide when a
// code is asked for, nor how (static or dynamic challenge): that is the
// admission pipeline's. It does not rate-limit guesses either; the caller
// must, since a 6-digit code with a 3-step window falls to about 3 in a
// million guesses.
package mfa

import (
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/hotp"
	"github.com/pquerna/otp/totp"

	"github.com/cvpn/cvpn/state"
)

// The state buckets this package keeps, keyed by user name.
const (
	// SecretBucket holds each user's TOTP secret (base32), sealed with the
	// user name as additional data so a secret cannot be moved to another user.
	SecretBucket = "mfa-totp"
	// StepBucket holds each user's last accepted time step, 8 bytes big-endian.
	StepBucket = "mfa-totp-step"
)

// The TOTP parameters: those every authenticator app assumes when the
// otpauth URI says nothing else (and the URI says these).
const (
	Period     = 30 // seconds per step
	Digits     = 6
	Skew       = 1  // steps accepted either side of the current one
	SecretSize = 20 // bytes, the HMAC-SHA1 block-friendly size RFC 4226 recommends
	// DefaultIssuer names the service in authenticator apps when Issuer is empty.
	DefaultIssuer = "cvpn"
	// MaxUser bounds the user names this package accepts.
	MaxUser = 256
)

// TOTP enrols users and verifies their codes. Its fields are set once before
// use; it is then safe for concurrent use.
type TOTP struct {
	Store  state.Store
	Sealer *state.Sealer
	Issuer string           // shown by authenticator apps; DefaultIssuer if empty
	Now    func() time.Time // time.Now if nil
	Rand   io.Reader        // source of new secrets; crypto/rand if nil
}

func (t *TOTP) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

func (t *TOTP) issuer() string {
	if t.Issuer != "" {
		return t.Issuer
	}
	return DefaultIssuer
}

func checkUser(user string) error {
	switch {
	case user == "":
		return errors.New("mfa: empty user name")
	case len(user) > MaxUser:
		return fmt.Errorf("mfa: user name is %d bytes, more than %d", len(user), MaxUser)
	case !utf8.ValidString(user):
		return errors.New("mfa: user name is not valid UTF-8")
	}
	for _, r := range user {
		if unicode.IsControl(r) {
			return fmt.Errorf("mfa: user name contains control character %U", r)
		}
	}
	return nil
}

// Enroll gives user a new random secret, replacing any previous one, and
// returns the otpauth:// URI to load into an authenticator app (print it or
// show it with WriteQR). The URI holds the secret: show it only to the user.
func (t *TOTP) Enroll(ctx context.Context, user string) (uri string, err error) {
	if err := checkUser(user); err != nil {
		return "", err
	}
	key, err := totp.Generate(totp.GenerateOpts{
		Issuer:      t.issuer(),
		AccountName: user,
		Period:      Period,
		SecretSize:  SecretSize,
		Digits:      otp.DigitsSix,
		Algorithm:   otp.AlgorithmSHA1,
		Rand:        t.Rand,
	})
	if err != nil {
		return "", fmt.Errorf("mfa: generate secret for %q: %w", user, err)
	}
	if err := t.storeSecret(ctx, user, key.Secret()); err != nil {
		return "", err
	}
	return key.URL(), nil
}

// storeSecret seals and stores a base32 secret for user.
func (t *TOTP) storeSecret(ctx context.Context, user, secret string) error {
	sealed := t.Sealer.Seal([]byte(secret), []byte(user))
	if err := t.Store.Put(ctx, SecretBucket, user, sealed); err != nil {
		return fmt.Errorf("mfa: store secret of %q: %w", user, err)
	}
	return nil
}

// Reset removes user's secret, so the user is no longer enrolled. It is not
// an error if the user was not enrolled.
func (t *TOTP) Reset(ctx context.Context, user string) error {
	if err := checkUser(user); err != nil {
		return err
	}
	if err := t.Store.Delete(ctx, SecretBucket, user); err != nil {
		return fmt.Errorf("mfa: reset %q: %w", user, err)
	}
	// The last accepted step is kept: it only ever grows, and keeping it
	// means a code used before a reset stays used after a re-enrolment.
	return nil
}

// Enrolled reports whether user has a secret.
func (t *TOTP) Enrolled(ctx context.Context, user string) (bool, error) {
	if err := checkUser(user); err != nil {
		return false, err
	}
	_, err := t.Store.Get(ctx, SecretBucket, user)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, state.ErrNotFound):
		return false, nil
	default:
		return false, fmt.Errorf("mfa: read secret of %q: %w", user, err)
	}
}

// Verify checks code for user at the current time. It returns nil at most
// once per user and time step: a code is accepted only for a step later than
// the last one accepted, and recording that step is atomic (Store.Update), so
// of two logins racing with the same code exactly one wins. Errors:
// ErrNotEnrolled, ErrInvalidCode (wrong, malformed, or outside the skew
// window), ErrReplayed (right code, already used or older than one used),
// or a wrapped store or unseal error.
func (t *TOTP) Verify(ctx context.Context, user, code string) error {
	if err := checkUser(user); err != nil {
		return err
	}
	if !wellFormed(code) {
		return ErrInvalidCode
	}
	sealed, err := t.Store.Get(ctx, SecretBucket, user)
	if errors.Is(err, state.ErrNotFound) {
		return ErrNotEnrolled
	}
	if err != nil {
		return fmt.Errorf("mfa: read secret of %q: %w", user, err)
	}
	secret, err := t.Sealer.Open(sealed, []byte(user))
	if err != nil {
		return fmt.Errorf("mfa: secret of %q: %w", user, err)
	}

	now := t.now().Unix()
	if now < 0 {
		return fmt.Errorf("mfa: clock reads %d, before 1970", now)
	}
	current := uint64(now) / Period
	// Compare against every step of the window, matched or not, so timing
	// does not tell which step a code belongs to.
	first := uint64(0)
	if current >= Skew {
		first = current - Skew
	}
	var matched []uint64
	for s := first; s <= current+Skew; s++ {
		want, err := hotp.GenerateCodeCustom(string(secret), s, hotp.ValidateOpts{Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
		if err != nil {
			return fmt.Errorf("mfa: secret of %q: %w", user, err)
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 {
			matched = append(matched, s)
		}
	}
	if len(matched) == 0 {
		return ErrInvalidCode
	}

	err = t.Store.Update(ctx, StepBucket, user, func(old []byte, ok bool) ([]byte, error) {
		var last uint64
		if ok {
			if len(old) != 8 {
				return nil, fmt.Errorf("mfa: last step of %q is %d bytes, want 8", user, len(old))
			}
			last = binary.BigEndian.Uint64(old)
		}
		// matched is ascending: take the earliest step not yet used, which
		// leaves later steps of the window for later codes.
		for _, s := range matched {
			if !ok || s > last {
				return binary.BigEndian.AppendUint64(nil, s), nil
			}
		}
		return nil, ErrReplayed
	})
	if errors.Is(err, ErrReplayed) {
		return ErrReplayed
	}
	if err != nil {
		return fmt.Errorf("mfa: record code of %q: %w", user, err)
	}
	return nil
}

// wellFormed reports whether code is Digits ASCII digits.
func wellFormed(code string) bool {
	if len(code) != Digits {
		return false
	}
	for i := 0; i < len(code); i++ {
		if code[i] < '0' || code[i] > '9' {
			return false
		}
	}
	return true
}
