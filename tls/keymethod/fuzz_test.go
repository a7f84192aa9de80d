package keymethod

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzParseClient: ParseClient never panics; whatever it accepts re-encodes
// to a message it parses back identically; and a message built from arbitrary
// valid fields round-trips through Append.
func FuzzParseClient(f *testing.F) {
	sample := sampleClient()
	full := sample.Append(nil)
	f.Add(full, "V4,x", "user", "pass", debianPeerInfo, true)
	f.Add(full[:130], "", "", "", "", false)
	f.Add([]byte{0, 0, 0, 0, 1}, "o", "", "", "", true)
	f.Fuzz(func(t *testing.T, data []byte, options, user, pass, peerInfo string, hasUserPass bool) {
		if m, err := ParseClient(data); err == nil {
			again, err := ParseClient(m.Append(nil))
			if err != nil || again != m {
				t.Fatalf("re-encoded message: %+v, %v; want %+v", again, err, m)
			}
		}
		if invalidField(options, MaxOptionsLen) || invalidField(user, MaxUserPassLen) ||
			invalidField(pass, MaxUserPassLen) || invalidField(peerInfo, MaxPeerInfoLen) {
			return
		}
		m := ClientMessage{Options: options, PeerInfo: peerInfo, HasUserPass: hasUserPass}
		if hasUserPass {
			m.Username, m.Password = user, pass
		}
		copy(m.PreMaster[:], data)
		got, err := ParseClient(m.Append(nil))
		if err != nil || got != m {
			t.Fatalf("ParseClient(Append(m)) = %+v, %v; want %+v", got, err, m)
		}
	})
}

func invalidField(s string, max int) bool { return len(s)+1 > max || strings.IndexByte(s, 0) >= 0 }

func FuzzParseServer(f *testing.F) {
	m := ServerMessage{Options: ServerOptionsString("UDPv4", "AES-256-GCM", 256)}
	f.Add(m.Append(nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseServer(data)
		if err != nil {
			return
		}
		again, err := ParseServer(m.Append(nil))
		if err != nil || again != m {
			t.Fatalf("re-encoded server message: %+v, %v", again, err)
		}
	})
}

func FuzzParsePeerInfo(f *testing.F) {
	f.Add(debianPeerInfo)
	f.Add("IV_PROTO=99999999999\nIV_CIPHERS=:\n=\n\r\n")
	f.Fuzz(func(t *testing.T, s string) {
		p := ParsePeerInfo(s)
		if p.Raw == nil {
			t.Fatal("nil Raw")
		}
		for k, v := range p.Raw {
			if k == "" || strings.Contains(k, "\n") || strings.Contains(v, "\n") {
				t.Fatalf("bad raw entry %q=%q", k, v)
			}
		}
		for _, c := range p.Ciphers {
			if c == "" || strings.Contains(c, ":") {
				t.Fatalf("bad cipher %q", c)
			}
		}
		if p.Version != p.Raw["IV_VER"] || p.Platform != p.Raw["IV_PLAT"] {
			t.Fatal("fields disagree with Raw")
		}
	})
}

func FuzzSplitMessages(f *testing.F) {
	f.Add([]byte("PUSH_REQUEST\x00EXIT\r\n\x00partial"))
	f.Add([]byte("\x00\x00\x01\x00"))
	f.Fuzz(func(t *testing.T, buf []byte) {
		orig := bytes.Clone(buf)
		msgs, rest := SplitMessages(buf)
		if !bytes.Equal(buf, orig) {
			t.Fatal("input modified")
		}
		if bytes.IndexByte(rest, 0) >= 0 || !bytes.HasSuffix(buf, rest) {
			t.Fatalf("rest %q is not the unterminated tail", rest)
		}
		if len(msgs) > bytes.Count(buf, []byte{0}) {
			t.Fatal("more messages than terminators")
		}
		for _, m := range msgs {
			if m == "" || !printable([]byte(m)) || strings.HasSuffix(m, "\n") || strings.HasSuffix(m, "\r") {
				t.Fatalf("bad message %q", m)
			}
		}
	})
}
