package tunnel

import (
	"bufio"
	"encoding/binary"
	"net"
	"sync"
	"time"
)

// link is how packets reach one client: a UDP listener and the client's address, or the client's
// own TCP connection. send never blocks on the network; a TCP link that cannot keep up drops.
type link interface {
	send(pkt []byte)
	// proto is the transport as OpenVPN's options string names it.
	proto() string
	close()
}

// udpLink sends through a shared UDP socket to the client's current address.
type udpLink struct {
	l *udpListener
	c *client
}

func (u udpLink) send(pkt []byte) { u.l.send(pkt, u.c.remote(), *u.c.oob.Load()) }
func (u udpLink) proto() string   { return "UDPv4" }
func (u udpLink) close()          {}

// tcpQueueLen bounds the packets waiting for one TCP client; beyond it packets are dropped, so a
// stalled client never holds memory or other clients back.
const tcpQueueLen = 1024

// tcpWriteTimeout ends a TCP session whose peer stops reading.
const tcpWriteTimeout = 30 * time.Second

// tcpLink frames packets with their 2-byte length and hands them to the connection's writer
// goroutine through a bounded queue.
type tcpLink struct {
	conn  net.Conn
	queue chan []byte
	done  chan struct{}
	once  sync.Once
	drops *dropCounters
}

var framePool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

func newTCPLink(conn net.Conn, drops *dropCounters) *tcpLink {
	t := &tcpLink{conn: conn, queue: make(chan []byte, tcpQueueLen), done: make(chan struct{}), drops: drops}
	go t.writeLoop()
	return t
}

func (t *tcpLink) proto() string { return "TCPv4_SERVER" }

func (t *tcpLink) send(pkt []byte) {
	bp := framePool.Get().(*[]byte)
	b := binary.BigEndian.AppendUint16((*bp)[:0], uint16(len(pkt)))
	b = append(b, pkt...)
	select {
	case t.queue <- b:
	case <-t.done:
		framePool.Put(bp)
	default:
		framePool.Put(bp)
		t.drops.add(DropTCPBackpressure, "remote", t.conn.RemoteAddr().String())
	}
}

// writeLoop writes queued frames, flushing whenever the queue runs dry.
func (t *tcpLink) writeLoop() {
	w := bufio.NewWriterSize(t.conn, 64<<10)
	for {
		var b []byte
		select {
		case b = <-t.queue:
		case <-t.done:
			return
		}
		_ = t.conn.SetWriteDeadline(time.Now().Add(tcpWriteTimeout))
		_, err := w.Write(b)
		b = b[:0]
		framePool.Put(&b)
		if err == nil && len(t.queue) == 0 {
			err = w.Flush()
		}
		if err != nil {
			t.close()
			return
		}
	}
}

func (t *tcpLink) close() {
	t.once.Do(func() {
		close(t.done)
		t.conn.Close()
	})
}
