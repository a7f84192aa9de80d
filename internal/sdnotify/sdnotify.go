// Package sdnotify tells systemd how cvpn serve is doing, through the sd_notify protocol
// (sd_notify(3), sent with go-systemd's daemon package): ready once the endpoint serves,
// reloading (with MONOTONIC_USEC) and ready again around each reload, stopping, a status line,
// and watchdog keep-alives (Watchdog) that are sent only while the data plane's receive loops go
// round. Everything is a no-op when NOTIFY_SOCKET is unset, that is outside a Type=notify unit.
//
// It reads the environment systemd sets (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID), as the
// protocol defines; only cmd/cvpn uses it. It does not know the endpoint: cmd/cvpn wires it to
// endpoint.Lifecycle and to the engine's heartbeats and session list.
package sdnotify

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends states to the service manager. Its methods are safe for concurrent use; each
// sends one datagram and does not wait for an answer.
type Notifier struct {
	log *slog.Logger
	// send is daemon.SdNotify: (false, nil) when NOTIFY_SOCKET is unset.
	send func(unsetEnvironment bool, state string) (bool, error)
	// warned is set once a failed send was logged: a socket that went away is logged once,
	// not at every status line.
	warned atomic.Bool
}

// New returns a Notifier that logs a failure to send to log (once).
func New(log *slog.Logger) *Notifier {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Notifier{log: log, send: daemon.SdNotify}
}

// Enabled reports whether a service manager listens (NOTIFY_SOCKET is set).
func (n *Notifier) Enabled() bool { return os.Getenv("NOTIFY_SOCKET") != "" }

// Ready says the service has started and serves (READY=1), with its process id (MAINPID, in
// case a wrapper started it) and status.
func (n *Notifier) Ready(status string) {
	n.notify(daemon.SdNotifyReady + "\nMAINPID=" + strconv.Itoa(os.Getpid()) + "\n" + statusLine(status))
}

// Reloading says a reload has begun (RELOADING=1) and when (MONOTONIC_USEC, CLOCK_MONOTONIC in
// microseconds, which systemd 253's Type=notify-reload requires and earlier versions ignore).
// Reloaded must follow.
func (n *Notifier) Reloading() {
	n.notify(daemon.SdNotifyReloading + "\n" + daemon.SdNotifyMonotonicUsec())
}

// Reloaded says a reload has ended, applied or refused: the service serves again (READY=1).
func (n *Notifier) Reloaded() { n.notify(daemon.SdNotifyReady) }

// Stopping says the service is shutting down (STOPPING=1).
func (n *Notifier) Stopping() { n.notify(daemon.SdNotifyStopping) }

// Status sets the one-line status that systemctl status shows (STATUS=).
func (n *Notifier) Status(status string) { n.notify(statusLine(status)) }

// Watchdog keeps the service's watchdog from firing (WATCHDOG=1).
func (n *Notifier) Watchdog() { n.notify(daemon.SdNotifyWatchdog) }

// statusLine is the STATUS= assignment of s, kept to one line: a newline would start another
// assignment.
func statusLine(s string) string {
	return "STATUS=" + strings.Join(strings.Fields(s), " ")
}

func (n *Notifier) notify(state string) {
	sent, err := n.send(false, state)
	if err != nil && !n.warned.Swap(true) {
		n.log.Warn("systemd notification failed; later failures are not logged", "state", strings.SplitN(state, "\n", 2)[0], "err", err)
	}
	_ = sent
}

// SessionsStatus is the status line of an endpoint with sessions connected sessions that have
// received in and sent out bytes: "12 sessions, 3.4 GiB in, 10.1 GiB out".
func SessionsStatus(sessions int, in, out uint64) string {
	noun := "sessions"
	if sessions == 1 {
		noun = "session"
	}
	return fmt.Sprintf("%d %s, %s in, %s out", sessions, noun, bytesIEC(in), bytesIEC(out))
}

// bytesIEC writes n bytes in binary units with one decimal: 512 B, 1.5 KiB, 3.4 GiB.
func bytesIEC(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
