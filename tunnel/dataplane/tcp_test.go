package dataplane

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func frame(p []byte) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(p))), p...) }

func TestReadFrame(t *testing.T) {
	stream := append(frame([]byte{0x38, 1, 2}), frame(bytes.Repeat([]byte{9}, maxTCPPacket))...)
	r := bytes.NewReader(stream)
	buf := make([]byte, maxTCPPacket)
	p, err := readFrame(r, buf)
	if err != nil || !bytes.Equal(p, []byte{0x38, 1, 2}) {
		t.Fatalf("first frame = % x, %v", p, err)
	}
	if p, err = readFrame(r, buf); err != nil || len(p) != maxTCPPacket {
		t.Fatalf("second frame: %d bytes, %v", len(p), err)
	}
	if _, err = readFrame(r, buf); err != io.EOF {
		t.Fatalf("end of stream: %v, want EOF", err)
	}
	for _, bad := range [][]byte{{0, 0}, {0xff, 0xff, 1}, binary.BigEndian.AppendUint16(nil, maxTCPPacket+1)} {
		if _, err := readFrame(bytes.NewReader(bad), buf); !errors.Is(err, errFrameLength) {
			t.Errorf("length % x: %v, want errFrameLength", bad[:2], err)
		}
	}
	if _, err := readFrame(bytes.NewReader([]byte{0, 5, 1, 2}), buf); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated frame: %v, want unexpected EOF", err)
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add(frame([]byte{0x38, 0, 0}))
	f.Add([]byte{0, 0})
	f.Add([]byte{0x10, 0x01, 1})
	f.Fuzz(func(t *testing.T, stream []byte) {
		r := bytes.NewReader(stream)
		buf := make([]byte, maxTCPPacket)
		for {
			p, err := readFrame(r, buf)
			if err != nil {
				return
			}
			if len(p) == 0 || len(p) > maxTCPPacket {
				t.Fatalf("frame of %d bytes accepted", len(p))
			}
		}
	})
}
