package netlab

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// DialTCPManyIn opens n TCP connections to raddr from inside namespace ns, one after another, as
// a host holding many idle connections would. The thread switches namespace once for all of
// them. On an error it closes those already open.
func DialTCPManyIn(ns string, raddr netip.AddrPort, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, 0, n)
	err := inNamespace(ns, func() error {
		d := net.Dialer{Timeout: 10 * time.Second}
		for range n {
			c, err := d.Dial("tcp4", raddr.String())
			if err != nil {
				return fmt.Errorf("connection %d to %s: %w", len(conns)+1, raddr, err)
			}
			conns = append(conns, c)
		}
		return nil
	})
	if err != nil {
		for _, c := range conns {
			c.Close()
		}
		return nil, err
	}
	return conns, nil
}

// RawIPv4 is a raw IPv4 socket whose datagrams carry their own IP header (IPPROTO_RAW implies
// IP_HDRINCL), so the sender chooses any source address: what a host spoofing its source does.
// Writes block while the socket's send buffer is full.
type RawIPv4 struct{ fd int }

// OpenRawIPv4In opens a raw IPv4 socket inside namespace ns.
func OpenRawIPv4In(ns string) (*RawIPv4, error) {
	var r *RawIPv4
	err := inNamespace(ns, func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		r = &RawIPv4{fd: fd}
		return nil
	})
	return r, err
}

// Send sends pkt, a whole IPv4 packet, towards the packet's destination address.
func (r *RawIPv4) Send(pkt []byte) error {
	if len(pkt) < 20 {
		return fmt.Errorf("raw: %d bytes is no IPv4 packet", len(pkt))
	}
	to := &syscall.SockaddrInet4{Addr: [4]byte(pkt[16:20])}
	return syscall.Sendto(r.fd, pkt, 0, to)
}

// Close closes the socket.
func (r *RawIPv4) Close() error { return syscall.Close(r.fd) }

// AppendUDP4 appends an IPv4 packet carrying a UDP datagram from src to dst with payload, both
// checksums filled in, to b.
func AppendUDP4(b []byte, src, dst netip.AddrPort, payload []byte) []byte {
	const ipLen, udpLen = 20, 8
	total := ipLen + udpLen + len(payload)
	start := len(b)
	b = append(b, 0x45, 0) // version 4, IHL 5; DSCP 0
	b = binary.BigEndian.AppendUint16(b, uint16(total))
	b = append(b, 0, 0, 0x40, 0, 64, syscall.IPPROTO_UDP, 0, 0) // id 0, DF, TTL 64, UDP, checksum
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	b = append(b, s4[:]...)
	b = append(b, d4[:]...)
	binary.BigEndian.PutUint16(b[start+10:], ^fold(sum16(b[start:start+ipLen], 0)))
	u := len(b)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	b = binary.BigEndian.AppendUint16(b, dst.Port())
	b = binary.BigEndian.AppendUint16(b, uint16(udpLen+len(payload)))
	b = append(b, 0, 0)
	b = append(b, payload...)
	// The UDP checksum covers a pseudo-header: addresses, protocol and UDP length.
	pseudo := sum16(s4[:], 0)
	pseudo = sum16(d4[:], pseudo)
	pseudo += syscall.IPPROTO_UDP + uint32(udpLen+len(payload))
	c := ^fold(sum16(b[u:], pseudo))
	if c == 0 {
		c = 0xffff // 0 means "no checksum" in UDP over IPv4
	}
	binary.BigEndian.PutUint16(b[u+6:], c)
	return b
}

// sum16 adds b as big-endian 16-bit words (an odd last byte padded with zero) to s.
func sum16(b []byte, s uint32) uint32 {
	for ; len(b) >= 2; b = b[2:] {
		s += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	return s
}

// fold folds a 32-bit one's-complement sum into 16 bits.
func fold(s uint32) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}
