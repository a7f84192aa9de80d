package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/replay"
)

// occExit is the whole OCC explicit-exit payload.
var occExit = append(append([]byte(nil), packet.OCCMagic...), packet.OCCExit)

const (
	// maxDatagram is the largest datagram the session receives or sends: a 1500-byte tunnel
	// MTU plus the data header, packet-id and tag, with room to spare. Larger datagrams are
	// dropped as oversize.
	maxDatagram = 2048
	// tailRoom follows a datagram in its buffer so that AEAD open and seal work in place.
	tailRoom = 16
	// MaxPacketSize is the largest IP packet WritePacket sends.
	MaxPacketSize = maxDatagram - packet.DataV2HeaderLen - datacrypto.Overhead
	// queueLen is how many opened packets wait for ReadPacket before more are dropped.
	queueLen = 32
)

// pktBuf is a datagram buffer from the shared pool; off and n locate the plaintext of an opened
// data packet.
type pktBuf struct {
	b      [maxDatagram + tailRoom]byte
	off, n int
}

var pktPool = sync.Pool{New: func() any { return new(pktBuf) }}

func getPkt() *pktBuf  { return pktPool.Get().(*pktBuf) }
func putPkt(b *pktBuf) { pktPool.Put(b) }

// dataKey is the data-channel state of one key id.
type dataKey struct {
	id      uint8
	keys    *datacrypto.Keys
	sendPID atomic.Uint32
	replay  replay.Window // owned by the receive goroutine
}

// Drop reasons counted in Stats.
const (
	dropMalformed = iota // unknown opcode, truncated or oversize datagram
	dropControl          // control packet that failed to unwrap, parse or fit the channel
	dropNoKey            // data packet for a key id without keys
	dropDecrypt          // data packet that failed authentication
	dropReplay           // data packet-id seen before or too old
	dropQueueFull        // ReadPacket did not keep up
	numDrops
)

type counters struct {
	txPackets, txBytes, rxPackets, rxBytes atomic.Uint64
	drops                                  [numDrops]atomic.Uint64
}

func (c *counters) drop(reason int) { c.drops[reason].Add(1) }

// Stats are a session's data-channel counters. Bytes count IP packets (plaintext); pings and
// other non-IP payloads are not counted as packets.
type Stats struct {
	TxPackets, TxBytes uint64
	RxPackets, RxBytes uint64
	// Drops by reason, for the load generator's loss accounting.
	DropMalformed, DropControl, DropNoKey, DropDecrypt, DropReplay, DropQueueFull uint64
}

// Stats returns the session's counters.
func (s *Session) Stats() Stats {
	d := &s.stats.drops
	return Stats{
		TxPackets: s.stats.txPackets.Load(), TxBytes: s.stats.txBytes.Load(),
		RxPackets: s.stats.rxPackets.Load(), RxBytes: s.stats.rxBytes.Load(),
		DropMalformed: d[dropMalformed].Load(), DropControl: d[dropControl].Load(),
		DropNoKey: d[dropNoKey].Load(), DropDecrypt: d[dropDecrypt].Load(),
		DropReplay: d[dropReplay].Load(), DropQueueFull: d[dropQueueFull].Load(),
	}
}

// WritePacket seals one IP packet as P_DATA_V2 (P_DATA_V1 when the server pushed no peer-id)
// under the current key and sends it.
func (s *Session) WritePacket(ip []byte) error {
	if len(ip) == 0 || len(ip) > MaxPacketSize {
		return ErrPacketSize
	}
	if err := s.Err(); err != nil {
		return err
	}
	if err := s.sendData(ip); err != nil {
		return err
	}
	s.stats.txPackets.Add(1)
	s.stats.txBytes.Add(uint64(len(ip)))
	return nil
}

// sendData seals payload in a pooled buffer and sends it (protocol §8.2).
func (s *Session) sendData(payload []byte) error {
	k := s.sendKey.Load()
	if k == nil {
		return ErrClosed
	}
	pid := k.sendPID.Add(1)
	if pid == 0 || pid == ^uint32(0) {
		k.sendPID.Store(^uint32(0))
		return ErrPacketIDExhausted
	}
	op := packet.DataV1
	if s.dataV2 {
		op = packet.DataV2
	}
	hdr := packet.DataHeaderLen(op)
	pb := getPkt()
	defer putPkt(pb)
	p := pb.b[:hdr+datacrypto.Overhead+len(payload)]
	copy(p[hdr+datacrypto.Overhead:], payload)
	packet.PutDataHeader(p, op, k.id, s.peerID)
	p = k.keys.Seal(p, hdr, pid)
	if err := s.link.write(p); err != nil {
		if s.Err() != nil {
			return s.Err()
		}
		return err
	}
	s.lastSend.Store(s.now().UnixNano())
	return nil
}

