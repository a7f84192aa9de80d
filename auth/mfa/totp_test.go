package mfa

import (
	"bytes"
	"context"
	"encoding/base32"
	"errors"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/hotp"

	"github.com/cvpn/cvpn/state"
)

// clock is an injected clock tests move by hand.
type clock struct{ t atomic.Int64 }

func (c *clock) now() time.Time      { return time.Unix(c.t.Load(), 0) }
func (c *clock) set(unix int64)      { c.t.Store(unix) }
func newClock(unix int64) *clock     { c := &clock{}; c.set(unix); return c }
func (c *clock) add(d time.Duration) { c.t.Add(int64(d / time.Second)) }

func newTOTP(t *testing.T, c *clock) *TOTP {
	t.Helper()
	s, err := state.NewSealer(bytes.Repeat([]byte{5}, state.SealKeySize))
	if err != nil {
		t.Fatal(err)
	}
	return &TOTP{Store: state.NewMemory(), Sealer: s, Now: c.now}
}

// rfcSecret is the SHA-1 seed of RFC 6238 Appendix B.
var rfcSecret = base32.StdEncoding.EncodeToString([]byte("12345678901234567890"))

// codeAt is what an authenticator app shows for secret at step.
func codeAt(t *testing.T, secret string, step uint64) string {
	t.Helper()
	c, err := hotp.GenerateCodeCustom(secret, step, hotp.ValidateOpts{Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRFC6238Vectors checks Verify against RFC 6238 Appendix B (SHA-1). The
// RFC's codes have 8 digits; a 6-digit code is the same value mod 10^6, its
// last 6 digits (RFC 4226 §5.3).
func TestRFC6238Vectors(t *testing.T) {
	vectors := []struct {
		unix int64
		rfc  string
	}{
		{59, "94287082"},
		{1111111109, "07081804"},
		{1111111111, "14050471"},
		{1234567890, "89005924"},
		{2000000000, "69279037"},
		{20000000000, "65353130"},
	}
	ctx := context.Background()
	for _, v := range vectors {
		c := newClock(v.unix)
		m := newTOTP(t, c)
		if err := m.storeSecret(ctx, "alice", rfcSecret); err != nil {
			t.Fatal(err)
		}
		code := v.rfc[2:]
		if got := codeAt(t, rfcSecret, uint64(v.unix)/Period); got != code {
			t.Fatalf("T=%d: library computes %s, RFC says %s", v.unix, got, code)
		}
		if err := m.Verify(ctx, "alice", code); err != nil {
			t.Errorf("T=%d code %s: %v", v.unix, code, err)
		}
		if err := m.Verify(ctx, "alice", code); !errors.Is(err, ErrReplayed) {
			t.Errorf("T=%d code %s a second time: err = %v, want ErrReplayed", v.unix, code, err)
		}
	}
}

func TestSkewWindow(t *testing.T) {
	ctx := context.Background()
	const base = 1_800_000_000 // a step boundary plus 0..29 s below
	step := uint64(base) / Period
	for _, c := range []struct {
		name  string
		step  uint64
		valid bool
	}{
		{"two steps behind", step - 2, false},
		{"one step behind", step - 1, true},
		{"current", step, true},
		{"one step ahead", step + 1, true},
		{"two steps ahead", step + 2, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := newTOTP(t, newClock(base+7))
			m.storeSecret(ctx, "alice", rfcSecret)
			err := m.Verify(ctx, "alice", codeAt(t, rfcSecret, c.step))
			if c.valid && err != nil {
				t.Fatalf("err = %v, want accepted", err)
			}
			if !c.valid && !errors.Is(err, ErrInvalidCode) {
				t.Fatalf("err = %v, want ErrInvalidCode", err)
			}
		})
	}
}

func TestReplay(t *testing.T) {
	ctx := context.Background()
	c := newClock(1_800_000_000)
	m := newTOTP(t, c)
	m.storeSecret(ctx, "alice", rfcSecret)
	m.storeSecret(ctx, "bob", rfcSecret) // same secret, separate used steps
	step := uint64(1_800_000_000) / Period

	if err := m.Verify(ctx, "alice", codeAt(t, rfcSecret, step)); err != nil {
		t.Fatal(err)
	}
	// Same code later in the same step, and at the next step while it is
	// still inside the skew window.
	c.add(10 * time.Second)
	if err := m.Verify(ctx, "alice", codeAt(t, rfcSecret, step)); !errors.Is(err, ErrReplayed) {
		t.Fatalf("replay in the same step: err = %v", err)
	}
	c.add(Period * time.Second)
	if err := m.Verify(ctx, "alice", codeAt(t, rfcSecret, step)); !errors.Is(err, ErrReplayed) {
		t.Fatalf("replay from the previous step: err = %v", err)
	}
	// An older code inside the window is refused once a newer one was used.
	c.set(1_800_000_000)
	if err := m.Verify(ctx, "alice", codeAt(t, rfcSecret, step-1)); !errors.Is(err, ErrReplayed) {
		t.Fatalf("older code after a newer one: err = %v", err)
	}
	// Another user's use of the same code is independent.
	if err := m.Verify(ctx, "bob", codeAt(t, rfcSecret, step)); err != nil {
		t.Fatalf("bob: %v", err)
	}
	// A code of a later step is accepted, once.
	if err := m.Verify(ctx, "alice", codeAt(t, rfcSecret, step+1)); err != nil {
		t.Fatalf("next step's code: %v", err)
	}
	if err := m.Verify(ctx, "alice", codeAt(t, rfcSecret, step+1)); !errors.Is(err, ErrReplayed) {
		t.Fatalf("next step's code twice: err = %v", err)
	}
	// A wrong code is invalid, not replayed, and does not move the step.
	if err := m.Verify(ctx, "alice", codeAt(t, rfcSecret, step+5)); !errors.Is(err, ErrInvalidCode) {
		t.Fatalf("wrong code: err = %v", err)
	}
}

// TestConcurrentSameCode races logins with one code: exactly one succeeds.
func TestConcurrentSameCode(t *testing.T) {
	ctx := context.Background()
	for _, store := range []struct {
		name string
		open func(t *testing.T) state.Store
	}{
		{"memory", func(*testing.T) state.Store { return state.NewMemory() }},
		{"bolt", func(t *testing.T) state.Store {
			s, err := state.OpenBolt(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}},
	} {
		t.Run(store.name, func(t *testing.T) {
			m := newTOTP(t, newClock(1_800_000_000))
			m.Store = store.open(t)
			m.storeSecret(ctx, "alice", rfcSecret)
			code := codeAt(t, rfcSecret, uint64(1_800_000_000)/Period)
			const n = 16
			var ok, replayed atomic.Int32
			var wg sync.WaitGroup
			start := make(chan struct{})
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					switch err := m.Verify(ctx, "alice", code); {
					case err == nil:
						ok.Add(1)
					case errors.Is(err, ErrReplayed):
						replayed.Add(1)
					default:
						t.Error(err)
					}
				}()
			}
			close(start)
			wg.Wait()
			if ok.Load() != 1 || replayed.Load() != n-1 {
				t.Fatalf("%d accepted, %d replayed; want 1 and %d", ok.Load(), replayed.Load(), n-1)
			}
		})
	}
}

func TestEnroll(t *testing.T) {
	ctx := context.Background()
	c := newClock(1_800_000_000)
	m := newTOTP(t, c)
	if ok, err := m.Enrolled(ctx, "alice"); err != nil || ok {
		t.Fatalf("Enrolled before Enroll = %v, %v", ok, err)
	}
	if err := m.Verify(ctx, "alice", "123456"); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("Verify before Enroll: err = %v, want ErrNotEnrolled", err)
	}
	uri, err := m.Enroll(ctx, "alice@example.com")
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	if u.Scheme != "otpauth" || u.Host != "totp" || u.Path != "/cvpn:alice@example.com" ||
		q.Get("issuer") != "cvpn" || q.Get("digits") != "6" || q.Get("period") != "30" || q.Get("algorithm") != "SHA1" {
		t.Fatalf("URI %q lacks the expected label or parameters", uri)
	}
	secret := q.Get("secret")
	raw, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(secret)
	if err != nil || len(raw) != SecretSize {
		t.Fatalf("secret %q: %d bytes, %v; want %d", secret, len(raw), err, SecretSize)
	}
	// Sealed at rest.
	stored, err := m.Store.Get(ctx, SecretBucket, "alice@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(stored, []byte(secret)) || bytes.Contains(stored, raw) {
		t.Fatal("secret stored in the clear")
	}
	if ok, err := m.Enrolled(ctx, "alice@example.com"); err != nil || !ok {
		t.Fatalf("Enrolled after Enroll = %v, %v", ok, err)
	}
	// What an app computes from the URI verifies.
	step := uint64(1_800_000_000) / Period
	if err := m.Verify(ctx, "alice@example.com", codeAt(t, secret, step)); err != nil {
		t.Fatalf("code from the URI's secret: %v", err)
	}
	// Re-enrolment replaces the secret: the old one's codes stop working.
	uri2, err := m.Enroll(ctx, "alice@example.com")
	if err != nil {
		t.Fatal(err)
	}
	u2, _ := url.Parse(uri2)
	secret2 := u2.Query().Get("secret")
	if secret2 == secret {
		t.Fatal("re-enrolment kept the secret")
	}
	c.add(Period * time.Second)
	if codeAt(t, secret, step+1) != codeAt(t, secret2, step+1) {
		if err := m.Verify(ctx, "alice@example.com", codeAt(t, secret, step+1)); !errors.Is(err, ErrInvalidCode) {
			t.Fatalf("old secret's code after re-enrolment: err = %v", err)
		}
	}
	if err := m.Verify(ctx, "alice@example.com", codeAt(t, secret2, step+1)); err != nil {
		t.Fatalf("new secret's code: %v", err)
	}
	// Reset.
	if err := m.Reset(ctx, "alice@example.com"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := m.Enrolled(ctx, "alice@example.com"); ok {
		t.Fatal("Enrolled after Reset")
	}
	if err := m.Verify(ctx, "alice@example.com", codeAt(t, secret2, step+2)); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("Verify after Reset: err = %v", err)
	}
	if err := m.Reset(ctx, "nobody"); err != nil {
		t.Fatalf("Reset of a user never enrolled: %v", err)
	}
}

