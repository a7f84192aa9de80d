package datacrypto

import "errors"

// Sentinel errors. Open returns them unwrapped so the receive path can count
// drops by reason without allocating.
var (
	// ErrUnsupportedCipher is wrapped by ParseCipher and NewKeys for a cipher
	// this package does not implement (CBC ciphers, BF-CBC, "none", ...).
	ErrUnsupportedCipher = errors.New("datacrypto: unsupported data-channel cipher")

	// ErrExportLength is wrapped by DeriveEKM when the TLS exporter returns
	// something other than 256 bytes.
	ErrExportLength = errors.New("datacrypto: TLS exporter returned wrong key2 length")

	// ErrHeader is returned by Open when hdr is neither 1 (P_DATA_V1) nor 4
	// (P_DATA_V2).
	ErrHeader = errors.New("datacrypto: open: header length is not 1 (P_DATA_V1) or 4 (P_DATA_V2)")

	// ErrShortPacket is returned by Open when the packet cannot hold the
	// header, packet-id, tag and at least one byte of ciphertext.
	ErrShortPacket = errors.New("datacrypto: open: packet too short")

	// ErrAuth is returned by Open when the AEAD tag does not verify: wrong key,
	// corrupted or forged packet.
	ErrAuth = errors.New("datacrypto: open: authentication failed")
)
