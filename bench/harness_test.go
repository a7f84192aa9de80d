package bench

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvpn/cvpn/internal/netlab"
)

// TestLoadAgainstBothServers is the load generator's short end-to-end check, run by `make test`:
// a few bench sessions connect to cvpn and to the stock openvpn server, each in its own
// namespaces with the same PKI, over UDP and over TCP, and pass traffic to a sink in the private
// network and back.
func TestLoadAgainstBothServers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it creates network namespaces and runs cvpn and openvpn with TUN devices (run go test as root, as CI does)")
	}
	if _, err := exec.LookPath("openvpn"); err != nil {
		t.Fatal("openvpn 2.6 is not installed (apt-get install openvpn)")
	}
	bin := filepath.Join(t.TempDir(), "cvpn")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel) // after the parallel subtests, unlike a defer
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "../cmd/cvpn").CombinedOutput(); err != nil {
		t.Fatalf("go build cvpn: %v\n%s", err, out)
	}
	fx, err := WriteFixtures(t.TempDir(), FixtureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const sessions = 4
	certs, err := Identities(fx.Endpoint.CA, sessions)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		kind ServerKind
		tcp  bool
	}{{CVPN, false}, {OpenVPN, false}, {CVPN, true}, {OpenVPN, true}} {
		kind := tc.kind
		name := string(kind) + "/udp"
		if tc.tcp {
			name = string(kind) + "/tcp"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			lab, err := NewLab(ctx, kind, fx, LabOptions{RouteIfNoIptables: true})
			if err != nil {
				t.Fatal(err)
			}
			defer lab.Close()
			srv, err := lab.StartServer(ctx, ServerOptions{CVPNBin: bin, TCP: tc.tcp})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if t.Failed() {
					t.Logf("%s output:\n%s", kind, tail(srv.Output(), 6000))
				}
			}()
			conn, err := netlab.ListenUDPIn(lab.Net.VPC)
			if err != nil {
				t.Fatal(err)
			}
			sink := NewSink(conn)
			sctx, stopSink := context.WithCancel(ctx)
			var wg sync.WaitGroup
			wg.Go(func() { _ = sink.Run(sctx) })
			defer func() { stopSink(); wg.Wait() }()

			rep, err := RunLoad(ctx, LoadConfig{
				Server:   lab.BenchServer,
				Sink:     netip.AddrPortFrom(netlab.VPCHost, sink.Addr().Port()),
				Sessions: sessions,
				Settle:   200 * time.Millisecond,
				Hold:     time.Second,
				// Gateway echoes while holding: both servers answer them (cvpn in its data
				// plane, openvpn's kernel at its TUN address).
				HoldProbeRate: 100,
				IdleProbe:     500 * time.Millisecond,
				Duration:      1500 * time.Millisecond,
				RateMbps:      5,
				ProbeRate:     200,
				Identity:      func(i int) (tls.Certificate, error) { return certs[i], nil },
				RootCAs:       fx.RootCAs,
				TLSCrypt:      fx.TLSCrypt,
				TCP:           tc.tcp,
				Dial: func(context.Context) (net.PacketConn, error) {
					return netlab.ListenUDPIn(lab.BenchNS)
				},
				DialTCP: func(context.Context) (net.Conn, error) {
					return netlab.DialTCPIn(lab.BenchNS, lab.BenchServer)
				},
				ServerPID: srv.PID(),
				Log:       slog.New(slog.NewTextHandler(testWriter{t}, nil)),
			})
			if err != nil {
				t.Fatalf("load against %s: %v", kind, err)
			}
			t.Logf("%s (nat %q):\n%s", kind, lab.NAT, rep.Summary())
			if rep.SessionsConnected != sessions || rep.SessionsAlive != sessions {
				t.Fatalf("%d connected, %d alive, want %d: %v", rep.SessionsConnected, rep.SessionsAlive, sessions, rep.FailureReasons)
			}
			tr := rep.Traffic
			if tr.DeliveredPkts == 0 || tr.Loss > 0.2 {
				t.Fatalf("sink received %d of %d data packets", tr.DeliveredPkts, tr.SentPkts)
			}
			if tr.PerSessionMbps.Min <= 0 {
				t.Fatalf("a session delivered nothing: %+v", tr.PerSessionMbps)
			}
			if tr.RTTIdleUs.Count == 0 || tr.RTTLoadUs.Count == 0 {
				t.Fatalf("no probe came back through the tunnel (idle %d, loaded %d)", tr.RTTIdleUs.Count, tr.RTTLoadUs.Count)
			}
			if h := rep.HoldRTTUs; h == nil || h.Count == 0 || rep.HoldEchoes == 0 {
				t.Fatalf("no gateway echo came back while holding (%d sent)", rep.HoldEchoes)
			}
			if p := rep.ServerProc; p == nil || p.Name != string(kind) || p.RSSBeforeKiB == 0 {
				t.Fatalf("server process sample %+v, want %s", p, kind)
			}
		})
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
