package bench

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"testing"
	"time"
)

func TestFrameCategory(t *testing.T) {
	for fn, want := range map[string]string{
		"crypto/internal/fips140/aes/gcm.gcmAesEnc":                     CostAEAD,
		"crypto/internal/fips140/aes/gcm.(*GCM).Seal":                   CostAEAD,
		"crypto/cipher.(*gcmFallback).Open":                             CostAEAD,
		"golang.org/x/crypto/chacha20poly1305.(*chacha20poly1305).seal": CostAEAD,
		"crypto/internal/fips140/nistec.p256OrdSqr":                     CostPublicKey,
		"crypto/ecdh.x25519ScalarMult":                                  CostPublicKey,
		"crypto/internal/fips140/edwards25519/field.feMul":              CostPublicKey,
		"crypto/x509.(*Certificate).CheckSignatureFrom":                 CostCrypto,
		"p256MulInternal":                                         "",
		"crypto/tls.(*Conn).Handshake":                            CostCrypto,
		"golang.org/x/sys/unix.recvmmsg":                          CostUDP,
		"golang.org/x/sys/unix.Ppoll":                             CostUDP,
		"net.(*UDPConn).WriteMsgUDPAddrPort":                      CostUDP,
		"golang.zx2c4.com/wireguard/tun.(*NativeTun).Write":       CostTUN,
		"github.com/cvpn/cvpn/tunnel/dataplane.(*Plane).writeTUN": CostTUN,
		"syscall.write":                                           CostTUN,
		"golang.zx2c4.com/wireguard/tun.handleGRO":                CostOffload,
		"golang.zx2c4.com/wireguard/tun.gsoSplit":                 CostOffload,
		"github.com/cvpn/cvpn/tunnel/dataplane.(*coalescer).add":  CostOffload,
		"github.com/cvpn/cvpn/nat.(*Table).Translate":             CostNAT,
		"github.com/cvpn/cvpn/authz.(*Engine).checkGroups":        CostCVPN,
		"github.com/cvpn/cvpn/tunnel.(*Server).returnTunnel":      CostCVPN,
		"runtime.scanobject":                                      CostGC,
		"runtime.scanObject":                                      CostGC,
		"runtime.tryDeferToSpanScan":                              CostGC,
		"runtime.scanObjectsSmall":                                CostGC,
		"runtime.(*spanInlineMarkBits).init":                      CostGC,
		"runtime.spanClass.sizeclass":                             "",
		"runtime.gcBgMarkWorker":                                  CostGC,
		"runtime.mallocgc":                                        CostAlloc,
		"runtime.futex":                                           CostScheduler,
		"runtime.findRunnable":                                    CostScheduler,
		"runtime.memmove":                                         "",
		"runtime.exitsyscall":                                     "",
		"internal/runtime/syscall.Syscall6":                       "",
		"syscall.Syscall6":                                        "",
		"encoding/binary.bigEndian.Uint32":                        "",
	} {
		if got := frameCategory(fn); got != want {
			t.Errorf("frameCategory(%q) = %q, want %q", fn, got, want)
		}
	}
}

const tracesText = `File: cvpn
Type: cpu
Time: 2026-11-29 17:29:39 UTC
Duration: 2s, Total samples = 100ms ( 5.00%)
-----------+-------------------------------------------------------
      40ms   crypto/internal/fips140/aes/gcm.gcmAesEnc
             crypto/internal/fips140/aes/gcm.(*GCM).Seal
             github.com/cvpn/cvpn/tunnel/dataplane.(*Plane).send
-----------+-------------------------------------------------------
      30ms   internal/runtime/syscall.Syscall6
             syscall.Syscall6
             golang.org/x/sys/unix.recvmmsg
             github.com/cvpn/cvpn/tunnel/sock.(*udpConn).ReadBatch
-----------+-------------------------------------------------------
         bytes:[1024]
      10ms   runtime.memmove
             github.com/cvpn/cvpn/tunnel/dataplane.(*Plane).route
-----------+-------------------------------------------------------
      10ms   runtime.scanobject
             runtime.gcDrain
             runtime.gcBgMarkWorker
-----------+-------------------------------------------------------
      10ms   encoding/binary.bigEndian.Uint32
-----------+-------------------------------------------------------
`

