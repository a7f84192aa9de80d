package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Where a server's CPU goes, per packet: the harness takes a CPU profile of cvpn during a
// measured phase (the admin API's /debug/pprof/profile), files every sample under the innermost
// frame of its stack that names a cost category, and divides each category's CPU time by the
// packets the server forwarded in the profile's window.
//
// The profile is read through `go tool pprof -traces` (one stack per sample, innermost frame
// first), so the module needs no pprof parser of its own; the harness therefore needs the Go
// tool (HarnessConfig.GoBin).

// FetchProfile takes a CPU profile of seconds from the cvpn admin API at the unix socket path
// (GET /debug/pprof/profile, endpoint/admin); it returns the profile in pprof's format.
func FetchProfile(ctx context.Context, socket string, seconds int) ([]byte, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, time.Duration(seconds)*time.Second+30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://cvpn/debug/pprof/profile?seconds="+strconv.Itoa(seconds), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("bench: CPU profile from %s: %w", socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("bench: CPU profile from %s: %w", socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bench: CPU profile from %s: %s: %s", socket, resp.Status, tail(string(b), 300))
	}
	return b, nil
}

// CPUProfile is one profile of a measured phase and what it says per packet.
type CPUProfile struct {
	Phase string `json:"phase"` // "iperf-upload", "iperf-download", "sessions-1000"
	File  string `json:"file,omitempty"`
	// Seconds is the profile's wall-clock length; CPUSeconds the CPU time its samples hold;
	// ServerCPUSeconds the server's CPU time over the same window by /proc (0: not read).
	Seconds          float64 `json:"seconds"`
	CPUSeconds       float64 `json:"cpu_seconds"`
	ServerCPUSeconds float64 `json:"server_cpu_seconds,omitempty"`
	// Packets are the data packets the server forwarded in the window; PacketsFrom says how
	// they were counted.
	Packets     float64 `json:"packets"`
	PacketsFrom string  `json:"packets_from"`
	// USPerPacket is the CPU per packet, in microseconds (ServerCPUSeconds when larger than
	// CPUSeconds, the difference being CostUnsampled); Categories splits it.
	USPerPacket float64    `json:"us_per_packet"`
	Categories  []CostPart `json:"categories"`
	// Top lists the functions with the most samples of their own (flat), for the categories'
	// sake: what "other" is made of.
	Top []CostPart `json:"top_flat,omitempty"`
}

// CostPart is one category's (or function's) share.
type CostPart struct {
	Name        string  `json:"name"`
	CPUSeconds  float64 `json:"cpu_seconds"`
	USPerPacket float64 `json:"us_per_packet"`
	Percent     float64 `json:"percent"`
}

// Cost categories, in the order of the table.
const (
	CostAEAD      = "AEAD (AES-GCM, ChaCha20-Poly1305)"
	CostPublicKey = "public-key (ECDSA, EdDSA, RSA, ECDH)"
	CostCrypto    = "other crypto (TLS, HMAC, keys)"
	CostUDP       = "UDP syscalls (recvmmsg/sendmmsg/ppoll)"
	CostTUN       = "TUN read/write syscalls"
	CostOffload   = "GSO split / GRO coalesce, checksums"
	CostNAT       = "NAT"
	CostScheduler = "runtime: scheduler, locks, timers"
	CostGC        = "runtime: GC"
	CostAlloc     = "runtime: malloc"
	CostCVPN      = "cvpn code (packet path, sessions)"
	CostOther     = "other"
	// CostUnsampled is CPU time the server's /proc counters show in the window but the profile's
	// samples do not hold (threads the profiler's per-thread timers did not reach, for one).
	CostUnsampled = "not in the profile's samples"
)

var costOrder = []string{CostAEAD, CostPublicKey, CostCrypto, CostUDP, CostTUN, CostOffload, CostNAT, CostCVPN, CostScheduler, CostGC, CostAlloc, CostOther, CostUnsampled}

