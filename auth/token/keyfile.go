package token

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/cvpn/cvpn/state"
)

// Where LoadOrCreateKeyring keeps the HMAC key: sealed, with the bucket and
// key names as additional data.
const (
	KeyBucket = "auth-token"
	KeyName   = "hmac-key"
)

// LoadOrCreateKeyring returns the Keyring whose key is kept sealed in st,
// creating a random key on first use. Servers sharing st share the key, so a
// token minted by one verifies on another.
func LoadOrCreateKeyring(ctx context.Context, st state.Store, s *state.Sealer) (*Keyring, error) {
	ad := []byte(KeyBucket + "/" + KeyName)
	var key []byte
	err := st.Update(ctx, KeyBucket, KeyName, func(old []byte, ok bool) ([]byte, error) {
		if ok {
			k, err := s.Open(old, ad)
			if err != nil {
				return nil, fmt.Errorf("token: stored key: %w", err)
			}
			key = k
			return old, nil
		}
		k := make([]byte, MinKeyLen)
		if _, err := rand.Read(k); err != nil {
			return nil, fmt.Errorf("token: generate key: %w", err)
		}
		key = k
		return s.Seal(k, ad), nil
	})
	if err != nil {
		return nil, err
	}
	return NewKeyring(key)
}
