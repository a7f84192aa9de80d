package ippkt

// Reason says why a packet was refused, or OK. The data plane counts each with its own drop
// counter; String gives the counter's label.
type Reason uint8

const (
	OK Reason = iota
	// Truncated: shorter than the fixed header (20 bytes for IPv4, 40 for IPv6), or an embedded
	// packet that stops before its upper-layer header's first 8 bytes.
	Truncated
	// BadVersion: the version field is neither 4 nor 6, or not the family the caller needs.
	BadVersion
	// BadHeaderLength: an IPv4 IHL below 5, or a header longer than the total length.
	BadHeaderLength
	// BadLength: the IPv4 total length or the IPv6 payload length runs past the bytes received.
	BadLength
	// Jumbogram: an IPv6 payload length of 0 with a Hop-by-Hop header, which announces a
	// jumbogram (RFC 2675). No link of the tunnel carries 64 KiB, so none is genuine.
	Jumbogram
	// HopByHopNotFirst: a Hop-by-Hop Options header anywhere but right after the IPv6 header
	// (RFC 8200 §4.1: it "MUST" immediately follow it).
	HopByHopNotFirst
	// TruncatedExtension: an extension header runs past the payload length.
	TruncatedExtension
	// BadExtension: an extension header's own fields are impossible (an Authentication Header
	// shorter than its fixed 12 bytes, RFC 4302 §2.2).
	BadExtension
	// TooManyExtensions: more than MaxExtensionHeaders extension headers.
	TooManyExtensions
	// ExtensionsTooLong: extension headers longer than MaxExtensionBytes in all.
	ExtensionsTooLong
	// ChainNotInFirstFragment: a first fragment that does not hold the whole header chain up
	// to and including the upper-layer header (RFC 8200 §4.5, RFC 7112 §5).
	ChainNotInFirstFragment
	// BadFragment: an IPv6 fragment that RFC 8200 §4.5 discards (not the last fragment yet not
	// a multiple of 8 bytes long; an offset plus length past 65535), or a second Fragment header.
	BadFragment
	// RoutingHeader: a Routing header with Segments Left > 0: the destination address is a
	// waypoint, not where the packet ends (RFC 8200 §4.4), so a decision by destination would be
	// made about the wrong host (the reason RFC 5095 deprecated type 0).
	RoutingHeader
	// NotEchoRequest: EchoReply was given something other than an ICMP or ICMPv6 echo request.
	NotEchoRequest
	// Fragmented: a message that is answered only whole (an echo request) came in fragments.
	Fragmented
	// BadChecksum: the message's checksum does not verify.
	BadChecksum
	// ErrorAboutError: no ICMPv6 error is sent about an ICMPv6 error or redirect (RFC 4443
	// §2.4 (e.1), (e.2)).
	ErrorAboutError
	// NoErrorToSource: no ICMPv6 error is sent to a source that names no single node: the
	// unspecified address or a multicast address (RFC 4443 §2.4 (e.6)).
	NoErrorToSource
	// ShortBuffer: the caller's buffer cannot hold the message.
	ShortBuffer

	// NumReasons is how many reasons there are (OK included), for tables indexed by Reason.
	NumReasons
)

var reasonNames = [NumReasons]string{
	OK:                      "ok",
	Truncated:               "truncated",
	BadVersion:              "bad_version",
	BadHeaderLength:         "bad_header_length",
	BadLength:               "bad_length",
	Jumbogram:               "jumbogram",
	HopByHopNotFirst:        "hop_by_hop_not_first",
	TruncatedExtension:      "truncated_extension",
	BadExtension:            "bad_extension",
	TooManyExtensions:       "too_many_extensions",
	ExtensionsTooLong:       "extensions_too_long",
	ChainNotInFirstFragment: "chain_not_in_first_fragment",
	BadFragment:             "bad_fragment",
	RoutingHeader:           "routing_header",
	NotEchoRequest:          "not_echo_request",
	Fragmented:              "fragmented",
	BadChecksum:             "bad_checksum",
	ErrorAboutError:         "error_about_error",
	NoErrorToSource:         "no_error_to_source",
	ShortBuffer:             "short_buffer",
}

// String returns the reason as a counter label, such as "truncated_extension".
func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}