// frameCategory names the category a stack frame (a function name as pprof prints it) belongs
// to, or "" when the frame names none and the caller decides. Syscall wrappers and the
// runtime's syscall entry and exit name none, so a syscall is filed by who made it.
func frameCategory(fn string) string {
	lower := strings.ToLower(fn)
	// The package path and the name after it: "golang.zx2c4.com/wireguard/tun.(*NativeTun).Write"
	// -> "tun", "(*NativeTun).Write".
	path, name := fn, ""
	if i := strings.LastIndex(fn, "/"); i >= 0 {
		path = fn[i+1:]
	}
	pkg := path
	if i := strings.Index(path, "."); i >= 0 {
		pkg, name = path[:i], path[i+1:]
	}
	full := strings.TrimSuffix(fn, "."+name)
	switch {
	case strings.HasPrefix(fn, "runtime."):
		return runtimeCategory(name)
	case strings.Contains(full, "crypto/") && (strings.Contains(full, "/aes") || strings.Contains(full, "/cipher") ||
		strings.Contains(full, "gcm") || strings.Contains(full, "chacha20") || strings.Contains(full, "poly1305")):
		return CostAEAD
	case publicKeyPackage(full):
		return CostPublicKey
	case strings.HasPrefix(fn, "crypto/") || strings.HasPrefix(fn, "golang.org/x/crypto/"):
		return CostCrypto
	case strings.Contains(lower, "mmsg") || strings.Contains(lower, "recvmsg") || strings.Contains(lower, "sendmsg") ||
		strings.Contains(lower, "ppoll") || strings.Contains(lower, "udpconn") || strings.Contains(lower, "recvfrom") ||
		strings.Contains(lower, "sendto"):
		return CostUDP
	case pkg == "nat":
		return CostNAT
	case offloadName(name) || strings.Contains(lower, "coalesce") || strings.Contains(lower, "checksum"):
		return CostOffload
	case pkg == "tun" || strings.Contains(name, "TUN") || (strings.Contains(name, "Tun") && !strings.Contains(name, "Tunnel")):
		return CostTUN
	case slices.Contains([]string{"syscall.read", "syscall.write", "syscall.readv", "syscall.writev",
		"golang.org/x/sys/unix.read", "golang.org/x/sys/unix.write", "golang.org/x/sys/unix.Readv", "golang.org/x/sys/unix.Writev",
		"os.(*File).Read", "os.(*File).Write"}, fn):
		// The packet path's only plain reads and writes are the TUN device's (UDP goes by
		// recvmmsg/sendmmsg).
		return CostTUN
	case strings.HasPrefix(fn, "github.com/cvpn/cvpn/"):
		return CostCVPN
	}
	return ""
}

// publicKeyPackage reports whether pkg (a function's full package path) implements public-key
// signatures or key agreement: the handshake's signatures, certificate checks and key shares.
// The curves' assembly (p256MulInternal) names no package and goes to its caller.
func publicKeyPackage(pkg string) bool {
	for _, p := range []string{"crypto/ecdsa", "crypto/ecdh", "crypto/ed25519", "crypto/rsa", "crypto/elliptic",
		"crypto/internal/fips140/ecdsa", "crypto/internal/fips140/ecdh", "crypto/internal/fips140/ed25519",
		"crypto/internal/fips140/rsa", "crypto/internal/fips140/nistec", "crypto/internal/fips140/edwards25519",
		"crypto/internal/fips140/bigmod", "crypto/internal/fips140/mlkem", "golang.org/x/crypto/curve25519",
		"golang.org/x/crypto/ed25519"} {
		if pkg == p || strings.HasPrefix(pkg, p+"/") || strings.HasPrefix(pkg, p+".") {
			return true
		}
	}
	return false
}

// offloadName reports whether a function name speaks of GSO or GRO as a word: handleGRO,
// gsoSplit, tcpGro, but not checkGroups.
func offloadName(name string) bool {
	for part := range strings.SplitSeq(name, ".") {
		part = strings.TrimLeft(part, "(*")
		for _, w := range []string{"GSO", "GRO", "Gso", "Gro", "gso", "gro"} {
			for i := 0; i < len(part); {
				j := strings.Index(part[i:], w)
				if j < 0 {
					break
				}
				at := i + j
				end := at + len(w)
				startOK := w[0] < 'a' || at == 0 // a lowercase word starts the name
				endOK := end == len(part) || part[end] < 'a' || part[end] > 'z'
				if startOK && endOK {
					return true
				}
				i = at + 1
			}
		}
	}
	return false
}

