package sdnotify

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// WatchdogInterval is the watchdog timeout systemd set for this process (WatchdogSec=, as
// WATCHDOG_USEC for WATCHDOG_PID); 0 when there is none.
func WatchdogInterval() (time.Duration, error) { return daemon.SdWatchdogEnabled(false) }

// Watchdog sends keep-alives to systemd only while the data plane makes progress. Every half
// interval it reads the receive loops' heartbeats, and pings only when each loop that it saw at
// the last check has gone round since. A loop that is stuck (in a lock, in a handler, in a read
// that never returns) stops its heartbeat, so the pings stop and systemd, after WatchdogSec,
// kills and restarts the service. A ticker alone would keep a wedged service alive.
//
// The loops wake at least once a second when idle (sock.ReadWake), so the check interval must
// be longer than that: WatchdogSec= of 4 s or more. A loop that appears since the last check
// counts as alive; one that went away (a listener a reload removed) is not waited for. When no
// loop is reported at all there is nothing to judge by, and each check pings.
type Watchdog struct {
	// Interval is the watchdog timeout (WatchdogInterval); checks run every half of it.
	Interval time.Duration
	// Heartbeats returns each receive loop's count of times round, by loop name.
	Heartbeats func() map[string]uint64
	// Ping sends the keep-alive (Notifier.Watchdog).
	Ping func()
	// Log hears when the pings stop and start again; nil discards.
	Log *slog.Logger

	// last holds the counts at the last check, and stalled the loops that had not moved then
	// (they are logged when the pings stop and when they resume).
	last    map[string]uint64
	stalled []string
	// checked, when set (by tests), hears the outcome of each check.
	checked func(pinged bool)
}

// Run checks and pings every Interval/2 until ctx is done. The first check pings at once.
func (w *Watchdog) Run(ctx context.Context) {
	if w.Log == nil {
		w.Log = slog.New(slog.DiscardHandler)
	}
	period := w.Interval / 2
	if period < 2*time.Second {
		w.Log.Warn("systemd watchdog: WatchdogSec= under 4 s is shorter than idle receive loops take to show they are alive; expect restarts of a healthy service",
			"watchdog", w.Interval)
	}
	if period <= 0 {
		return
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		w.check()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check reads the heartbeats, pings when every loop seen last time has moved, and reports
// whether it pinged.
func (w *Watchdog) check() bool {
	now := w.Heartbeats()
	var stalled []string
	for loop, count := range now {
		if before, ok := w.last[loop]; ok && count == before {
			stalled = append(stalled, loop)
		}
	}
	slices.Sort(stalled)
	w.last = now
	pinged := len(stalled) == 0
	switch {
	case pinged && w.stalled != nil:
		w.Log.Info("systemd watchdog: the data plane goes round again; keep-alives resume", "stalled", w.stalled)
	case !pinged && !slices.Equal(stalled, w.stalled):
		w.Log.Error("systemd watchdog: receive loops stopped going round; no keep-alive, so systemd restarts the service when WatchdogSec passes",
			"stalled", stalled)
	}
	w.stalled = stalled
	if pinged {
		w.Ping()
	}
	if w.checked != nil {
		w.checked(pinged)
	}
	return pinged
}
