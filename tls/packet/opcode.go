package packet

import "strconv"

// Opcode is the high 5 bits of the first byte of every OpenVPN packet
// (protocol §2).
type Opcode uint8

// Opcodes of OpenVPN 2.6 (ssl_pkt.h names in comments).
const (
	HardResetClientV1 Opcode = 1  // P_CONTROL_HARD_RESET_CLIENT_V1, key-method 1, unsupported
	HardResetServerV1 Opcode = 2  // P_CONTROL_HARD_RESET_SERVER_V1, key-method 1, unsupported
	SoftResetV1       Opcode = 3  // P_CONTROL_SOFT_RESET_V1: renegotiate a new key id
	ControlV1         Opcode = 4  // P_CONTROL_V1: reliable control packet carrying TLS ciphertext
	AckV1             Opcode = 5  // P_ACK_V1: acks only, no message packet-id
	DataV1            Opcode = 6  // P_DATA_V1: data, 1-byte header
	HardResetClientV2 Opcode = 7  // P_CONTROL_HARD_RESET_CLIENT_V2: client session start
	HardResetServerV2 Opcode = 8  // P_CONTROL_HARD_RESET_SERVER_V2: server reply to 7/10
	DataV2            Opcode = 9  // P_DATA_V2: data, 4-byte header with 24-bit peer-id
	HardResetClientV3 Opcode = 10 // P_CONTROL_HARD_RESET_CLIENT_V3: client start with tls-crypt-v2 WKc
	ControlWKCV1      Opcode = 11 // P_CONTROL_WKC_V1: P_CONTROL_V1 with the WKc appended
)

// Header bit layout (protocol §2): opcode<<3 | key_id.
const (
	opcodeShift = 3
	keyIDMask   = 0x07
)

var opcodeNames = [...]string{
	HardResetClientV1: "P_CONTROL_HARD_RESET_CLIENT_V1",
	HardResetServerV1: "P_CONTROL_HARD_RESET_SERVER_V1",
	SoftResetV1:       "P_CONTROL_SOFT_RESET_V1",
	ControlV1:         "P_CONTROL_V1",
	AckV1:             "P_ACK_V1",
	DataV1:            "P_DATA_V1",
	HardResetClientV2: "P_CONTROL_HARD_RESET_CLIENT_V2",
	HardResetServerV2: "P_CONTROL_HARD_RESET_SERVER_V2",
	DataV2:            "P_DATA_V2",
	HardResetClientV3: "P_CONTROL_HARD_RESET_CLIENT_V3",
	ControlWKCV1:      "P_CONTROL_WKC_V1",
}

// String returns the OpenVPN name of o, or "P_OPCODE(n)" for unknown values.
func (o Opcode) String() string {
	if int(o) < len(opcodeNames) && opcodeNames[o] != "" {
		return opcodeNames[o]
	}
	return "P_OPCODE(" + strconv.Itoa(int(o)) + ")"
}

// IsData reports whether o is a data-channel opcode (P_DATA_V1, P_DATA_V2).
func (o Opcode) IsData() bool { return o == DataV1 || o == DataV2 }

// IsControl reports whether o is a known control-channel opcode. Key-method 1
// resets (1, 2) are included because they share the layout; whether to accept
// them is the caller's decision (2.6 rejects them).
func (o Opcode) IsControl() bool {
	switch o {
	case HardResetClientV1, HardResetServerV1, SoftResetV1, ControlV1, AckV1,
		HardResetClientV2, HardResetServerV2, HardResetClientV3, ControlWKCV1:
		return true
	}
	return false
}

// IsReliable reports whether o is a control opcode that carries a message
// packet-id, i.e. every control opcode except P_ACK_V1.
func (o Opcode) IsReliable() bool { return o.IsControl() && o != AckV1 }

// Header returns the first packet byte for op and keyID. Only the low 3 bits of
// keyID are used.
func Header(op Opcode, keyID uint8) byte {
	return byte(op)<<opcodeShift | keyID&keyIDMask
}

// SplitHeader splits the first packet byte into opcode and key id.
func SplitHeader(b byte) (Opcode, uint8) {
	return Opcode(b >> opcodeShift), b & keyIDMask
}
