package keymethod

import "bytes"

// SplitMessages extracts the complete control-channel text messages
// (protocol §10) from buf, which accumulates decrypted TLS data. Each message
// ends in a NUL; trailing CR and LF are stripped, and a message that is then
// empty or holds a byte outside printable ASCII (0x20-0x7e) is dropped, as
// OpenVPN does since CVE-2024-5594. rest is the unterminated tail of buf
// (aliasing it), to be kept for the next read; the caller should bound its
// length.
func SplitMessages(buf []byte) (msgs []string, rest []byte) {
	for {
		i := bytes.IndexByte(buf, 0)
		if i < 0 {
			return msgs, buf
		}
		msg := bytes.TrimRight(buf[:i], "\r\n")
		buf = buf[i+1:]
		if len(msg) > 0 && printable(msg) {
			msgs = append(msgs, string(msg))
		}
	}
}

func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}