// ReadPacket returns the next IP packet from the server into buf. If buf is too short the
// packet is truncated and io.ErrShortBuffer returned with the bytes copied. With
// Config.OnPacket set nothing is queued, and ReadPacket only returns when the session ends.
func (s *Session) ReadPacket(buf []byte) (int, error) {
	return s.ReadPacketContext(context.Background(), buf)
}

// ReadPacketContext is ReadPacket that also returns when ctx ends.
func (s *Session) ReadPacketContext(ctx context.Context, buf []byte) (int, error) {
	select {
	case pb := <-s.in:
		n := copy(buf, pb.b[pb.off:pb.off+pb.n])
		short := n < pb.n
		putPkt(pb)
		if short {
			return n, io.ErrShortBuffer
		}
		return n, nil
	case <-s.done:
		return 0, s.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// receiveLoop reads datagrams from the server until the socket closes.
func (s *Session) receiveLoop() {
	pb := getPkt()
	defer func() { putPkt(pb) }()
	for {
		n, err := s.link.read(pb.b[:maxDatagram])
		if err != nil {
			if s.Err() != nil || errors.Is(err, net.ErrClosed) {
				s.shutdown(err)
				return
			}
			if !isTransient(err) {
				s.shutdown(err)
				return
			}
			continue
		}
		if n == 0 || n == maxDatagram {
			s.stats.drop(dropMalformed)
			continue
		}
		wire := pb.b[:n]
		op, _ := packet.SplitHeader(wire[0])
		switch {
		case op.IsData():
			h, err := packet.ParseDataHeader(wire)
			if err != nil {
				s.stats.drop(dropMalformed)
				continue
			}
			if s.receiveData(pb, wire, h) {
				pb = getPkt() // the queue owns the old one
			}
		case op.IsControl():
			s.receiveControl(wire)
		default:
			s.stats.drop(dropMalformed)
		}
	}
}

// receiveControl authenticates a control packet and gives it to the channel.
func (s *Session) receiveControl(wire []byte) {
	plain, pid, ts, err := s.wrapper.Unwrap(wire[:0], wire)
	if err != nil {
		s.stats.drop(dropControl)
		return
	}
	p, err := packet.ParseControl(plain)
	if err != nil {
		s.stats.drop(dropControl)
		return
	}
	if err := s.ch.Input(&p, pid, ts); err != nil {
		s.stats.drop(dropControl)
		return
	}
	if p.Opcode != packet.HardResetServerV2 { // a repeated reset does not show the server has state
		s.heard.Store(true)
	}
	s.lastRecv.Store(s.now().UnixNano())
}

// receiveData opens a data packet with header h in place and queues its IP packet; it reports
// whether the queue took pb. The peer-id is not checked: the server's is only a lookup key.
func (s *Session) receiveData(pb *pktBuf, wire []byte, h packet.DataHeader) bool {
	k := s.keys[h.KeyID].Load()
	if k == nil {
		s.stats.drop(dropNoKey)
		return false
	}
	id, pt, err := k.keys.Open(wire, h.Len())
	if err != nil {
		s.stats.drop(dropDecrypt)
		return false
	}
	if !k.replay.Check(id) {
		s.stats.drop(dropReplay)
		return false
	}
	s.lastRecv.Store(s.now().UnixNano())
	if s.next.Load() == k {
		s.promote(k) // the server sends with the renegotiated key: it has it
	}
	if bytes.Equal(pt, packet.PingMagic) || (len(pt) == len(packet.OCCMagic)+1 && bytes.Equal(pt[:len(packet.OCCMagic)], packet.OCCMagic)) {
		return false
	}
	s.stats.rxPackets.Add(1)
	s.stats.rxBytes.Add(uint64(len(pt)))
	if s.cfg.OnPacket != nil {
		s.cfg.OnPacket(s, pt)
		return false
	}
	// pt aliases pb.b (Open works in place given the tail room): its offset follows from the
	// capacities.
	pb.off, pb.n = len(pb.b)-cap(pt), len(pt)
	select {
	case s.in <- pb:
		return true
	default:
		s.stats.drop(dropQueueFull)
		return false
	}
}

// startKeepalive arms the keepalive timer when the server pushed ping or ping-restart.
func (s *Session) startKeepalive() {
	if s.push.Ping <= 0 && s.push.PingRestart <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Err() == nil {
		s.keepalive = time.AfterFunc(s.keepaliveWait(s.now()), s.keepaliveTick)
	}
}

// keepaliveTick sends the ping when nothing was sent for `ping` and ends the session when
// nothing arrived for `ping-restart` (protocol §13), then rearms itself.
func (s *Session) keepaliveTick() {
	if s.Err() != nil {
		return
	}
	now := s.now()
	if r := s.push.PingRestart; r > 0 && now.Sub(time.Unix(0, s.lastRecv.Load())) >= r {
		s.shutdown(ErrPingRestart)
		return
	}
	if p := s.push.Ping; p > 0 && now.Sub(time.Unix(0, s.lastSend.Load())) >= p {
		_ = s.sendData(packet.PingMagic)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Err() == nil {
		s.keepalive.Reset(s.keepaliveWait(now))
	}
}

// keepaliveWait is how long until the next ping or ping-restart check is due.
func (s *Session) keepaliveWait(now time.Time) time.Duration {
	wait := time.Duration(1<<63 - 1)
	if p := s.push.Ping; p > 0 {
		wait = p - now.Sub(time.Unix(0, s.lastSend.Load()))
	}
	if r := s.push.PingRestart; r > 0 {
		wait = min(wait, r-now.Sub(time.Unix(0, s.lastRecv.Load())))
	}
	return max(wait, 10*time.Millisecond)
}

// link is the session's transport: a UDP socket, connected to the server or not, or a TCP
// connection that frames each packet with its 2-byte length (OpenVPN proto tcp-client).
type link struct {
	pc        net.PacketConn
	udp       *net.UDPConn // pc, when it is one: its AddrPort calls do not allocate
	connected bool
	server    netip.AddrPort
	to        net.Addr

	stream net.Conn // set for TCP (pc is then nil)
	wmu    sync.Mutex
	wbuf   []byte // a frame being written, under wmu
	// The receive side of a stream: bytes read but not yet returned, rbuf[rstart:rend]. A read
	// deadline can interrupt a frame halfway; the partial frame waits here for the next read.
	rbuf         []byte
	rstart, rend int
}

func newLink(pc net.PacketConn, server netip.AddrPort) *link {
	server = netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	l := &link{pc: pc, server: server, to: net.UDPAddrFromAddrPort(server)}
	if u, ok := pc.(*net.UDPConn); ok {
		l.udp = u
		ra, ok := u.RemoteAddr().(*net.UDPAddr)
		l.connected = ok && ra != nil
	}
	return l
}

// maxFrame is the largest packet a TCP frame can carry (its length is 16 bits).
const maxFrame = 1<<16 - 1

func newStreamLink(conn net.Conn, server netip.AddrPort) *link {
	return &link{stream: conn, server: server, rbuf: make([]byte, 2*(2+maxFrame))}
}

func (l *link) write(b []byte) error {
	var err error
	switch {
	case l.stream != nil:
		if len(b) > maxFrame {
			return fmt.Errorf("client: %d-byte packet does not fit a TCP frame", len(b))
		}
		l.wmu.Lock()
		l.wbuf = append(l.wbuf[:0], byte(len(b)>>8), byte(len(b)))
		l.wbuf = append(l.wbuf, b...)
		_, err = l.stream.Write(l.wbuf)
		l.wmu.Unlock()
	case l.connected:
		_, err = l.udp.Write(b)
	case l.udp != nil:
		_, err = l.udp.WriteToUDPAddrPort(b, l.server)
	default:
		_, err = l.pc.WriteTo(b, l.to)
	}
	return err
}

// read returns the next packet from the server, skipping datagrams from elsewhere. A packet
// longer than b is cut to len(b).
func (l *link) read(b []byte) (int, error) {
	if l.stream != nil {
		return l.readFrame(b)
	}
	for {
		switch {
		case l.connected:
			return l.udp.Read(b)
		case l.udp != nil:
			n, from, err := l.udp.ReadFromUDPAddrPort(b)
			if err != nil || netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) == l.server {
				return n, err
			}
		default:
			n, from, err := l.pc.ReadFrom(b)
			if err != nil {
				return n, err
			}
			if ua, ok := from.(*net.UDPAddr); ok {
				ap := ua.AddrPort()
				if netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) == l.server {
					return n, nil
				}
			} else if from.String() == l.to.String() {
				return n, nil
			}
		}
	}
}

// readFrame returns the next length-framed packet of the stream. Only the receive goroutine (or
// the handshake before it starts) reads, so the buffer needs no lock.
func (l *link) readFrame(b []byte) (int, error) {
	for {
		if avail := l.rend - l.rstart; avail >= 2 {
			size := int(l.rbuf[l.rstart])<<8 | int(l.rbuf[l.rstart+1])
			if avail >= 2+size {
				n := copy(b, l.rbuf[l.rstart+2:l.rstart+2+size])
				l.rstart += 2 + size
				if l.rstart == l.rend {
					l.rstart, l.rend = 0, 0
				}
				return n, nil
			}
		}
		if len(l.rbuf)-l.rstart < 2+maxFrame {
			// Not room for the largest frame after rstart: move the partial frame to the front.
			l.rend = copy(l.rbuf, l.rbuf[l.rstart:l.rend])
			l.rstart = 0
		}
		k, err := l.stream.Read(l.rbuf[l.rend:])
		l.rend += k
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("client: the server closed the TCP connection: %w", net.ErrClosed)
			}
			return 0, err
		}
	}
}

func (l *link) setReadDeadline(t time.Time) error {
	if l.stream != nil {
		return l.stream.SetReadDeadline(t)
	}
	return l.pc.SetReadDeadline(t)
}

func (l *link) close() error {
	if l.stream != nil {
		return l.stream.Close()
	}
	return l.pc.Close()
}
