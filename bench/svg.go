package bench

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// SVG draws the key rows that have a ratio and a direction as horizontal bars of cvpn's advantage
// (the ratio where higher is better, its inverse where lower is better) on a log scale around
// 1x, with the machine and date underneath. Hand-written SVG: no dependency, readable diffs.
func (r *Results) SVG() string {
	type bar struct {
		label string
		adv   float64
		text  string
	}
	var bars []bar
	for _, row := range r.Table {
		if !row.Chart || row.Ratio == nil || row.Better == "" || *row.Ratio <= 0 {
			continue
		}
		adv := *row.Ratio
		if row.Better == "lower" {
			adv = 1 / adv
		}
		unit := ""
		if row.Unit != "" {
			unit = " " + row.Unit
		}
		ratio := fmt.Sprintf("%.2fx", adv)
		if adv > 100 {
			ratio = ">100x"
		}
		bars = append(bars, bar{
			label: row.Scenario + ": " + row.Metric,
			adv:   adv,
			text:  fmt.Sprintf("%s  (%s vs %s%s)", ratio, fmtNum(*row.CVPN), fmtNum(*row.OpenVPN), unit),
		})
	}
	const (
		width   = 1000
		left    = 330 // label column
		right   = 220 // value column
		rowH    = 20
		top     = 60
		minLog  = -3.0 // 1/8x
		maxLog  = 3.0  // 8x
		plotW   = width - left - right
		fontCSS = "font-family:sans-serif;font-size:12px"
	)
	x := func(adv float64) float64 {
		l := math.Log2(adv)
		l = max(minLog, min(maxLog, l))
		return left + (l-minLog)/(maxLog-minLog)*plotW
	}
	height := top + len(bars)*rowH + 90 + len(r.svgExtra())*16 + 8
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" style="%s">`+"\n", width, height, width, height, fontCSS)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="10" y="22" style="font-size:16px;font-weight:bold">cvpn vs stock openvpn %s: cvpn's advantage (median of rounds, log scale; right of 1x favours cvpn)</text>`+"\n",
		html.EscapeString(firstWord(r.Machine.OpenVPN, 1)))
	// Grid.
	for _, g := range []float64{0.125, 0.25, 0.5, 1, 2, 4, 8} {
		gx := x(g)
		stroke, w := "#ddd", 1
		if g == 1 {
			stroke, w = "#333", 2
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-width="%d"/>`+"\n", gx, top-8, gx, top+len(bars)*rowH, stroke, w)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%gx</text>`+"\n", gx, top-14, g)
	}
	for i, br := range bars {
		y := top + i*rowH
		x0, x1 := x(1), x(br.adv)
		color := "#2a9d4b"
		if br.adv < 1 {
			color = "#d1495b"
			x0, x1 = x1, x0
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", left-8, y+14, html.EscapeString(br.label))
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", x0, y+3, math.Max(1, x1-x0), rowH-6, color)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", width-right+8, y+14, html.EscapeString(br.text))
	}
	// Rows without a ratio that matter: cvpn's scale run and its CPU per packet, as text under
	// the bars.
	extra := r.svgExtra()
	for i, e := range extra {
		fmt.Fprintf(&b, `<text x="10" y="%d" fill="#222">%s</text>`+"\n", top+len(bars)*rowH+24+i*16, html.EscapeString(e))
	}
	below := top + len(bars)*rowH + len(extra)*16 + 8 // where the footer starts, less 30
	m := r.Machine
	foot := []string{
		fmt.Sprintf("%s, %d CPUs (%s), %d MiB, kernel %s", r.Date.Format("2006-01-02 15:04 UTC"), m.NProc, m.CPUModel, m.MemTotalMiB, m.Kernel),
		fmt.Sprintf("%s; %s; %s; cvpn %s", m.GoVersion, m.OpenVPN, m.Iperf3, m.CVPNCommit),
		"everything on one machine in network namespaces; server CPU from /proc/<pid>/stat; see the JSON next to this file for every run",
	}
	for i, f := range foot {
		fmt.Fprintf(&b, `<text x="10" y="%d" fill="#444" style="font-size:11px">%s</text>`+"\n", below+30+i*16, html.EscapeString(f))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// svgExtra are the chart's text lines about cvpn alone: the scale scenario and the CPU per
// packet of each profiled phase.
func (r *Results) svgExtra() []string {
	var out []string
	val := func(sc, metric string) (float64, bool) {
		for _, row := range r.Table {
			if row.Scenario == sc && row.Metric == metric && row.CVPN != nil {
				return *row.CVPN, true
			}
		}
		return 0, false
	}
	for _, row := range r.Table {
		if !strings.HasPrefix(row.Scenario, "scale-") || row.Metric != "sessions connected" || row.CVPN == nil {
			continue
		}
		sc := row.Scenario
		line := fmt.Sprintf("cvpn %s: %s sessions held", sc, fmtNum(*row.CVPN))
		if p50, ok := val(sc, "connect time p50"); ok {
			p99, _ := val(sc, "connect time p99")
			line += fmt.Sprintf(", connect p50 %s ms p99 %s ms", fmtNum(p50), fmtNum(p99))
		}
		if e50, ok := val(sc, "gateway echo RTT while holding p50"); ok {
			e99, _ := val(sc, "gateway echo RTT while holding p99")
			line += fmt.Sprintf(", echo RTT while holding p50 %s µs p99 %s µs", fmtNum(e50), fmtNum(e99))
		}
		if rss, ok := val(sc, "server RSS per session (after hold)"); ok {
			line += fmt.Sprintf(", server RSS %s KiB/session", fmtNum(rss))
		}
		out = append(out, line)
	}
	// Two metrics a line keeps the lines inside the chart's width.
	if c := ipv6Comparison(r.Table); c != nil {
		for i := 0; i < len(c); i += 2 {
			out = append(out, "cvpn/openvpn, iperf vs iperf-ipv6: "+strings.Join(c[i:min(i+2, len(c))], "; "))
		}
	}
	var phase, ramps []string
	for _, c := range r.CPUCost {
		switch {
		case c.Category != "total":
		case strings.HasSuffix(c.Phase, "-ramp"): // its unit is a handshake
			ramps = append(ramps, fmt.Sprintf("%s %.0f", c.Phase, c.USPerPacket))
		default:
			phase = append(phase, fmt.Sprintf("%s %.2f", c.Phase, c.USPerPacket))
		}
	}
	// Three phases a line keep the lines inside the chart's width.
	for i := 0; i < len(phase); i += 3 {
		head := "cvpn CPU per packet (µs, from CPU profiles; split by category in the JSON): "
		if i > 0 {
			head = "cvpn CPU per packet, continued: "
		}
		out = append(out, head+strings.Join(phase[i:min(i+3, len(phase))], ", "))
	}
	if len(ramps) > 0 {
		out = append(out, "cvpn CPU per handshake (µs, from CPU profiles of the ramp): "+strings.Join(ramps, ", "))
	}
	return out
}

func firstWord(s string, n int) string {
	f := strings.Fields(s)
	if len(f) > n {
		return f[n]
	}
	return s
}
