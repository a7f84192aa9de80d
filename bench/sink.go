package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
)

// maxSinkSessions bounds the per-session counters a sink keeps (16 bytes each); data from a
// higher session index is counted in the totals only.
const maxSinkSessions = 1 << 20

// Sink is the traffic target in the private network: it counts data messages per session for
// the current epoch, echoes probes, and answers stats and reset requests. It owns its counters
// on the one goroutine that reads the socket, so it needs no lock.
type Sink struct {
	conn *net.UDPConn

	epoch       uint16
	start       time.Time // monotonic base of the times below
	warmup      int64     // ns after the epoch's first data message during which data is not counted
	epochStart  int64     // arrival of the epoch's first data message, ns since start; -1 before it
	first, last int64     // arrival of the first and last counted data message
	warm        uint64    // data messages of the epoch that arrived during the warm-up
	packets     uint64    // data messages of the epoch counted
	bytes       uint64    // their IP bytes
	other       uint64    // bench messages of another epoch and anything else
	sessions    []counter

	// Totals for the owner's log, readable from other goroutines.
	seen, echoed atomic.Uint64
}

// NewSink serves on conn, which the caller opened (in the private network's namespace).
func NewSink(conn *net.UDPConn) *Sink { return &Sink{conn: conn, start: time.Now(), epochStart: -1} }

// Addr is the address the sink listens on.
func (s *Sink) Addr() netip.AddrPort {
	return s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Counts reports how many datagrams the sink received and how many it answered.
func (s *Sink) Counts() (seen, answered uint64) { return s.seen.Load(), s.echoed.Load() }

// Run serves until ctx ends, then closes the socket.
func (s *Sink) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { _ = s.conn.Close() })
	defer stop()
	pc := ipv4.NewPacketConn(s.conn)
	const batch = 64
	msgs := make([]ipv4.Message, batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	reply := make([]byte, 0, statsReplyLen)
	for {
		n, err := pc.ReadBatch(msgs, 0)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("bench: sink: read: %w", err)
		}
		for i := range msgs[:n] {
			m := &msgs[i]
			s.seen.Add(1)
			from, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			if out := s.handle(m.Buffers[0][:m.N], reply); out != nil {
				if _, err := s.conn.WriteToUDPAddrPort(out, from.AddrPort()); err == nil {
					s.echoed.Add(1)
				}
			}
		}
	}
}

// handle accounts for one datagram and returns the answer to send, if any (in reply's array or
// in b itself).
func (s *Sink) handle(b, reply []byte) []byte {
	h, err := parseHeader(b)
	if err != nil {
		s.other++
		return nil
	}
	switch h.typ {
	case msgData:
		if h.epoch != s.epoch {
			s.other++
			return nil
		}
		ipBytes := uint64(len(b) + ipUDPHeaders)
		now := int64(time.Since(s.start))
		if s.epochStart < 0 {
			s.epochStart = now
		}
		if now-s.epochStart < s.warmup {
			s.warm++
			return nil
		}
		if s.packets == 0 {
			s.first = now
		}
		s.last = now
		s.packets++
		s.bytes += ipBytes
		if h.session < maxSinkSessions {
			if int(h.session) >= len(s.sessions) {
				s.sessions = append(s.sessions, make([]counter, int(h.session)+1-len(s.sessions))...)
			}
			c := &s.sessions[h.session]
			c.packets++
			c.bytes += ipBytes
		}
		return nil
	case msgProbe:
		return b
	case msgReset:
		// The reset's sent field carries the warm-up in ns.
		s.epoch, s.warmup, s.epochStart = h.epoch, max(h.sent, 0), -1
		s.packets, s.bytes, s.other, s.warm = 0, 0, 0, 0
		clear(s.sessions)
		b[4] = msgResetAck
		return b[:headerLen]
	case msgStatsReq:
		r := statsReply{hdr: h, packets: s.packets, bytes: s.bytes, other: s.other, span: s.last - s.first, first: h.session}
		r.hdr.typ = msgStatsReply
		r.hdr.epoch = s.epoch
		if first := int(h.session); first < len(s.sessions) {
			r.sessions = s.sessions[first:min(len(s.sessions), first+statsPage)]
		}
		return r.append(reply)
	default:
		s.other++
		return nil
	}
}

// ServeSink listens on addr and serves until ctx ends; it logs a line a second while traffic
// flows when logf is set.
func ServeSink(ctx context.Context, addr netip.AddrPort, logf func(format string, args ...any)) error {
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return fmt.Errorf("bench: sink: %w", err)
	}
	_ = conn.SetReadBuffer(8 << 20)
	_ = conn.SetWriteBuffer(4 << 20)
	s := NewSink(conn)
	if logf != nil {
		logf("sink listening on %s", s.Addr())
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			var last uint64
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					seen, answered := s.Counts()
					if seen != last {
						logf("sink: %d datagrams received, %d answered", seen, answered)
						last = seen
					}
				}
			}
		}()
	}
	return s.Run(ctx)
}