// TestCostOf: each sample goes to the innermost frame that names a category, and each
// category's time is divided by the packets.
func TestCostOf(t *testing.T) {
	dur, traces, err := parseTraces(strings.NewReader(tracesText))
	if err != nil {
		t.Fatal(err)
	}
	if dur != 2*time.Second || len(traces) != 5 {
		t.Fatalf("duration %v, %d traces; want 2s, 5", dur, len(traces))
	}
	if traces[2].d != 10*time.Millisecond || traces[2].stack[0] != "runtime.memmove" {
		t.Errorf("the labelled trace reads as %v %q", traces[2].d, traces[2].stack)
	}
	p := costOf("test", dur, traces, 1000, "given")
	want := map[string]float64{CostAEAD: 40, CostUDP: 30, CostCVPN: 10, CostGC: 10, CostOther: 10} // µs per packet
	if len(p.Categories) != len(want) {
		t.Errorf("categories %+v, want %v", p.Categories, want)
	}
	for _, c := range p.Categories {
		if w := want[c.Name]; abs(c.USPerPacket-w) > 1e-9 {
			t.Errorf("%s: %.3f µs/packet, want %.3f", c.Name, c.USPerPacket, w)
		}
	}
	if abs(p.USPerPacket-100) > 1e-9 || abs(p.CPUSeconds-0.1) > 1e-9 {
		t.Errorf("total %.3f µs/packet over %.3f s, want 100 over 0.1", p.USPerPacket, p.CPUSeconds)
	}
	if p.Top[0].Name != "crypto/internal/fips140/aes/gcm.gcmAesEnc" || abs(p.Top[0].Percent-40) > 1e-9 {
		t.Errorf("top flat %+v", p.Top[0])
	}

	// The server spent 0.15 s by /proc: the 0.05 s the samples miss is a category of its own
	// and the total follows /proc.
	q := costOf("test", dur, traces, 1000, "given")
	q.addServerCPU(0.15)
	last := q.Categories[len(q.Categories)-1]
	if last.Name != CostUnsampled || abs(last.USPerPacket-50) > 1e-9 || abs(q.USPerPacket-150) > 1e-9 || abs(q.Categories[0].Percent-100*0.04/0.15) > 1e-9 {
		t.Errorf("with /proc's 0.15 s: total %.3f µs/packet, categories %+v", q.USPerPacket, q.Categories)
	}

	// The table: medians over rounds, a total per phase.
	ms := []Measurement{{Profiles: []CPUProfile{*p}}, {Profiles: []CPUProfile{*costOf("test", dur, traces, 500, "given")}}}
	rows := costTableOf(ms)
	if total := rows[len(rows)-1]; total.Category != "total" || abs(total.USPerPacket-150) > 1e-9 {
		t.Errorf("total row %+v, want the median of 100 and 200", total)
	}
	r := &Results{CPUCost: rows}
	if txt := r.CostText(); !strings.Contains(txt, CostAEAD) || !strings.Contains(txt, "60.000") {
		t.Errorf("cost text:\n%s", txt)
	}
}

func abs(v float64) float64 {
	if v < 0 {
		return -v
	}
	return v
}

// TestAnalyzeProfile reads a real CPU profile of AES-GCM sealing with the go tool: most of it
// is AEAD.
func TestAnalyzeProfile(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal("the go command is not on PATH")
	}
	path := filepath.Join(t.TempDir(), "cpu.pprof")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := aes.NewCipher(make([]byte, 32))
	gcm, _ := cipher.NewGCM(block)
	buf := make([]byte, 1400, 1400+16)
	nonce := make([]byte, 12)
	if err := pprof.StartCPUProfile(f); err != nil {
		t.Fatal(err)
	}
	var n float64
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); n++ {
		for range 100 {
			gcm.Seal(buf[:0], nonce, buf, nil)
		}
	}
	pprof.StopCPUProfile()
	f.Close()
	p, err := AnalyzeProfile(context.Background(), goBin, path, "gcm", 100*n, "sealed")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Categories) == 0 || p.Categories[0].Name != CostAEAD || p.Categories[0].Percent < 50 {
		t.Errorf("categories %+v: want AEAD first and most", p.Categories)
	}
	if p.USPerPacket <= 0 || p.Seconds <= 0 {
		t.Errorf("%.3f µs/packet over %.2f s", p.USPerPacket, p.Seconds)
	}
}
