package tunnel

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tls/tlscrypt"
)

// maxTCPPacket bounds one framed packet; OpenVPN calls anything larger a bad encapsulated length.
const maxTCPPacket = 4096

// tcpListener accepts OpenVPN-over-TCP connections. Each connection is one session.
type tcpListener struct {
	srv  *Server
	addr netip.AddrPort
	ln   *net.TCPListener
}

func listenTCP(s *Server, ap netip.AddrPort) (*tcpListener, error) {
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(ap))
	if err != nil {
		return nil, fmt.Errorf("tunnel: listen tcp %s: %w", ap, err)
	}
	return &tcpListener{srv: s, addr: ln.Addr().(*net.TCPAddr).AddrPort(), ln: ln}, nil
}

func (t *tcpListener) close() { t.ln.Close() }

func (t *tcpListener) acceptLoop() {
	for {
		conn, err := t.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			t.srv.log.Warn("tcp accept failed", "listener", t.addr, "err", err)
			continue
		}
		_ = conn.SetNoDelay(true)
		t.srv.wg.Add(1)
		go func() {
			defer t.srv.wg.Done()
			t.srv.serveTCP(conn)
		}()
	}
}

// serveTCP runs one TCP session: it reads length-framed packets, creates the session on the
// client's hard reset (statefully: the connection itself proves the address), and feeds control
// and data packets to it. The goroutine owns the session's replay windows.
func (s *Server) serveTCP(conn *net.TCPConn) {
	from := conn.RemoteAddr().(*net.TCPAddr).AddrPort()
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	tl := newTCPLink(conn, &s.drops)
	defer tl.close()
	r := bufio.NewReaderSize(conn, 64<<10)
	buf := make([]byte, maxTCPPacket+64)
	scratch := make([]byte, 0, maxTCPPacket+64)
	var c *client
	var batch [][]byte
	defer func() {
		if c != nil {
			s.disconnect(c, "tcp connection closed")
		}
	}()
	for {
		pkt, err := readFrame(r, buf)
		if err != nil {
			if errors.Is(err, errFrameLength) {
				s.drops.add(DropMalformed, "from", from, "err", err)
			}
			return
		}
		op, kid := packet.SplitHeader(pkt[0])
		switch {
		case op.IsData():
			if c == nil {
				s.drops.add(DropNoSession, "from", from)
				return
			}
			pt, hdr, ok := s.openData(c, pkt, op, kid, from)
			if !ok {
				continue
			}
			if ip, ok := s.deliverData(c, pkt, pt, hdr); ok {
				batch = append(batch[:0], ip)
				s.writeTUN(batch)
			}
		case op.IsControl():
			if op == packet.HardResetClientV1 {
				s.drops.add(DropKeyMethod1, "from", from)
				return
			}
			plain, pid, ts, w, err := s.unwrapControl(scratch[:0], pkt, c)
			if err != nil {
				s.drops.add(DropControlAuth, "from", from, "err", err)
				return
			}
			p, err := packet.ParseControl(plain)
			if err != nil {
				s.drops.add(DropMalformed, "from", from, "err", err)
				return
			}
			if c == nil {
				reset := p.Opcode == packet.HardResetClientV2 || p.Opcode == packet.HardResetClientV3
				if !reset || kid != 0 || p.SessionID.IsZero() {
					s.drops.add(DropNoSession, "from", from, "opcode", p.Opcode)
					return
				}
				if c = s.newStatefulClient(tl, from, &p, pid, ts, w); c == nil {
					return
				}
				continue
			}
			if err := c.ctl.Input(&p, pid, ts); err != nil {
				s.drops.add(DropControlRejected, "from", from, "err", err)
				continue
			}
			c.lastRecv.Store(s.clockNano())
		default:
			s.drops.add(DropMalformed, "from", from)
			return
		}
		if c != nil && c.closed.Load() {
			c = nil // already torn down (EXIT, refusal, reaping)
			return
		}
	}
}

// newStatefulClient creates a session from a client's hard reset at once, without the cookie
// round trip: for TCP (the connection proves the address) and for tls-crypt-v2 clients that cannot
// resend their key. The server's reset, acking the client's, leaves as reliable message 0.
func (s *Server) newStatefulClient(l link, from netip.AddrPort, p *packet.Control, pid, ts uint32, w tlscrypt.Wrapper) *client {
	var local packet.SessionID
	for local.IsZero() {
		if _, err := rand.Read(local[:]); err != nil {
			return nil
		}
	}
	c := s.newSession(l, from, local, p.SessionID, false, w)
	if c == nil {
		return nil
	}
	switch lk := l.(type) {
	case *tcpLink:
		c.tcp = lk
	case udpLink:
		lk.c = c
		c.link = lk
		c.setOOB(lk.l.replyOOB())
	}
	if err := c.ctl.Input(p, pid, ts); err != nil {
		s.drops.add(DropControlRejected, "from", from, "err", err)
		s.disconnect(c, "bad hard reset")
		return nil
	}
	go s.runKey(c, c.ctl.Key(0))
	return c
}

// errFrameLength is a TCP frame whose length is 0 or larger than any OpenVPN packet.
var errFrameLength = errors.New("tunnel: bad encapsulated packet length")

// readFrame reads one length-prefixed packet (2-byte big-endian length, then the packet) into buf,
// which must hold maxTCPPacket bytes. A bad length ends the stream: framing cannot resync.
func readFrame(r io.Reader, buf []byte) ([]byte, error) {
	var lenb [2]byte
	if _, err := io.ReadFull(r, lenb[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(lenb[:]))
	if n == 0 || n > maxTCPPacket || n > len(buf) {
		return nil, errFrameLength
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		return nil, err
	}
	return buf[:n], nil
}