func TestEnrollIssuerAndRand(t *testing.T) {
	m := newTOTP(t, newClock(0))
	m.Issuer = "Example VPN"
	m.Rand = bytes.NewReader(bytes.Repeat([]byte{0xAB}, SecretSize))
	uri, err := m.Enroll(context.Background(), "bob")
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(uri)
	want := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(bytes.Repeat([]byte{0xAB}, SecretSize))
	if u.Path != "/Example VPN:bob" || u.Query().Get("issuer") != "Example VPN" || u.Query().Get("secret") != want {
		t.Fatalf("URI %q: want issuer Example VPN and the injected secret", uri)
	}
	// A failing random source fails the enrolment and stores nothing.
	m.Rand = bytes.NewReader(nil)
	if _, err := m.Enroll(context.Background(), "carol"); err == nil {
		t.Fatal("Enroll with an exhausted random source succeeded")
	}
	if ok, _ := m.Enrolled(context.Background(), "carol"); ok {
		t.Fatal("failed enrolment stored a secret")
	}
}

// TestSecretBoundToUser moves a sealed secret to another user's key: it must
// not open there.
func TestSecretBoundToUser(t *testing.T) {
	ctx := context.Background()
	m := newTOTP(t, newClock(1_800_000_000))
	m.storeSecret(ctx, "alice", rfcSecret)
	sealed, _ := m.Store.Get(ctx, SecretBucket, "alice")
	m.Store.Put(ctx, SecretBucket, "mallory", sealed)
	err := m.Verify(ctx, "mallory", codeAt(t, rfcSecret, uint64(1_800_000_000)/Period))
	if !errors.Is(err, state.ErrUnseal) {
		t.Fatalf("moved secret: err = %v, want ErrUnseal", err)
	}
}

