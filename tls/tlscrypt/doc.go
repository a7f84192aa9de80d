// Package tlscrypt owns the OpenVPN static key file (struct key2,
// docs/protocol.md §3.5) and the protection of control packets on the wire:
// --tls-crypt (protocol §3.6), --tls-auth (protocol §3.5) and no protection,
// behind one Wrapper interface. It also owns the sliding replay window for
// their long-form replay packet-ids, and tls-crypt-v2 (protocol §3.7): server
// and client key files, wrapping and unwrapping of a client's key (WKc), and
// splitting the WKc off a packet.
//
// It does not parse the control packet inside the wrapping (see tls/packet),
// does not decide which wrapping a session uses, and does not derive dynamic
// tls-crypt keys; an unwrapped client key ends in a StaticKey passed to
// NewTLSCrypt.
package tlscrypt
