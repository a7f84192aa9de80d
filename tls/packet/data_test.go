package packet

import (
	"bytes"
	"errors"
	"testing"
)

// Known-answer vectors for the data headers (protocol §8.1).
var dataHeaderVectors = []struct {
	name string
	wire string
	want DataHeader
}{
	{"v2 key 0 peer 0", "48 000000", DataHeader{Opcode: DataV2, KeyID: 0, PeerID: 0}},
	{"v2 key 1 peer 0x0a0b0c", "49 0a0b0c", DataHeader{Opcode: DataV2, KeyID: 1, PeerID: 0x0a0b0c}},
	{"v2 key 7 largest peer", "4f fffffe", DataHeader{Opcode: DataV2, KeyID: 7, PeerID: 0xfffffe}},
	{"v2 no peer-id", "4a ffffff", DataHeader{Opcode: DataV2, KeyID: 2, PeerID: NoPeerID}},
	{"v1 key 0", "30", DataHeader{Opcode: DataV1, KeyID: 0, PeerID: NoPeerID}},
	{"v1 key 5", "35", DataHeader{Opcode: DataV1, KeyID: 5, PeerID: NoPeerID}},
}

func TestDataHeaderVectors(t *testing.T) {
	for _, v := range dataHeaderVectors {
		t.Run(v.name, func(t *testing.T) {
			wire := mustHex(t, v.wire)
			// A payload after the header must not change the result.
			got, err := ParseDataHeader(append(wire, 0xde, 0xad))
			if err != nil {
				t.Fatalf("ParseDataHeader: %v", err)
			}
			if got != v.want {
				t.Fatalf("ParseDataHeader = %+v, want %+v", got, v.want)
			}
			if got.Len() != len(wire) || DataHeaderLen(v.want.Opcode) != len(wire) {
				t.Fatalf("Len = %d, DataHeaderLen = %d, want %d", got.Len(), DataHeaderLen(v.want.Opcode), len(wire))
			}
			buf := bytes.Repeat([]byte{0xee}, 8)
			n := PutDataHeader(buf, v.want.Opcode, v.want.KeyID, v.want.PeerID)
			if n != len(wire) || !bytes.Equal(buf[:n], wire) {
				t.Fatalf("PutDataHeader = %d %x, want %x", n, buf[:n], wire)
			}
			if !bytes.Equal(buf[n:], bytes.Repeat([]byte{0xee}, 8-n)) {
				t.Fatalf("PutDataHeader wrote past the header: %x", buf)
			}
		})
	}
}

func TestPutDataHeaderMasks(t *testing.T) {
	var b [4]byte
	// Key id 9 keeps its low 3 bits; a peer-id above 24 bits keeps its low 24.
	if n := PutDataHeader(b[:], DataV2, 9, 0x12345678); n != 4 || b != [4]byte{0x49, 0x34, 0x56, 0x78} {
		t.Fatalf("PutDataHeader = %d %x", n, b)
	}
	// P_DATA_V1 ignores the peer-id and writes one byte into a one-byte buffer.
	one := []byte{0}
	if n := PutDataHeader(one, DataV1, 3, 42); n != 1 || one[0] != 0x33 {
		t.Fatalf("PutDataHeader V1 = %d %x", n, one)
	}
}

func TestPutDataHeaderPanics(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		op   Opcode
	}{
		{"control opcode", make([]byte, 4), ControlV1},
		{"unknown opcode", make([]byte, 4), 31},
		{"short buffer v2", make([]byte, 3), DataV2},
		{"empty buffer v1", nil, DataV1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			PutDataHeader(tc.b, tc.op, 0, 0)
		})
	}
}

func TestDataHeaderLen(t *testing.T) {
	for op := range Opcode(32) {
		want := 0
		switch op {
		case DataV1:
			want = 1
		case DataV2:
			want = 4
		}
		if got := DataHeaderLen(op); got != want {
			t.Errorf("DataHeaderLen(%v) = %d, want %d", op, got, want)
		}
	}
}

func TestParseDataHeaderErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		wire string
		want error
	}{
		{"empty", "", ErrTruncated},
		{"v2 header only", "48", ErrTruncated},
		{"v2 short peer-id", "48 0000", ErrTruncated},
		{"control v1", "20 0000", ErrNotData},
		{"client reset", "38 1122334455667788 00 00000000", ErrNotData},
		{"opcode 0", "00 000000", ErrNotData},
		{"opcode 31", "f8 000000", ErrNotData},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseDataHeader(mustHex(t, tc.wire)); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDataHeaderNoAllocs(t *testing.T) {
	buf := make([]byte, 64)
	var sink DataHeader
	n := testing.AllocsPerRun(1000, func() {
		PutDataHeader(buf, DataV2, 3, 0x010203)
		h, err := ParseDataHeader(buf)
		if err != nil {
			t.Fatal(err)
		}
		PutDataHeader(buf[8:], DataV1, h.KeyID, h.PeerID)
		if _, err := ParseDataHeader(buf[8:]); err != nil {
			t.Fatal(err)
		}
		sink = h
	})
	if n != 0 {
		t.Fatalf("PutDataHeader+ParseDataHeader allocs = %v, want 0", n)
	}
	if sink.PeerID != 0x010203 {
		t.Fatalf("round trip peer-id = %#x", sink.PeerID)
	}
}

// FuzzParseDataHeader: ParseDataHeader never panics, accepts exactly the data
// opcodes, and a header it accepts re-encodes with PutDataHeader to the same
// bytes.
func FuzzParseDataHeader(f *testing.F) {
	for _, v := range dataHeaderVectors {
		f.Add(mustHex(f, v.wire))
	}
	f.Add([]byte{})
	f.Add([]byte{0x48, 1})
	f.Add(mustHex(f, "38 1122334455667788 00 00000000"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseDataHeader(b)
		if err != nil {
			if len(b) >= DataV2HeaderLen {
				if op, _ := SplitHeader(b[0]); op.IsData() {
					t.Fatalf("refused data packet %x: %v", b, err)
				}
			}
			return
		}
		if !h.Opcode.IsData() || h.KeyID > 7 || h.PeerID > NoPeerID {
			t.Fatalf("accepted %x as %+v", b, h)
		}
		if h.Opcode == DataV1 && h.PeerID != NoPeerID {
			t.Fatalf("P_DATA_V1 with peer-id %#x", h.PeerID)
		}
		n := h.Len()
		if n == 0 || n > len(b) {
			t.Fatalf("Len %d for a %d-byte packet", n, len(b))
		}
		out := make([]byte, n)
		if m := PutDataHeader(out, h.Opcode, h.KeyID, h.PeerID); m != n || !bytes.Equal(out, b[:n]) {
			t.Fatalf("PutDataHeader(ParseDataHeader(%x)) = %x", b, out[:m])
		}
	})
}
