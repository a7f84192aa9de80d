package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestEchoRoundTrip: a request turned into a reply the way a router does (type 0, checksum
// adjusted, addresses swapped) parses back to its sent time; the request itself, a reply with
// another identifier and truncated packets do not.
func TestEchoRoundTrip(t *testing.T) {
	src, gw := netip.MustParseAddr("10.64.0.7"), netip.MustParseAddr("10.64.0.1")
	req := buildEcho(make([]byte, echoLen), src, gw, 7, 123456789)
	if fold(sum16(req[:20])) != 0xffff || fold(sum16(req[20:])) != 0xffff {
		t.Fatal("request checksums do not verify")
	}
	if _, ok := parseEchoReply(req); ok {
		t.Error("a request parsed as a reply")
	}
	rep := append([]byte(nil), req...)
	copy(rep[12:16], req[16:20])
	copy(rep[16:20], req[12:16])
	rep[20] = 0
	binary.BigEndian.PutUint16(rep[22:], 0)
	binary.BigEndian.PutUint16(rep[22:], ^fold(sum16(rep[20:])))
	if sent, ok := parseEchoReply(rep); !ok || sent != 123456789 {
		t.Errorf("reply: %d, %v", sent, ok)
	}
	for n := range len(rep) {
		if _, ok := parseEchoReply(rep[:n]); ok {
			t.Errorf("a reply cut to %d bytes parsed", n)
		}
	}
	other := append([]byte(nil), rep...)
	other[25]++
	if _, ok := parseEchoReply(other); ok {
		t.Error("a reply with another identifier parsed")
	}
}

// TestSourceAddrs: distinct addresses in SourcePrefix, the first 512 each in its own /24.
func TestSourceAddrs(t *testing.T) {
	addrs := SourceAddrs(1100)
	seen, nets := map[netip.Addr]bool{}, map[netip.Prefix]int{}
	for i, a := range addrs {
		if !SourcePrefix.Contains(a) || seen[a] || a.As4()[3] == 0 || a.As4()[3] == 255 {
			t.Fatalf("address %d: %v (repeated or outside %v or a network/broadcast address)", i, a, SourcePrefix)
		}
		seen[a] = true
		nets[netip.PrefixFrom(a, 24).Masked()]++
		if i == 511 && len(nets) != 512 {
			t.Fatalf("the first 512 addresses use %d /24s", len(nets))
		}
	}
	if len(addrs) != 1100 || len(nets) != 512 {
		t.Errorf("%d addresses in %d /24s", len(addrs), len(nets))
	}
}

// TestRampTimeout: sessions a ramp did not start within RampTimeout count as failures of their
// own kind, and none is dialled.
func TestRampTimeout(t *testing.T) {
	dialled := 0
	rep, err := RunLoad(context.Background(), LoadConfig{
		Server:      netip.MustParseAddrPort("127.0.0.1:1"),
		Sessions:    3,
		RampTimeout: time.Nanosecond,
		Identity:    func(int) (tls.Certificate, error) { dialled++; return tls.Certificate{}, nil },
		RootCAs:     x509.NewCertPool(),
	})
	if err == nil || !strings.Contains(err.Error(), "ramp ran out of time") {
		t.Fatalf("error %v, want the ramp timeout named", err)
	}
	if rep.ConnectFailures != 3 || rep.FailureReasons[errRampTimeout.Error()] != 3 || dialled != 0 {
		t.Errorf("%d failures %v, %d sessions started; want 3 ramp timeouts and none started", rep.ConnectFailures, rep.FailureReasons, dialled)
	}
}

// TestProfileRamp: the ramp's profile starts a second in, and the report keeps it with the
// handshakes that completed while it ran; a profile that fails leaves its error instead.
func TestProfileRamp(t *testing.T) {
	var connected atomic.Int64
	var calls atomic.Int32
	l := &load{cfg: LoadConfig{ProfileRamp: 2, RampProfile: func(ctx context.Context, seconds int) ([]byte, error) {
		calls.Add(1)
		if seconds != 2 {
			return nil, fmt.Errorf("asked for %d seconds, want 2", seconds)
		}
		connected.Add(7) // handshakes that complete during the profile
		return []byte("profile"), nil
	}}}
	connected.Store(100) // before the profile starts
	rep := &LoadReport{}
	start := time.Now()
	l.profileRamp(context.Background(), rep, &connected)
	if since := time.Since(start); since < time.Second {
		t.Errorf("profile started %v into the ramp, want after a second", since)
	}
	if calls.Load() != 1 || string(rep.RampProfile) != "profile" || rep.RampProfileHandshakes != 7 || rep.RampProfileSeconds != 2 || rep.RampProfileError != "" {
		t.Fatalf("report %+v after %d calls: want the profile, 7 handshakes over 2 s", rep, calls.Load())
	}

	l.cfg.RampProfile = func(context.Context, int) ([]byte, error) { return nil, errors.New("admin socket gone") }
	rep = &LoadReport{}
	l.profileRamp(context.Background(), rep, &connected)
	if rep.RampProfile != nil || rep.RampProfileError != "admin socket gone" {
		t.Fatalf("failed profile: report %+v, want its error and no profile", rep)
	}
}
