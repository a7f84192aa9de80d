package keymethod

import (
	"strconv"
	"strings"
)

// OCC link-mtu arithmetic for an AEAD cipher, as OpenVPN 2.6 computes it for
// the options string (mtu.c:calc_options_string_link_mtu): tun-mtu plus the
// opcode, the packet-id and the tag, plus the cipher's IV and block size that
// old peers counted although they are not on the wire, plus the TCP length
// prefix.
const (
	occTunMTU     = 1500
	occOpcode     = 1
	occPacketID   = 4
	occTag        = 16
	occIV         = 12
	occTCPLen     = 2
	occAESBlock   = 16
	occChachBlock = 1
)

// ServerOptionsString builds the server's OCC options string (protocol §6.2)
// for an AEAD data cipher, e.g. for ("UDPv4", "AES-256-GCM", 256):
//
//	V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-server
//
// proto is "UDPv4" or "TCPv4_SERVER". OpenVPN 2.6 clients only log a
// mismatch with their own string, but they use the cipher from it if no cipher
// is pushed. The result is well under the 512-byte limit for any real cipher
// name.
func ServerOptionsString(proto string, cipher string, keySizeBits int) string {
	linkMTU := occTunMTU + occOpcode + occPacketID + occTag + occIV + occAESBlock
	if strings.EqualFold(cipher, "CHACHA20-POLY1305") {
		linkMTU += occChachBlock - occAESBlock
	}
	if strings.HasPrefix(proto, "TCP") {
		linkMTU += occTCPLen
	}
	return "V4,dev-type tun,link-mtu " + strconv.Itoa(linkMTU) +
		",tun-mtu " + strconv.Itoa(occTunMTU) +
		",proto " + proto +
		",cipher " + cipher +
		",auth [null-digest]" +
		",keysize " + strconv.Itoa(keySizeBits) +
		",key-method 2,tls-server"
}
