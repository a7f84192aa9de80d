package state_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cvpn/cvpn/state"
)

func TestSealerCreatesKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "seal.key")
	s, err := state.LoadOrCreateSealer(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != state.SealKeySize {
		t.Fatalf("key file mode %04o size %d, want 0600 and %d", fi.Mode().Perm(), fi.Size(), state.SealKeySize)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want only the key (temporary file left?)", len(entries))
	}
	sealed := s.Seal([]byte("secret"), []byte("alice"))
	// A second load reads the same key.
	s2, err := state.LoadOrCreateSealer(path)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := s2.Open(sealed, []byte("alice"))
	if err != nil || string(pt) != "secret" {
		t.Fatalf("Open with reloaded key = %q, %v", pt, err)
	}
}

func TestSealerConcurrentCreateAgree(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seal.key")
	const n = 8
	sealers := make([]*state.Sealer, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := state.LoadOrCreateSealer(path)
			if err != nil {
				t.Error(err)
				return
			}
			sealers[i] = s
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	sealed := sealers[0].Seal([]byte("x"), nil)
	for i, s := range sealers {
		if _, err := s.Open(sealed, nil); err != nil {
			t.Errorf("sealer %d has another key: %v", i, err)
		}
	}
}

func TestSealerRefusesBadKeyFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := bytes.Repeat([]byte{7}, state.SealKeySize)
	cases := []struct {
		name, path, want string
	}{
		{"group readable", write("g", key, 0o640), "must not be accessible to group or others"},
		{"world readable", write("w", key, 0o604), "must not be accessible to group or others"},
		{"short", write("s", key[:16], 0o600), "is 16 bytes, want 32"},
		{"long", write("l", append(key, '\n'), 0o600), "is 33 bytes, want 32"},
		{"empty", write("e", nil, 0o600), "is 0 bytes, want 32"},
	}
	link := filepath.Join(dir, "link")
	os.Symlink(filepath.Join(dir, "g"), link)
	cases = append(cases, struct{ name, path, want string }{"symlink", link, "seal key file"})
	os.Mkdir(filepath.Join(dir, "d"), 0o700)
	cases = append(cases, struct{ name, path, want string }{"directory", filepath.Join(dir, "d"), "not a regular file"})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := state.LoadOrCreateSealer(c.path)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %q, want it to contain %q", err, c.want)
			}
		})
	}
	// The refused files are left alone.
	if data, _ := os.ReadFile(filepath.Join(dir, "s")); len(data) != 16 {
		t.Fatal("a refused key file was rewritten")
	}
}

func TestSealOpen(t *testing.T) {
	s, err := state.NewSealer(bytes.Repeat([]byte{1}, state.SealKeySize))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := state.NewSealer(bytes.Repeat([]byte{2}, state.SealKeySize))
	pt := []byte("JBSWY3DPEHPK3PXP")
	a := s.Seal(pt, []byte("alice"))
	b := s.Seal(pt, []byte("alice"))
	if bytes.Equal(a, b) {
		t.Fatal("two seals of the same value are equal: nonce reused")
	}
	if bytes.Contains(a, pt) {
		t.Fatal("sealed value contains the plaintext")
	}
	if got, err := s.Open(a, []byte("alice")); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	if _, err := s.Open(a, []byte("bob")); !errors.Is(err, state.ErrUnseal) {
		t.Fatalf("Open with other additional data: err = %v, want ErrUnseal", err)
	}
	if _, err := other.Open(a, []byte("alice")); !errors.Is(err, state.ErrUnseal) {
		t.Fatalf("Open with other key: err = %v, want ErrUnseal", err)
	}
	for i := range a {
		c := bytes.Clone(a)
		c[i] ^= 0x80
		if _, err := s.Open(c, []byte("alice")); !errors.Is(err, state.ErrUnseal) {
			t.Fatalf("Open with byte %d flipped: err = %v", i, err)
		}
	}
	for n := range 40 {
		if _, err := s.Open(a[:n], []byte("alice")); !errors.Is(err, state.ErrUnseal) {
			t.Fatalf("Open of %d bytes: err = %v", n, err)
		}
	}
	if got, err := s.Open(s.Seal(nil, nil), nil); err != nil || len(got) != 0 {
		t.Fatalf("empty plaintext round trip = %q, %v", got, err)
	}
	if _, err := state.NewSealer(make([]byte, 16)); err == nil {
		t.Fatal("NewSealer accepted a 16-byte key")
	}
}
