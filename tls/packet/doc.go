// Package packet owns the OpenVPN packet header byte (opcode and key id, wire
// §2) and the codec for control packets in the plain layout (wire §3.1).
//
// It does not own the tls-auth/tls-crypt wrapping (see tls/tlscrypt), the
// reliability layer (acks, retransmission, ordering) or the data channel
// format; it only turns bytes into a Control value and back.
package packet
