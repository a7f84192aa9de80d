package state

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// BoltFile is the name of the database file OpenBolt keeps in its directory.
const BoltFile = "state.db"

// lockTimeout bounds how long OpenBolt waits for the file lock another process
// holds before it gives up with a clear error.
const lockTimeout = time.Second

// Bolt is the embedded Store: one bbolt file, BoltFile in the state
// directory, locked against other processes for as long as it is open. Every
// write is one bbolt transaction, fsync'd before it returns.
type Bolt struct {
	db  *bbolt.DB
	dir string
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens (creating if needed) the store in dir: the directory is
// created 0700, the file 0600. When another process has it open, OpenBolt
// fails within about a second with an error wrapping ErrInUse.
func OpenBolt(dir string) (*Bolt, error) {
	if dir == "" {
		return nil, errors.New("state: empty state directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state: create state directory: %w", err)
	}
	path := filepath.Join(dir, BoltFile)
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: lockTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("state store %s is in use by another process (is cvpn serve running?): %w", dir, ErrInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("state: open %s: %w", path, err)
	}
	// bbolt applies the mode only when it creates the file; a file copied in
	// with looser permissions is tightened, since it holds sealed secrets and
	// the state that guards their use.
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(path, 0o600); err != nil {
			db.Close()
			return nil, fmt.Errorf("state: restrict %s to mode 0600: %w", path, err)
		}
	}
	return &Bolt{db: db, dir: dir}, nil
}

// Dir returns the state directory the store was opened in.
func (b *Bolt) Dir() string { return b.dir }

// mapErr turns bbolt's closed-database errors into ErrClosed.
func mapErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) || errors.Is(err, berrors.ErrTxClosed) {
		return ErrClosed
	}
	return err
}

// Get implements Store.
func (b *Bolt) Get(ctx context.Context, bucket, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkKey(bucket, key); err != nil {
		return nil, err
	}
	var v []byte
	err := b.db.View(func(tx *bbolt.Tx) error {
		bk := tx.Bucket([]byte(bucket))
		if bk == nil {
			return ErrNotFound
		}
		raw := bk.Get([]byte(key))
		if raw == nil {
			return ErrNotFound
		}
		v = clone(raw) // raw is valid only inside the transaction
		return nil
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return v, nil
}

// Put implements Store.
func (b *Bolt) Put(ctx context.Context, bucket, key string, value []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkKey(bucket, key); err != nil {
		return err
	}
	if err := checkValue(bucket, key, value); err != nil {
		return err
	}
	return mapErr(b.db.Update(func(tx *bbolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists([]byte(bucket))
		if err != nil {
			return fmt.Errorf("state: bucket %s: %w", bucket, err)
		}
		return bk.Put([]byte(key), clone(value))
	}))
}

// Delete implements Store.
func (b *Bolt) Delete(ctx context.Context, bucket, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkKey(bucket, key); err != nil {
		return err
	}
	return mapErr(b.db.Update(func(tx *bbolt.Tx) error {
		bk := tx.Bucket([]byte(bucket))
		if bk == nil {
			return nil
		}
		return bk.Delete([]byte(key))
	}))
}

// Update implements Store. fn runs inside one bbolt write transaction, which
// bbolt serialises with every other writer of the file.
func (b *Bolt) Update(ctx context.Context, bucket, key string, fn func(old []byte, ok bool) ([]byte, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkKey(bucket, key); err != nil {
		return err
	}
	return mapErr(b.db.Update(func(tx *bbolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists([]byte(bucket))
		if err != nil {
			return fmt.Errorf("state: bucket %s: %w", bucket, err)
		}
		var old []byte
		raw := bk.Get([]byte(key))
		ok := raw != nil
		if ok {
			old = clone(raw)
		}
		v, err := fn(old, ok)
		if err != nil {
			return err
		}
		if v == nil {
			return bk.Delete([]byte(key))
		}
		if err := checkValue(bucket, key, v); err != nil {
			return err
		}
		return bk.Put([]byte(key), clone(v))
	}))
}

// List implements Store.
func (b *Bolt) List(ctx context.Context, bucket string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkName("bucket name", bucket, MaxBucketLen); err != nil {
		return nil, err
	}
	keys := []string{}
	err := b.db.View(func(tx *bbolt.Tx) error {
		bk := tx.Bucket([]byte(bucket))
		if bk == nil {
			return nil
		}
		return bk.ForEach(func(k, v []byte) error {
			if v != nil { // nil marks a nested bucket, which this package never makes
				keys = append(keys, string(k))
			}
			return nil
		})
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return keys, nil
}

// Close implements Store. It releases the file lock.
func (b *Bolt) Close() error {
	return b.db.Close()
}