func TestMalformedInput(t *testing.T) {
	ctx := context.Background()
	m := newTOTP(t, newClock(1_800_000_000))
	m.storeSecret(ctx, "alice", rfcSecret)
	good := codeAt(t, rfcSecret, uint64(1_800_000_000)/Period)
	for _, code := range []string{"", "12345", "1234567", "12345a", " " + good[1:], good + "\n", "\uff11\uff12\uff13\uff14\uff15\uff16", strings.Repeat("1", 1<<16)} {
		if err := m.Verify(ctx, "alice", code); !errors.Is(err, ErrInvalidCode) {
			t.Errorf("code %.20q: err = %v, want ErrInvalidCode", code, err)
		}
	}
	for _, user := range []string{"", "a\x00b", "a\nb", "\xff", strings.Repeat("u", MaxUser+1)} {
		if err := m.Verify(ctx, user, good); err == nil || errors.Is(err, ErrNotEnrolled) {
			t.Errorf("user %.20q: err = %v, want a validation error", user, err)
		}
		if _, err := m.Enroll(ctx, user); err == nil {
			t.Errorf("Enroll(%.20q) accepted", user)
		}
	}
	// The good code still works: none of the above spent it.
	if err := m.Verify(ctx, "alice", good); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptStep(t *testing.T) {
	ctx := context.Background()
	m := newTOTP(t, newClock(1_800_000_000))
	m.storeSecret(ctx, "alice", rfcSecret)
	m.Store.Put(ctx, StepBucket, "alice", []byte{1, 2, 3})
	err := m.Verify(ctx, "alice", codeAt(t, rfcSecret, uint64(1_800_000_000)/Period))
	if err == nil || errors.Is(err, ErrReplayed) || !strings.Contains(err.Error(), "want 8") {
		t.Fatalf("corrupt step record: err = %v", err)
	}
}

func TestNearEpoch(t *testing.T) {
	// Step 0 has no step before it; the window must not wrap around.
	ctx := context.Background()
	m := newTOTP(t, newClock(5))
	m.storeSecret(ctx, "alice", rfcSecret)
	if err := m.Verify(ctx, "alice", codeAt(t, rfcSecret, 0)); err != nil {
		t.Fatalf("step 0: %v", err)
	}
	if err := m.Verify(ctx, "alice", codeAt(t, rfcSecret, 1)); err != nil {
		t.Fatalf("step 1 at step 0: %v", err)
	}
}

func TestWriteQR(t *testing.T) {
	var b bytes.Buffer
	WriteQR(&b, "otpauth://totp/cvpn:alice?secret=JBSWY3DPEHPK3PXP&issuer=cvpn")
	out := b.String()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) < 15 || !strings.ContainsAny(out, "\u2580\u2584\u2588") {
		t.Fatalf("no half-block QR code in %d lines:\n%s", len(lines), out)
	}
	width := len([]rune(lines[0]))
	for i, l := range lines {
		if len([]rune(l)) != width {
			t.Fatalf("line %d is %d cells wide, line 0 %d", i, len([]rune(l)), width)
		}
	}
	// Half blocks: a row of characters holds two rows of modules, so the
	// code is about twice as wide as it is tall.
	if width < 2*len(lines)-4 {
		t.Fatalf("%dx%d: not half blocks", width, len(lines))
	}
	b.Reset()
	WriteQR(&b, strings.Repeat("x", 5000))
	if !strings.HasPrefix(b.String(), "(no QR code:") {
		t.Fatalf("oversized URI wrote %.40q", b.String())
	}
}
