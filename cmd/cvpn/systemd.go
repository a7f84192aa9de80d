package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/cvpn/cvpn/endpoint"
	"github.com/cvpn/cvpn/internal/journallog"
	"github.com/cvpn/cvpn/internal/sdnotify"
)

// cvpn serve under systemd (Type=notify, WatchdogSec=, ExecReload=kill -HUP $MAINPID):
//
//   - READY=1 once endpoint.Start has returned: listeners bound, TUN up, host set up, admin
//     socket listening; a STATUS= line with the sessions and their traffic every statusEvery.
//   - RELOADING=1 with MONOTONIC_USEC before each reload (SIGHUP), READY=1 after it, applied or
//     refused.
//   - STOPPING=1 when stopping, before clients are told to reconnect (RESTART).
//   - WATCHDOG=1 every WatchdogSec/2, but only while each of the data plane's receive loops
//     has gone round since the last time (package sdnotify's Watchdog): a wedged loop stops the
//     keep-alives and systemd restarts the service.
//   - Logs go to the journal through its native protocol, each attribute a field (USER=,
//     REMOTE=), when systemd connected stderr to the journal and no --log-format was asked for.
//
// Without NOTIFY_SOCKET none of the notifications is sent; without JOURNAL_STREAM the logs are
// as --log-format says.

// statusEvery is how often STATUS= is refreshed.
const statusEvery = 5 * time.Second

// serviceManager is serve's side of systemd's service protocol: an endpoint.Lifecycle that
// notifies, and the status and watchdog goroutines it runs while the endpoint serves.
type serviceManager struct {
	log    *slog.Logger
	notify *sdnotify.Notifier

	mu   sync.Mutex
	stop context.CancelFunc // ends the status and watchdog goroutines; nil while none run
	wg   sync.WaitGroup
}

// startServiceManager returns serve's systemd side, and arms the test hooks of a testhooks
// build (testhooks.go).
func startServiceManager(log *slog.Logger) *serviceManager {
	armTestHooks(log)
	return &serviceManager{log: log, notify: sdnotify.New(log)}
}

// lifecycle is what endpoint.Options.Lifecycle gets: nil when no service manager listens.
func (m *serviceManager) lifecycle() endpoint.Lifecycle {
	if !m.notify.Enabled() {
		return nil
	}
	return m
}

// Started says READY=1 and starts the status line and the watchdog.
func (m *serviceManager) Started(r *endpoint.Running) {
	srv := r.Server()
	status := func() string {
		var in, out uint64
		clients := srv.Clients()
		for _, c := range clients {
			in += c.Traffic.RxBytes
			out += c.Traffic.TxBytes
		}
		return sdnotify.SessionsStatus(len(clients), in, out)
	}
	m.notify.Ready(status())
	interval, err := sdnotify.WatchdogInterval()
	if err != nil {
		m.log.Warn("systemd watchdog: WATCHDOG_USEC unusable; no keep-alives will be sent", "err", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stop != nil {
		m.stop() // a second start: not expected, but never two of each goroutine
	}
	m.stop = cancel
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(statusEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				m.notify.Status(status())
			}
		}
	}()
	if interval > 0 {
		w := &sdnotify.Watchdog{Interval: interval, Ping: m.notify.Watchdog, Log: m.log, Heartbeats: func() map[string]uint64 {
			beats := srv.Heartbeats()
			out := make(map[string]uint64, len(beats))
			for _, b := range beats {
				out[b.Loop] = b.Count
			}
			return out
		}}
		m.log.Info("systemd watchdog armed", "watchdog", interval, "loops", len(srv.Heartbeats()))
		m.wg.Add(1)
		go func() { defer m.wg.Done(); w.Run(ctx) }()
	}
}

// Reloading says RELOADING=1 with the time.
func (m *serviceManager) Reloading() { m.notify.Reloading() }

// Reloaded says READY=1 again.
func (m *serviceManager) Reloaded() { m.notify.Reloaded() }

// Stopping ends the status line and the watchdog, and says STOPPING=1.
func (m *serviceManager) Stopping() {
	m.close()
	m.notify.Stopping()
}

// close ends the status and watchdog goroutines and waits for them.
func (m *serviceManager) close() {
	m.mu.Lock()
	if m.stop != nil {
		m.stop()
		m.stop = nil
	}
	m.mu.Unlock()
	m.wg.Wait()
}

// serveLogger is serve's logger: format "journal" writes to the systemd journal's native
// protocol with structured fields; with no --log-format given (explicit false), so does a serve
// whose stderr systemd connected to the journal (JOURNAL_STREAM names it), falling back to
// text on stderr for an entry the journal refuses. Otherwise it is newLogger's text or json.
func serveLogger(format string, explicit bool, stderr io.Writer) (*slog.Logger, error) {
	useJournal := format == "journal"
	if useJournal && !journal.Enabled() {
		return nil, errors.New(`"journal": the systemd journal's socket does not answer`)
	}
	if !explicit && stderr == os.Stderr {
		if onJournal, err := journal.StderrIsJournalStream(); err == nil && onJournal && journal.Enabled() {
			useJournal = true
		}
	}
	if !useJournal {
		return newLogger(format, stderr)
	}
	return slog.New(journallog.New(journallog.Options{
		Level:      logLevel(),
		Identifier: "cvpn",
		Fallback:   slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel()}),
	})), nil
}

// flagGiven reports whether the command line set the flag name.
func flagGiven(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}
