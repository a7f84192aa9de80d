// Package ippkt reads and builds IP packet headers of both families as the packet path needs
// them, in place and without allocating.
//
// It owns:
//   - Parse: the IPv4 header checks (header and total length, fragments) and the IPv6 fixed
//     header with a bounded walk over its extension headers (RFC 8200 §4), giving the addresses,
//     the upper-layer protocol and where its header starts, and the fragment; every refusal is
//     a Reason, so the data plane counts each one;
//   - ParseEmbedded: the same for the packet an ICMP error carries, which may be cut short;
//   - the Internet checksum: sums (RFC 1071), the IPv4 and IPv6 pseudo-headers (RFC 8200 §8.1)
//     and incremental updates (RFC 1624);
//   - ClampMSS: the MSS option of a TCP SYN of either family, with its checksum updated;
//   - the ICMP messages the packet path builds itself: the echo reply of the gateway address
//     (ICMP and ICMPv6), ICMPv6 Packet Too Big (RFC 4443 §3.2) with its rules (§2.4), and where
//     an ICMP or ICMPv6 error's embedded packet starts.
//
// It does not own NAT, authorization, routing or policy (what to do with a packet, which
// address answers), rate limits on the messages it builds, counting, or any I/O: callers hand
// it byte slices and act on what it reports.
//
// Every function reads only inside the slice it is given, whatever the bytes say: the input is
// whatever a client or the private network sends. The cost of any input is bounded by the caps
// on the extension-header walk (MaxExtensionHeaders headers, MaxExtensionBytes bytes), not by
// the packet's length; only checksums and copies are linear in it.
package ippkt
