package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds of a request: its body, and the time to read it and to answer.
const (
	maxBody           = 64 << 10
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
)

// Handler serves the operations at /<Action> (POST, or GET without a body), each a JSON
// request and response, and a CPU profile at ProfilePath. It refuses callers other than root and
// the process's own user, by the peer credentials of the unix connection.
type Handler struct {
	src *Source
	log *slog.Logger
	// allowed reports whether a caller's uid may use the API; tests replace it.
	allowed func(uid uint32) bool
	mux     *http.ServeMux
	// profiling holds a token while a CPU profile is being taken (one at a time).
	profiling chan struct{}
}

// NewHandler returns the API's handler over src; log (nil: discarded) gets one line per
// refused caller and per termination.
func NewHandler(src *Source, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The service's user is read at each request: `cvpn serve --user` changes it after start.
	h := &Handler{src: src, log: log, allowed: func(uid uint32) bool { return uid == 0 || uid == uint32(os.Getuid()) }, mux: http.NewServeMux(),
		profiling: make(chan struct{}, 1)}
	h.mux.HandleFunc(ProfilePath, h.serveProfile)
	handle(h, "DescribeClientVpnConnections", src.describeConnections)
	handle(h, "TerminateClientVpnConnections", func(ctx context.Context, in TerminateClientVpnConnectionsInput) (TerminateClientVpnConnectionsOutput, error) {
		out, err := src.terminateConnections(ctx, in)
		if err == nil {
			h.log.Info("admin: connections terminated", "connection_id", in.ConnectionID, "username", in.Username, "count", len(out.ConnectionStatuses))
		}
		return out, err
	})
	handle(h, "DescribeClientVpnEndpoints", src.describeEndpoints)
	handle(h, "DescribeClientVpnRoutes", src.describeRoutes)
	handle(h, "DescribeClientVpnAuthorizationRules", src.describeAuthorizationRules)
	handle(h, "DescribeCvpnCluster", src.describeCluster)
	handle(h, "CvpnEnrollUserMfa", func(ctx context.Context, in EnrollUserMfaInput) (EnrollUserMfaOutput, error) {
		out, err := src.enrollUserMFA(ctx, in)
		if err == nil {
			h.log.Info("admin: user enrolled for MFA", "username", in.Username, "replaced", in.Force)
		}
		return out, err
	})
	handle(h, "CvpnResetUserMfa", func(ctx context.Context, in ResetUserMfaInput) (ResetUserMfaOutput, error) {
		out, err := src.resetUserMFA(ctx, in)
		if err == nil {
			h.log.Info("admin: user's MFA secret removed", "username", in.Username)
		}
		return out, err
	})
	return h
}

// handle registers one operation; op gets the request's context, which ends when the caller
// goes away or the server shuts down (a cluster-wide operation waits on other nodes under it).
func handle[In, Out any](h *Handler, action string, op func(context.Context, In) (Out, error)) {
	h.mux.HandleFunc("/"+action, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost && r.Method != http.MethodGet {
			writeError(w, http.StatusMethodNotAllowed, &Error{Code: "InvalidAction", Message: action + " takes POST"})
			return
		}
		var in In
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			writeError(w, http.StatusRequestEntityTooLarge, &Error{Code: "InvalidParameterValue", Message: fmt.Sprintf("request body: %v", err)})
			return
		}
		if len(strings.TrimSpace(string(body))) > 0 {
			dec := json.NewDecoder(strings.NewReader(string(body)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&in); err != nil {
				writeError(w, http.StatusBadRequest, &Error{Code: "InvalidParameterValue", Message: fmt.Sprintf("request body: %v", err)})
				return
			}
		}
		out, err := op(r.Context(), in)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				e = &Error{Code: "InternalError", Message: err.Error()}
			}
			code := http.StatusBadRequest
			switch {
			case strings.HasSuffix(e.Code, "NotFound"):
				code = http.StatusNotFound
			case e.Code == codeUnavailable:
				code = http.StatusServiceUnavailable
			}
			writeError(w, code, e)
			return
		}
		writeJSON(w, http.StatusOK, out)
	})
}

// ServeHTTP checks the caller, then serves the operation.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	uid, ok := r.Context().Value(peerKey{}).(uint32)
	if !ok || !h.allowed(uid) {
		h.log.Warn("admin: caller refused", "uid", uid, "known", ok)
		writeError(w, http.StatusForbidden, &Error{Code: "UnauthorizedOperation", Message: "only root and the service's user may use the admin API"})
		return
	}
	h.mux.ServeHTTP(w, r)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, e *Error) {
	writeJSON(w, code, errorResponse{Error: *e})
}

// peerKey keys the caller's uid in a request's context.
type peerKey struct{}

// peerUID reads the uid of the process at the other end of a unix connection.
func peerUID(c net.Conn) (uint32, bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) { cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil || credErr != nil {
		return 0, false
	}
	return cred.Uid, true
}

// Server serves a Handler on a unix socket.
type Server struct {
	path string
	l    net.Listener
	srv  *http.Server
	done chan struct{}
}

// Listen opens the unix socket at path with mode 0600 (its directory is created 0755 if
// missing) and serves h on it until Close. A socket file left by a process that is gone is
// replaced; one that answers is another cvpn's, and Listen fails.
func Listen(path string, h *Handler) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("admin.socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("admin.socket: %s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("admin.socket: %s is in use by another process (another cvpn? give each endpoint its own admin.socket)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("admin.socket: removing the stale %s: %w", path, err)
		}
	}
	// The umask is the process's, so it is not narrowed here for the one call (other goroutines
	// write files meanwhile); in the moment before the chmod the peer check refuses other users.
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin.socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("admin.socket: %w", err)
	}
	s := &Server{path: path, l: l, done: make(chan struct{}), srv: &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxBody,
		ErrorLog:          slog.NewLogLogger(h.log.Handler(), slog.LevelWarn),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if uid, ok := peerUID(c); ok {
				return context.WithValue(ctx, peerKey{}, uid)
			}
			return ctx
		},
	}}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(l)
	}()
	return s, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Close stops serving (requests under way get two seconds) and removes the socket.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	<-s.done
	_ = os.Remove(s.path)
	return err
}
