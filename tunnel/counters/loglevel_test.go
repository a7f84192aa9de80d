package counters

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestFamilyOffLogsAtDebug: the IPv6 that every dual-stack client sends is counted and logged at
// Debug only (the endpoint serves no IPv6 yet), while other expected refusals stay at Info and
// faults at Warn.
func TestFamilyOffLogsAtDebug(t *testing.T) {
	var d Drops
	var info, debug bytes.Buffer
	d.Add(FamilyOff)
	d.Add(NoRoute)
	d.Add(Decrypt)
	(&Logger{Drops: &d, Log: slog.New(slog.NewTextHandler(&info, nil)), Every: time.Second}).Flush(time.Unix(1, 0))
	if strings.Contains(info.String(), "family_off") {
		t.Errorf("family_off logged at the default level Info:\n%s", info.String())
	}
	for _, want := range []string{"level=INFO msg=\"packets dropped\" reason=no_route", "level=WARN msg=\"packets dropped\" reason=decrypt_failed"} {
		if !strings.Contains(info.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, info.String())
		}
	}
	d.Add(FamilyOff)
	(&Logger{Drops: &d, Log: slog.New(slog.NewTextHandler(&debug, &slog.HandlerOptions{Level: slog.LevelDebug})), Every: time.Second}).Flush(time.Unix(2, 0))
	if !strings.Contains(debug.String(), `level=DEBUG msg="packets dropped" reason=family_off count_since_last_log=2`) {
		t.Errorf("family_off not logged at Debug:\n%s", debug.String())
	}
	if d.Count(FamilyOff) != 2 {
		t.Errorf("family_off counted %d times, want 2", d.Count(FamilyOff))
	}
}