// runtimeCategory files a runtime function: the collector, the allocator, or the scheduler
// and its locks; memmove, memclr and the syscall entry and exit name none (the caller decides).
func runtimeCategory(name string) string {
	lower := strings.ToLower(name)
	switch {
	case strings.HasPrefix(name, "gc") || strings.HasPrefix(name, "(*gc") || strings.Contains(lower, "scanobject") ||
		strings.Contains(name, "markroot") || strings.Contains(name, "greyobject") || strings.Contains(name, "sweep") ||
		strings.Contains(name, "scaveng") || strings.Contains(name, "wbBuf") || strings.Contains(name, "findObject") ||
		strings.Contains(name, "scanblock") || strings.Contains(name, "scanstack") || strings.Contains(name, "scanframe") ||
		strings.Contains(name, "bulkBarrier") || strings.Contains(name, "gcWriteBarrier") ||
		// The span-wise marking of Go 1.25's collector: scanSpan, tryDeferToSpanScan,
		// (*spanInlineMarkBits).init, (*spanQueue).get.
		strings.Contains(lower, "spanscan") || strings.Contains(lower, "scanspan") || strings.Contains(lower, "markbits") ||
		strings.Contains(lower, "spanqueue"):
		return CostGC
	case strings.HasPrefix(name, "spanClass."):
		return "" // shared by the allocator and the collector: the caller decides
	case strings.HasPrefix(name, "malloc") || strings.HasPrefix(name, "newobject") || strings.HasPrefix(name, "makeslice") ||
		strings.HasPrefix(name, "growslice") || strings.HasPrefix(name, "(*mcache)") || strings.HasPrefix(name, "(*mcentral)") ||
		strings.HasPrefix(name, "(*mheap)") || strings.HasPrefix(name, "nextFreeFast") || strings.HasPrefix(name, "(*mspan)"):
		return CostAlloc
	case strings.HasPrefix(name, "mem") || strings.Contains(name, "entersyscall") || strings.Contains(name, "exitsyscall") ||
		strings.HasPrefix(name, "cgocall") || strings.HasPrefix(name, "asmcgocall") || name == "goexit" ||
		strings.HasPrefix(name, "main") || strings.HasPrefix(name, "_ExternalCode") || strings.HasPrefix(name, "_System") ||
		strings.HasPrefix(name, "_VDSO") || strings.HasPrefix(name, "_GC"):
		return ""
	}
	return CostScheduler
}

// trace is one sample of a profile: its CPU time and its stack, innermost frame first.
type trace struct {
	d     time.Duration
	stack []string
}

// parseTraces reads `go tool pprof -traces` output: a header, then blocks separated by
// "-----------+---" lines, each a value ("10ms") and the first frame on one line and one frame
// on each following line. Label lines (pprof labels, "key:value" after the value column) are
// skipped.
func parseTraces(r io.Reader) (dur time.Duration, traces []trace, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var cur *trace
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "-----------+") {
			if cur != nil && len(cur.stack) > 0 {
				traces = append(traces, *cur)
			}
			cur = &trace{}
			continue
		}
		if cur == nil {
			if v, ok := strings.CutPrefix(line, "Duration: "); ok {
				f, _, _ := strings.Cut(v, ",")
				dur, _ = time.ParseDuration(strings.TrimSpace(f))
			}
			continue
		}
		if len(line) < 12 {
			continue
		}
		if val := strings.TrimSpace(line[:11]); val != "" {
			d, perr := parseValue(val)
			if perr != nil {
				// A label line ("bytes:[...]") in the value column.
				continue
			}
			cur.d += d
		}
		if fn := strings.TrimSpace(line[11:]); fn != "" {
			cur.stack = append(cur.stack, fn)
		}
	}
	if cur != nil && len(cur.stack) > 0 {
		traces = append(traces, *cur)
	}
	if err := sc.Err(); err != nil {
		return 0, nil, err
	}
	if len(traces) == 0 {
		return dur, nil, errors.New("bench: the profile has no samples")
	}
	return dur, traces, nil
}

// parseValue reads pprof's time values: "10ms", "1.20s", "500us".
func parseValue(v string) (time.Duration, error) {
	return time.ParseDuration(strings.ReplaceAll(v, "µs", "us"))
}

// costOf files the samples under categories and divides by packets.
func costOf(phase string, dur time.Duration, traces []trace, packets float64, from string) *CPUProfile {
	by := map[string]time.Duration{}
	flat := map[string]time.Duration{}
	var total time.Duration
	for _, t := range traces {
		cat := CostOther
		for _, fn := range t.stack {
			if c := frameCategory(fn); c != "" {
				cat = c
				break
			}
		}
		by[cat] += t.d
		flat[t.stack[0]] += t.d
		total += t.d
	}
	p := &CPUProfile{Phase: phase, Seconds: dur.Seconds(), CPUSeconds: total.Seconds(), Packets: packets, PacketsFrom: from}
	part := func(name string, d time.Duration) CostPart {
		c := CostPart{Name: name, CPUSeconds: d.Seconds()}
		if packets > 0 {
			c.USPerPacket = 1e6 * d.Seconds() / packets
		}
		if total > 0 {
			c.Percent = 100 * float64(d) / float64(total)
		}
		return c
	}
	if packets > 0 {
		p.USPerPacket = 1e6 * total.Seconds() / packets
	}
	for _, name := range costOrder {
		if d, ok := by[name]; ok {
			p.Categories = append(p.Categories, part(name, d))
		}
	}
	names := make([]string, 0, len(flat))
	for fn := range flat {
		names = append(names, fn)
	}
	slices.SortFunc(names, func(a, b string) int {
		if flat[a] != flat[b] {
			return int(flat[b] - flat[a])
		}
		return strings.Compare(a, b)
	})
	for _, fn := range names[:min(12, len(names))] {
		p.Top = append(p.Top, part(fn, flat[fn]))
	}
	return p
}

