package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// WriteIdentity writes id.CertPEM to certFile (mode 0644) and id.KeyPEM to
// keyFile (mode 0600). The key file is created with mode 0600 from the
// start, never created wider and narrowed later.
//
// Neither file may exist already: overwriting a key, above all a CA key,
// destroys it, so the caller decides (and removes the old files) when
// replacing is meant. The error then wraps fs.ErrExist. If writing the
// certificate fails, the key file just written is removed.
func WriteIdentity(id *Identity, certFile, keyFile string) error {
	if id == nil || len(id.CertPEM) == 0 || len(id.KeyPEM) == 0 {
		return errors.New("pki: write identity: certificate or key PEM is empty")
	}
	for _, f := range []string{keyFile, certFile} {
		if _, err := os.Lstat(f); err == nil {
			return fmt.Errorf("pki: write identity: %s: %w", f, fs.ErrExist)
		}
	}
	if err := writeNew(keyFile, id.KeyPEM, 0o600, false); err != nil {
		return fmt.Errorf("pki: write private key: %w", err)
	}
	if err := writeNew(certFile, id.CertPEM, 0o644, true); err != nil {
		os.Remove(keyFile)
		return fmt.Errorf("pki: write certificate: %w", err)
	}
	return nil
}

// writeNew creates name exclusively with perm (as narrowed by the umask),
// writes data and syncs it. With exact, the mode is set to perm regardless of
// the umask: a public certificate gets exactly 0644 so every service can read
// it, while a key keeps whatever the umask left, never more than 0600. On
// failure it removes the partial file.
func writeNew(name string, data []byte, perm os.FileMode, exact bool) (err error) {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			os.Remove(name)
		}
	}()
	if exact {
		if err := f.Chmod(perm); err != nil {
			return err
		}
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Sync()
}
