package host

import (
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// The endpoint host's own destinations: what the kernel delivers to the host itself rather than
// forwards. A client packet that the engine writes into the TUN goes to a local socket when its
// destination is one of them, so the engine refuses them (unless allow_host_access says
// otherwise); this file finds them and keeps them current.
//
// They are read from the kernel's local routing tables (table 255 of each family), which is what
// the kernel itself consults to decide local delivery: an entry of type local for every address
// of every interface (the TUN's too, if it has one; IPv6 link-local addresses and ::1 among them)
// and for the IPv4 loopback range, an entry of type broadcast for each IPv4 subnet's broadcast
// address, one of type anycast for each IPv6 subnet-router anycast address the host answers
// (RFC 4291 2.6.1: a forwarding host has one for each subnet of its interfaces), and any range an
// operator made local (`ip route add local 192.0.2.0/24 dev lo`). Some destinations are delivered
// locally without an entry of their own, so they are always added (fixedOwn).

// fixedOwn are the destinations the kernel delivers to the host whatever its addresses: the
// limited broadcast address and multicast (to the groups its sockets joined; it never forwards
// multicast without a multicast router) of both families, ::1, and the IPv6 link-local range,
// which is each link's own and never forwarded: a client has no business with the link-local
// addresses of the endpoint's links, the TUN's included.
var fixedOwn = []netip.Prefix{
	netip.MustParsePrefix("255.255.255.255/32"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("ff00::/8"),
}

// Watch timings.
const (
	// addrRefresh is how often the list is read again even without an announcement, so that one
	// lost in an overflowing netlink socket is made good within it.
	addrRefresh = 30 * time.Second
	// addrSettle gathers the burst of announcements that one address change makes (local,
	// broadcast and prefix routes) into one read.
	addrSettle = 50 * time.Millisecond
	// addrResubscribe is how long after a subscription ended by itself the watch subscribes
	// again.
	addrResubscribe = time.Second
)

// addrSource is where a watch reads the host's own destinations and learns that they changed.
type addrSource struct {
	// list reads the destinations, sorted.
	list func() ([]netip.Prefix, error)
	// subscribe starts listening for announcements of a change until done is closed: a value
	// on the channel for each (a burst may merge into one), the channel closed once the
	// subscription ended (after done, or when it failed).
	subscribe func(done <-chan struct{}) (<-chan struct{}, error)
	// refresh, settle and resubscribe are addrRefresh, addrSettle and addrResubscribe; tests
	// shorten them.
	refresh, settle, resubscribe time.Duration
}

// AddrWatch keeps the host's own destinations current; Close stops it.
type AddrWatch struct {
	src     addrSource
	changed func([]netip.Prefix)
	log     *slog.Logger

	// subFailing says the last attempt to subscribe failed; owned by the watch's goroutine.
	subFailing bool

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// WatchOwnAddrs returns the destinations the kernel delivers to this host itself (sorted) and
// keeps watching them: changed is called with the whole new list each time it changes, from the
// watch's own goroutine, one call at a time. Changes are read again when the kernel announces a
// change of its local routing table, and every 30 seconds in any case. When the kernel will not
// announce changes the watch reads every 30 seconds only and says so in the log; when the list
// cannot be read at all, it returns the error and watches nothing.
func WatchOwnAddrs(changed func([]netip.Prefix), log *slog.Logger) ([]netip.Prefix, *AddrWatch, error) {
	return ownAddrSource().watch(changed, log)
}

// watch subscribes first and reads then, so that no change between the two goes unnoticed.
func (src addrSource) watch(changed func([]netip.Prefix), log *slog.Logger) ([]netip.Prefix, *AddrWatch, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &AddrWatch{src: src, changed: changed, log: log, stop: make(chan struct{}), done: make(chan struct{})}
	sub := w.subscribe()
	first, err := src.list()
	if err != nil {
		sub.end()
		return nil, nil, &Error{Op: "list the host's own addresses (local routing table)", Err: err}
	}
	go w.run(first, sub)
	return first, w, nil
}

// Close stops the watch and waits until it has; changed is not called after. It is safe on a
// nil AddrWatch and safe to call again.
func (w *AddrWatch) Close() {
	if w == nil {
		return
	}
	w.once.Do(func() { close(w.stop) })
	<-w.done
}

// subscription is one subscription to change announcements; events is nil when there is none.
type subscription struct {
	events <-chan struct{}
	done   chan struct{}
}

// subscribe subscribes to announcements; on failure it returns none, and logs the first failure
// of a run of them.
func (w *AddrWatch) subscribe() subscription {
	done := make(chan struct{})
	events, err := w.src.subscribe(done)
	if err != nil {
		if !w.subFailing {
			w.log.Warn("host: the kernel does not announce address changes; reading them again every interval instead", "interval", w.src.refresh, "err", err)
		}
		w.subFailing = true
		return subscription{}
	}
	w.subFailing = false
	return subscription{events: events, done: done}
}

// end ends the subscription and waits until its channel is closed.
func (s subscription) end() {
	if s.events == nil {
		return
	}
	close(s.done)
	for range s.events {
	}
}

func (w *AddrWatch) run(last []netip.Prefix, sub subscription) {
	defer close(w.done)
	refresh := time.NewTicker(w.src.refresh)
	defer refresh.Stop()
	var settle, resubscribe <-chan time.Time
	var listErr error
	read := func() {
		cur, err := w.src.list()
		if err != nil {
			if listErr == nil {
				w.log.Warn("host: reading the host's own addresses failed; the last list stays in force", "err", err)
			}
			listErr = err
			return
		}
		listErr = nil
		if !slices.Equal(cur, last) {
			last = cur
			w.changed(cur)
		}
	}
	for {
		select {
		case <-w.stop:
			sub.end()
			return
		case _, ok := <-sub.events:
			if !ok {
				// The subscription ended by itself (an overflowing socket loses announcements):
				// read now, and subscribe again in a moment (then read again, so that nothing
				// falls between the two); not at once, which could spin.
				close(sub.done) // netlink keeps the socket until told
				sub = subscription{}
				read()
				resubscribe = time.After(w.src.resubscribe)
				continue
			}
			if settle == nil {
				settle = time.After(w.src.settle)
			}
		case <-settle:
			settle = nil
			read()
		case <-resubscribe:
			resubscribe = nil
			sub = w.subscribe()
			read()
		case <-refresh.C:
			if sub.events == nil && resubscribe == nil {
				sub = w.subscribe()
			}
			read()
		}
	}
}
