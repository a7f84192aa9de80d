package packet

// Data packet headers (protocol §8.1):
//
//	P_DATA_V1: [1] 6<<3 | key_id
//	P_DATA_V2: [1] 9<<3 | key_id  [3] peer-id, 24 bits big-endian
//
// The packet-id, tag and ciphertext that follow belong to tunnel/datacrypto.

// Lengths of the two data headers.
const (
	DataV1HeaderLen = 1
	DataV2HeaderLen = 4
)

// NoPeerID is the 24-bit peer-id that means "none" (MAX_PEER_ID in openvpn.h).
// ParseDataHeader reports it for P_DATA_V1, which carries no peer-id.
const NoPeerID uint32 = 0xFFFFFF

// DataHeader is the decoded header of a data packet.
type DataHeader struct {
	Opcode Opcode // DataV1 or DataV2
	KeyID  uint8
	PeerID uint32 // the peer-id of P_DATA_V2; NoPeerID for P_DATA_V1
}

// Len returns the length of h on the wire, DataHeaderLen(h.Opcode).
func (h DataHeader) Len() int { return DataHeaderLen(h.Opcode) }

// DataHeaderLen returns the header length of a data packet with opcode op:
// DataV1HeaderLen, DataV2HeaderLen, or 0 when op is not a data opcode.
func DataHeaderLen(op Opcode) int {
	switch op {
	case DataV1:
		return DataV1HeaderLen
	case DataV2:
		return DataV2HeaderLen
	}
	return 0
}

// PutDataHeader writes the header of a data packet with opcode op (DataV1 or
// DataV2) and key id keyID to the front of b and returns its length. The
// peer-id is written for DataV2 only, and only its low 24 bits. Only the low 3
// bits of keyID are used.
//
// PutDataHeader panics if op is not a data opcode or b is shorter than the
// header; both are mistakes of the caller, never of the network.
func PutDataHeader(b []byte, op Opcode, keyID uint8, peerID uint32) int {
	switch op {
	case DataV1:
		b[0] = Header(DataV1, keyID)
		return DataV1HeaderLen
	case DataV2:
		_ = b[3] // one bounds check
		b[0] = Header(DataV2, keyID)
		b[1], b[2], b[3] = byte(peerID>>16), byte(peerID>>8), byte(peerID)
		return DataV2HeaderLen
	}
	panic("packet: PutDataHeader: " + op.String() + " is not a data opcode")
}

// ParseDataHeader decodes the header at the front of a data packet. It returns
// ErrTruncated for an empty packet or a P_DATA_V2 packet shorter than its
// header, and ErrNotData when the opcode is not P_DATA_V1 or P_DATA_V2. It
// checks nothing after the header and never allocates.
func ParseDataHeader(b []byte) (DataHeader, error) {
	if len(b) == 0 {
		return DataHeader{}, ErrTruncated
	}
	op, kid := SplitHeader(b[0])
	switch op {
	case DataV1:
		return DataHeader{Opcode: DataV1, KeyID: kid, PeerID: NoPeerID}, nil
	case DataV2:
		if len(b) < DataV2HeaderLen {
			return DataHeader{}, ErrTruncated
		}
		pid := uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		return DataHeader{Opcode: DataV2, KeyID: kid, PeerID: pid}, nil
	}
	return DataHeader{}, ErrNotData
}