// addServerCPU records the server's CPU over the profile's window as /proc counted it: what the
// samples do not hold becomes CostUnsampled, so that the categories add up to the CPU the
// server spent.
func (p *CPUProfile) addServerCPU(sec float64) {
	p.ServerCPUSeconds = sec
	missing := sec - p.CPUSeconds
	if missing <= 0 {
		return
	}
	for i := range p.Categories {
		p.Categories[i].Percent = 100 * p.Categories[i].CPUSeconds / sec
	}
	c := CostPart{Name: CostUnsampled, CPUSeconds: missing, Percent: 100 * missing / sec}
	if p.Packets > 0 {
		c.USPerPacket = 1e6 * missing / p.Packets
		p.USPerPacket = 1e6 * sec / p.Packets
	}
	p.Categories = append(p.Categories, c)
}

// AnalyzeProfile reads the profile file at path with `goBin tool pprof -traces` and returns its
// cost per packet.
func AnalyzeProfile(ctx context.Context, goBin, path, phase string, packets float64, from string) (*CPUProfile, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "tool", "pprof", "-traces", path)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("bench: %s tool pprof -traces %s: %w: %s", goBin, path, err, tail(stderr.String(), 500))
	}
	dur, traces, err := parseTraces(strings.NewReader(string(out)))
	if err != nil {
		return nil, fmt.Errorf("bench: %s: %w", path, err)
	}
	return costOf(phase, dur, traces, packets, from), nil
}

// CostRow is one line of the per-packet cost table: a phase's category, medians over rounds.
type CostRow struct {
	Phase       string    `json:"phase"`
	Category    string    `json:"category"`
	USPerPacket float64   `json:"us_per_packet"`
	Percent     float64   `json:"percent"`
	Runs        []float64 `json:"us_per_packet_runs,omitempty"`
}

// costTableOf computes the per-packet cost table of cvpn's profiles: per phase, the median of
// each category over rounds, then the phase's total.
func costTableOf(ms []Measurement) []CostRow {
	var phases []string
	for _, m := range ms {
		for _, p := range m.Profiles {
			if !slices.Contains(phases, p.Phase) {
				phases = append(phases, p.Phase)
			}
		}
	}
	var rows []CostRow
	for _, ph := range phases {
		var totals []float64
		per := map[string][]float64{}
		pct := map[string][]float64{}
		for _, m := range ms {
			for _, p := range m.Profiles {
				if p.Phase != ph || p.Packets <= 0 {
					continue
				}
				totals = append(totals, p.USPerPacket)
				for _, name := range costOrder {
					v, share := 0.0, 0.0
					for _, c := range p.Categories {
						if c.Name == name {
							v, share = c.USPerPacket, c.Percent
						}
					}
					per[name] = append(per[name], v)
					pct[name] = append(pct[name], share)
				}
			}
		}
		if len(totals) == 0 {
			continue
		}
		for _, name := range costOrder {
			if slices.Max(per[name]) == 0 {
				continue
			}
			rows = append(rows, CostRow{Phase: ph, Category: name, USPerPacket: median(per[name]), Percent: median(pct[name]), Runs: per[name]})
		}
		rows = append(rows, CostRow{Phase: ph, Category: "total", USPerPacket: median(totals), Percent: 100, Runs: totals})
	}
	return rows
}

// CostText renders the per-packet cost table.
func (r *Results) CostText() string {
	if len(r.CPUCost) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "cvpn CPU per packet (per handshake in the -ramp phases), from CPU profiles of the measured phases (µs; median over rounds):\n")
	// The phase column holds the longest phase name, iperf-ipv6-download.
	fmt.Fprintf(&b, "%-19s %-40s %9s %7s\n", "phase", "category", "µs", "share")
	last := ""
	for _, row := range r.CPUCost {
		ph := row.Phase
		if ph == last {
			ph = ""
		}
		last = row.Phase
		fmt.Fprintf(&b, "%-19s %-40s %9.3f %6.1f%%\n", ph, row.Category, row.USPerPacket, row.Percent)
	}
	return b.String()
}
