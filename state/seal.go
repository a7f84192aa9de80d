package state

import (
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/crypto/chacha20poly1305"
)

// SealKeySize is the size of the key in a seal key file: raw bytes, no encoding.
const SealKeySize = chacha20poly1305.KeySize

// Sealer encrypts values at rest with XChaCha20-Poly1305 under a key kept in
// a file only the service can read. A sealed value is laid out as
//
//	+---------------------+------------------------------+
//	| nonce (24 bytes)    | ciphertext || tag (16 bytes) |
//	+---------------------+------------------------------+
//
// The random 192-bit nonce makes collisions negligible without any counter
// state. The additional data binds a sealed value to its record (for example
// the user name of an MFA secret), so it cannot be moved to another record.
// A Sealer is safe for concurrent use.
type Sealer struct {
	aead cipher.AEAD
}

// NewSealer returns a Sealer using key, which must be SealKeySize bytes.
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) != SealKeySize {
		return nil, fmt.Errorf("state: seal key is %d bytes, want %d", len(key), SealKeySize)
	}
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, fmt.Errorf("state: seal key: %w", err)
	}
	return &Sealer{aead: aead}, nil
}

// LoadOrCreateSealer reads the key file at path, creating it on first use
// with a fresh random key, mode 0600. It refuses a key file that is not a
// regular file, is readable or writable by group or others, or is not exactly
// SealKeySize bytes. Two processes creating it at once end up with the same
// key: the file appears atomically, with its content, or not at all.
func LoadOrCreateSealer(path string) (*Sealer, error) {
	key, err := readSealKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := createSealKey(path); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		key, err = readSealKey(path)
	}
	if err != nil {
		return nil, err
	}
	return NewSealer(key)
}

// readSealKey reads and checks an existing key file. It does not follow a
// symbolic link, so the permissions checked are those of the key itself.
func readSealKey(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("state: seal key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("state: seal key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("state: seal key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("state: seal key file %s has mode %04o: it must not be accessible to group or others (chmod 600 it)", path, perm)
	}
	if fi.Size() != SealKeySize {
		return nil, fmt.Errorf("state: seal key file %s is %d bytes, want %d (not a cvpn seal key, or damaged)", path, fi.Size(), SealKeySize)
	}
	key := make([]byte, SealKeySize)
	if _, err := io.ReadFull(f, key); err != nil {
		return nil, fmt.Errorf("state: read seal key file %s: %w", path, err)
	}
	return key, nil
}

// createSealKey writes a new random key to a temporary file, syncs it, and
// links it into place; the link fails with fs.ErrExist if another process won
// the race, like O_EXCL, but never leaves a partial key file behind.
func createSealKey(path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state: create seal key directory: %w", err)
	}
	key := make([]byte, SealKeySize)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("state: generate seal key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".seal-key-*")
	if err != nil {
		return fmt.Errorf("state: create seal key file: %w", err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName)
	// CreateTemp makes the file 0600 with O_EXCL; make the mode explicit
	// regardless of umask.
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.Write(key)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("state: write seal key file: %w", err)
	}
	if err := os.Link(tmpName, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fs.ErrExist
		}
		return fmt.Errorf("state: install seal key file: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // make the new name durable; best effort
		d.Close()
	}
	return nil
}

// Seal encrypts plaintext bound to additional, which Open must be given again.
func (s *Sealer) Seal(plaintext, additional []byte) []byte {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		// crypto/rand.Read does not fail on supported platforms (Go 1.24+).
		panic("state: crypto/rand failed: " + err.Error())
	}
	return s.aead.Seal(nonce, nonce, plaintext, additional)
}

// Open decrypts a value made by Seal with the same additional data, or
// returns an error wrapping ErrUnseal.
func (s *Sealer) Open(sealed, additional []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(sealed) < ns+s.aead.Overhead() {
		return nil, fmt.Errorf("%w: %d bytes is shorter than a sealed value", ErrUnseal, len(sealed))
	}
	pt, err := s.aead.Open(nil, sealed[:ns], sealed[ns:], additional)
	if err != nil {
		return nil, ErrUnseal
	}
	return pt, nil
}
