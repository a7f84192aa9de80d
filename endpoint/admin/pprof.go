package admin

import (
	"bytes"
	"fmt"
	"net/http"
	"runtime/pprof"
	"strconv"
	"time"
)

// ProfilePath serves a CPU profile of the running server in pprof's format, the shape of
// net/http/pprof's /debug/pprof/profile: GET ProfilePath?seconds=N. The benchmark harness takes
// one during each measured phase to say where the CPU goes per packet.
const ProfilePath = "/debug/pprof/profile"

// Bounds of a CPU profile. Only root and the service's user reach the handler (ServeHTTP), and
// a profile costs them little (the 100 Hz sampler, a few hundred KB of buffered samples); the
// bounds keep a stuck or careless caller from holding the profiler or a connection for long.
const (
	MaxProfileSeconds     = 60
	defaultProfileSeconds = 30
	// profileSlack is what the connection's deadlines allow beyond the profile itself, to read
	// the request and write the answer.
	profileSlack = 15 * time.Second
)

// serveProfile profiles the process for the requested seconds and answers with the profile.
// One profile runs at a time, process-wide: a second request (or a profile started elsewhere
// in the process) gets 409 Conflict at once rather than queueing. The profile is buffered and
// written after the sampling stops, so a caller that goes away mid-profile leaves nothing
// behind but a stopped profile.
func (h *Handler) serveProfile(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeError(w, http.StatusMethodNotAllowed, &Error{Code: "InvalidAction", Message: ProfilePath + " takes GET"})
		return
	}
	sec := defaultProfileSeconds
	if v := r.URL.Query().Get("seconds"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxProfileSeconds {
			writeError(w, http.StatusBadRequest, &Error{Code: "InvalidParameterValue",
				Message: fmt.Sprintf("seconds %q: want a whole number from 1 to %d", v, MaxProfileSeconds)})
			return
		}
		sec = n
	}
	select {
	case h.profiling <- struct{}{}:
		defer func() { <-h.profiling }()
	default:
		writeError(w, http.StatusConflict, &Error{Code: "IncorrectState", Message: "a CPU profile is already being taken"})
		return
	}
	d := time.Duration(sec) * time.Second
	// The server's read and write timeouts (10 s, 30 s) are shorter than a long profile: the
	// read deadline would cancel the request's context (net/http's background read) and the
	// write deadline would cut the answer, so this request gets its own.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(d + profileSlack))
	_ = rc.SetWriteDeadline(time.Now().Add(d + profileSlack))

	var buf bytes.Buffer
	if err := pprof.StartCPUProfile(&buf); err != nil {
		writeError(w, http.StatusConflict, &Error{Code: "IncorrectState", Message: fmt.Sprintf("CPU profile: %v", err)})
		return
	}
	t := time.NewTimer(d)
	select {
	case <-t.C:
	case <-r.Context().Done():
		t.Stop()
		pprof.StopCPUProfile()
		return
	}
	pprof.StopCPUProfile()
	h.log.Info("admin: CPU profile taken", "seconds", sec, "bytes", buf.Len())
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="profile"`)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes())
}
