package packet

import (
	"bytes"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var (
	csid = SessionID{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88}
	ssid = SessionID{0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8}
)

// Known-answer vectors for the plain layout (protocol §3.1).
var controlVectors = []struct {
	name string
	wire string
	want Control
}{
	{
		name: "client hard reset v2 (14 bytes)",
		wire: "38 1122334455667788 00 00000000",
		want: Control{Opcode: HardResetClientV2, SessionID: csid},
	},
	{
		name: "server hard reset v2 (26 bytes)",
		wire: "40 a1a2a3a4a5a6a7a8 01 00000000 1122334455667788 00000000",
		want: Control{Opcode: HardResetServerV2, SessionID: ssid, NumAcks: 1, RemoteSessionID: csid},
	},
	{
		name: "server reset with early-negotiation TLV",
		wire: "40 a1a2a3a4a5a6a7a8 01 00000000 1122334455667788 00000000 0001 0002 0001",
		want: Control{
			Opcode: HardResetServerV2, SessionID: ssid, NumAcks: 1, RemoteSessionID: csid,
			Payload: []byte{0, 1, 0, 2, 0, 1},
		},
	},
	{
		name: "control v1 key 2 with two acks and payload",
		wire: "22 1122334455667788 02 00000001 00000002 a1a2a3a4a5a6a7a8 00000003 160301",
		want: Control{
			Opcode: ControlV1, KeyID: 2, SessionID: csid, NumAcks: 2, Acks: [MaxAcks]uint32{1, 2},
			RemoteSessionID: ssid, PacketID: 3, Payload: []byte{0x16, 0x03, 0x01},
		},
	},
	{
		name: "ack v1 with one ack",
		wire: "28 1122334455667788 01 00000005 a1a2a3a4a5a6a7a8",
		want: Control{Opcode: AckV1, SessionID: csid, NumAcks: 1, Acks: [MaxAcks]uint32{5}, RemoteSessionID: ssid},
	},
	{
		name: "ack v1 with eight acks",
		wire: "28 1122334455667788 08 00000001 00000002 00000003 00000004 00000005 00000006 00000007 00000008 a1a2a3a4a5a6a7a8",
		want: Control{
			Opcode: AckV1, SessionID: csid, NumAcks: 8,
			Acks: [MaxAcks]uint32{1, 2, 3, 4, 5, 6, 7, 8}, RemoteSessionID: ssid,
		},
	},
	{
		name: "soft reset key 7",
		wire: "1f 1122334455667788 00 00000000",
		want: Control{Opcode: SoftResetV1, KeyID: 7, SessionID: csid},
	},
	{
		name: "wkc v1 (opcode 11)",
		wire: "58 1122334455667788 01 00000000 a1a2a3a4a5a6a7a8 00000001 aa",
		want: Control{
			Opcode: ControlWKCV1, SessionID: csid, NumAcks: 1, RemoteSessionID: ssid, PacketID: 1,
			Payload: []byte{0xaa},
		},
	},
}

func TestParseControlVectors(t *testing.T) {
	for _, v := range controlVectors {
		t.Run(v.name, func(t *testing.T) {
			wire := mustHex(t, v.wire)
			got, err := ParseControl(wire)
			if err != nil {
				t.Fatalf("ParseControl: %v", err)
			}
			if !controlEqual(got, v.want) {
				t.Fatalf("ParseControl:\n got %+v\nwant %+v", got, v.want)
			}
			if n := v.want.Len(); n != len(wire) {
				t.Errorf("Len = %d, want %d", n, len(wire))
			}
			if enc := v.want.Append(nil); !bytes.Equal(enc, wire) {
				t.Errorf("Append = %x, want %x", enc, wire)
			}
		})
	}
}

func TestParseControlExampleLengths(t *testing.T) {
	// The protocol §3.1 examples give exact sizes.
	if n := len(mustHex(t, controlVectors[0].wire)); n != 14 {
		t.Errorf("client reset is %d bytes, want 14", n)
	}
	if n := len(mustHex(t, controlVectors[1].wire)); n != 26 {
		t.Errorf("server reset is %d bytes, want 26", n)
	}
}

func TestParseControlErrors(t *testing.T) {
	tests := []struct {
		name string
		wire string
		want error
	}{
		{"empty", "", ErrTruncated},
		{"data v1", "30 1122334455667788 00 00000000", ErrNotControl},
		{"data v2", "48 000001 00", ErrNotControl},
		{"opcode 0", "00 1122334455667788 00 00000000", ErrNotControl},
		{"opcode 12", "60 1122334455667788 00 00000000", ErrNotControl},
		{"opcode 31", "f8 1122334455667788 00 00000000", ErrNotControl},
		{"header only", "38", ErrTruncated},
		{"short sid", "38 11223344556677", ErrTruncated},
		{"no ack count", "38 1122334455667788", ErrTruncated},
		{"no packet id", "38 1122334455667788 00", ErrTruncated},
		{"short packet id", "38 1122334455667788 00 000000", ErrTruncated},
		{"nine acks", "28 1122334455667788 09 00000001 00000002 00000003 00000004 00000005 00000006 00000007 00000008 00000009 a1a2a3a4a5a6a7a8", ErrTooManyAcks},
		{"ack count 255", "28 1122334455667788 ff", ErrTooManyAcks},
		{"short acks", "28 1122334455667788 02 00000001 000000", ErrTruncated},
		{"missing remote sid", "28 1122334455667788 01 00000001", ErrTruncated},
		{"short remote sid", "28 1122334455667788 01 00000001 a1a2a3a4a5a6a7", ErrTruncated},
		{"acks but no packet id", "20 1122334455667788 01 00000001 a1a2a3a4a5a6a7a8 0000", ErrTruncated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseControl(mustHex(t, tt.wire))
			if !errors.Is(err, tt.want) {
				t.Fatalf("ParseControl err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestParseControlNoAllocs(t *testing.T) {
	wire := mustHex(t, controlVectors[3].wire)
	var sink Control
	n := testing.AllocsPerRun(1000, func() {
		c, err := ParseControl(wire)
		if err != nil {
			t.Fatal(err)
		}
		sink = c
	})
	_ = sink
	if n != 0 {
		t.Fatalf("ParseControl allocs = %v, want 0", n)
	}
	buf := make([]byte, 0, 64)
	c := controlVectors[3].want
	n = testing.AllocsPerRun(1000, func() { buf = c.Append(buf[:0]) })
	if n != 0 {
		t.Fatalf("Append allocs = %v, want 0", n)
	}
}

func TestAppendClampsNumAcks(t *testing.T) {
	for _, na := range []int{-1, MaxAcks + 1, 1000} {
		c := Control{Opcode: AckV1, SessionID: csid, NumAcks: na}
		enc := c.Append(nil)
		if len(enc) != c.Len() {
			t.Fatalf("NumAcks %d: Append len %d != Len %d", na, len(enc), c.Len())
		}
		if _, err := ParseControl(enc); err != nil {
			t.Fatalf("NumAcks %d: reparse: %v", na, err)
		}
	}
}

func TestPayloadAliasesAndCapped(t *testing.T) {
	wire := mustHex(t, controlVectors[3].wire)
	c, err := ParseControl(wire)
	if err != nil {
		t.Fatal(err)
	}
	if &c.Payload[0] != &wire[len(wire)-3] {
		t.Fatal("Payload does not alias the input")
	}
	if cap(c.Payload) != len(c.Payload) {
		t.Fatal("Payload capacity extends past the packet; an append would overwrite caller memory")
	}
}

func TestOpcode(t *testing.T) {
	tests := []struct {
		op                      Opcode
		name                    string
		data, control, reliable bool
	}{
		{0, "P_OPCODE(0)", false, false, false},
		{HardResetClientV1, "P_CONTROL_HARD_RESET_CLIENT_V1", false, true, true},
		{HardResetServerV1, "P_CONTROL_HARD_RESET_SERVER_V1", false, true, true},
		{SoftResetV1, "P_CONTROL_SOFT_RESET_V1", false, true, true},
		{ControlV1, "P_CONTROL_V1", false, true, true},
		{AckV1, "P_ACK_V1", false, true, false},
		{DataV1, "P_DATA_V1", true, false, false},
		{HardResetClientV2, "P_CONTROL_HARD_RESET_CLIENT_V2", false, true, true},
		{HardResetServerV2, "P_CONTROL_HARD_RESET_SERVER_V2", false, true, true},
		{DataV2, "P_DATA_V2", true, false, false},
		{HardResetClientV3, "P_CONTROL_HARD_RESET_CLIENT_V3", false, true, true},
		{ControlWKCV1, "P_CONTROL_WKC_V1", false, true, true},
		{12, "P_OPCODE(12)", false, false, false},
		{31, "P_OPCODE(31)", false, false, false},
		{255, "P_OPCODE(255)", false, false, false},
	}
	for _, tt := range tests {
		if got := tt.op.String(); got != tt.name {
			t.Errorf("Opcode(%d).String() = %q, want %q", tt.op, got, tt.name)
		}
		if got := tt.op.IsData(); got != tt.data {
			t.Errorf("%v.IsData() = %v", tt.op, got)
		}
		if got := tt.op.IsControl(); got != tt.control {
			t.Errorf("%v.IsControl() = %v", tt.op, got)
		}
		if got := tt.op.IsReliable(); got != tt.reliable {
			t.Errorf("%v.IsReliable() = %v", tt.op, got)
		}
	}
}

func TestHeader(t *testing.T) {
	// Byte values from the protocol §2 table (key id 0).
	want := map[Opcode]byte{
		HardResetClientV1: 0x08, HardResetServerV1: 0x10, SoftResetV1: 0x18, ControlV1: 0x20,
		AckV1: 0x28, DataV1: 0x30, HardResetClientV2: 0x38, HardResetServerV2: 0x40,
		DataV2: 0x48, HardResetClientV3: 0x50, ControlWKCV1: 0x58,
	}
	for op, b := range want {
		if got := Header(op, 0); got != b {
			t.Errorf("Header(%v, 0) = %#x, want %#x", op, got, b)
		}
	}
	for b := range 256 {
		op, k := SplitHeader(byte(b))
		if Header(op, k) != byte(b) {
			t.Fatalf("Header(SplitHeader(%#x)) = %#x", b, Header(op, k))
		}
	}
	if got := Header(ControlV1, 9); got != 0x21 {
		t.Errorf("Header masks key id: got %#x, want 0x21", got)
	}
}

func TestSessionID(t *testing.T) {
	if !(SessionID{}).IsZero() || csid.IsZero() {
		t.Fatal("IsZero wrong")
	}
	if got := csid.String(); got != "1122334455667788" {
		t.Fatalf("String = %q", got)
	}
}

// controlEqual compares Controls treating nil and empty payloads as equal.
func controlEqual(a, b Control) bool {
	if !bytes.Equal(a.Payload, b.Payload) {
		return false
	}
	a.Payload, b.Payload = nil, nil
	return reflect.DeepEqual(a, b)
}

func FuzzParseControl(f *testing.F) {
	for _, v := range controlVectors {
		f.Add(mustHex(f, v.wire))
	}
	f.Add([]byte{})
	f.Add([]byte{0x28, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseControl(b)
		if err != nil {
			return
		}
		if c.NumAcks < 0 || c.NumAcks > MaxAcks {
			t.Fatalf("NumAcks %d out of range", c.NumAcks)
		}
		if !c.Opcode.IsControl() {
			t.Fatalf("accepted non-control opcode %v", c.Opcode)
		}
		enc := c.Append(nil)
		if !bytes.Equal(enc, b) {
			t.Fatalf("Append(ParseControl(b)) = %x, want %x", enc, b)
		}
		if c.Len() != len(b) {
			t.Fatalf("Len = %d, want %d", c.Len(), len(b))
		}
		c2, err := ParseControl(enc)
		if err != nil {
			t.Fatalf("reparse: %v", err)
		}
		if !controlEqual(c, c2) {
			t.Fatalf("round trip differs:\n%+v\n%+v", c, c2)
		}
	})
}
