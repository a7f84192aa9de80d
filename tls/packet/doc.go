// Package packet owns the OpenVPN packet header byte (opcode and key id,
// docs/protocol.md §2), the codec for control packets in the plain layout
// (protocol §3.1) and the data packet header with its peer-id (protocol §8.1).
//
// It does not own the tls-auth/tls-crypt wrapping (see tls/tlscrypt), the
// reliability layer (acks, retransmission, ordering) or the protection of data
// packets (tunnel/datacrypto); it only turns header bytes into values and back.
package packet
