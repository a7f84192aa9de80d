package tunnel

import (
	"crypto/tls"
	"crypto/x509"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/cvpn/cvpn/authz"
	"github.com/cvpn/cvpn/tls/channel"
	"github.com/cvpn/cvpn/tls/packet"
	"github.com/cvpn/cvpn/tls/tlscrypt"
	"github.com/cvpn/cvpn/tunnel/bucket"
	"github.com/cvpn/cvpn/tunnel/datacrypto"
	"github.com/cvpn/cvpn/tunnel/replay"
)

// client is one session: its control channel and its data-plane state.
//
// Ownership: the fields set before the client is published in the tables (id, l, localSID,
// remoteSID, ctl, since) never change. addr, peerID, commonName, groupNames, cipher and dataV2 are
// written once by the handshake goroutine before the first data key is stored, and read by the data
// path only after it loads that key (the atomic store/load orders them). authzFor/groups belong to
// the receive goroutine of the client's listener; each dataKey's replay window too.
type client struct {
	id        uint64
	srv       *Server
	link      link
	tcp       *tcpLink         // non-nil for a TCP session
	wrap      tlscrypt.Wrapper // the client's own tls-crypt-v2 key; nil: the endpoint's wrapping
	localSID  packet.SessionID
	remoteSID packet.SessionID
	ctl       *channel.Channel
	since     time.Time

	addrPort atomic.Pointer[netip.AddrPort]
	oob      atomic.Pointer[[]byte] // IP_PKTINFO naming the local address this UDP client talks to

	addr       netip.Addr
	peerID     uint32
	commonName string
	cert       *x509.Certificate
	groupNames []string
	cipher     datacrypto.Cipher
	dataV2     bool
	ekm        bool
	proto      uint32 // IV_PROTO bits the client announced
	framing    framing

	keys    [8]atomic.Pointer[dataKey]
	tlsConn atomic.Pointer[tls.Conn] // TLS of the newest key state, for server-sent control messages
	renegAt atomic.Int64             // unix nanoseconds when the server starts the next renegotiation
	sendKey atomic.Pointer[dataKey]

	// Owned by the goroutine that receives the client's packets (its listener's, or its TCP
	// reader): the policy the fields below were computed for, the user's groups as that policy
	// numbers them, and the upload bucket.
	upFor  *Policy
	groups authz.Groups
	up     bucket.Bucket
	denied []netip.Addr // destinations whose denial was logged
	// Owned by the TUN reader: the download bucket and the policy it was set for.
	downFor *Policy
	down    bucket.Bucket

	lastRecv atomic.Int64 // unix nanoseconds of the last authenticated packet
	lastSend atomic.Int64 // unix nanoseconds of the last data packet sent
	rxBytes  atomic.Uint64
	txBytes  atomic.Uint64

	authenticated atomic.Bool
	timedOut      atomic.Bool
	refused       atomic.Bool
	closed        atomic.Bool
	pushed        atomic.Bool
}

// dataKey is the data-channel state of one key id.
type dataKey struct {
	id      uint8
	keys    *datacrypto.Keys
	replay  replay.Window // owned by the receive goroutine of the client's listener
	sendPID atomic.Uint32
	created time.Time
}

// newerThan reports whether k is a later key than o (key ids wrap 7 -> 1).
func (k *dataKey) newerThan(o *dataKey) bool {
	return o == nil || k.created.After(o.created)
}

func (c *client) remote() netip.AddrPort {
	if p := c.addrPort.Load(); p != nil {
		return *p
	}
	return netip.AddrPort{}
}

func (c *client) setOOB(oob []byte) { c.oob.Store(&oob) }

func (c *client) setRemote(ap netip.AddrPort) {
	c.addrPort.Store(&ap)
}

// uplinkPolicy refreshes what the receive goroutine caches from the policy (groups, upload limit)
// when a reload swapped it, and returns the client's groups.
func (c *client) uplinkPolicy(p *Policy) authz.Groups {
	if c.upFor != p {
		c.groups = p.Authz.Groups(c.groupNames)
		c.up.Set(p.limitFor(c.groupNames))
		c.upFor = p
	}
	return c.groups
}

// downlinkPolicy refreshes the download limit when a reload swapped the policy.
func (c *client) downlinkPolicy(p *Policy) {
	if c.downFor != p {
		c.down.Set(p.limitFor(c.groupNames))
		c.downFor = p
	}
}
