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
	height := top + len(bars)*rowH + 90
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
	m := r.Machine
	foot := []string{
		fmt.Sprintf("%s, %d CPUs (%s), %d MiB, kernel %s", r.Date.Format("2006-01-02 15:04 UTC"), m.NProc, m.CPUModel, m.MemTotalMiB, m.Kernel),
		fmt.Sprintf("%s; %s; %s; cvpn %s", m.GoVersion, m.OpenVPN, m.Iperf3, m.CVPNCommit),
		"everything on one machine in network namespaces; server CPU from /proc/<pid>/stat; see the JSON next to this file for every run",
	}
	for i, f := range foot {
		fmt.Fprintf(&b, `<text x="10" y="%d" fill="#444" style="font-size:11px">%s</text>`+"\n", top+len(bars)*rowH+30+i*16, html.EscapeString(f))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func firstWord(s string, n int) string {
	f := strings.Fields(s)
	if len(f) > n {
		return f[n]
	}
	return s
}
