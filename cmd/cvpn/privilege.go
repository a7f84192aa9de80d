package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint"
	"github.com/cvpn/cvpn/endpoint/clientstore"
	"github.com/cvpn/cvpn/internal/privdrop"
)

// keptCaps are the capabilities cvpn serve keeps after --user: CAP_NET_ADMIN for the TUN
// device, routes, neighbour entries and restoring sysctls at stop; CAP_NET_BIND_SERVICE for
// listeners below port 1024 that a reload adds. Nothing else, and none that a program it runs
// (client_connect_handler) could inherit.
var keptCaps = privdrop.SetOf(privdrop.NetAdmin, privdrop.NetBindService)

// privilegeFlags are serve's --user and --group.
type privilegeFlags struct {
	user, group *string
}

func addPrivilegeFlags(fs *flag.FlagSet) privilegeFlags {
	return privilegeFlags{
		user:  fs.String("user", "", "once set up (TUN, routes, listeners), run as this user, keeping only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE; needs root (under systemd, use User= and AmbientCapabilities= instead)"),
		group: fs.String("group", "", "with --user: run as this group (default: the user's primary group)"),
	}
}

// target is whom --user and --group name; nil without --user. It refuses what cannot work
// before anything is set up: a process that is not root, an unknown user or group, a binary
// that cannot drop on every thread.
func (p privilegeFlags) target() (*privdrop.Target, error) {
	if *p.user == "" {
		if *p.group != "" {
			return nil, errors.New("--group needs --user")
		}
		return nil, nil
	}
	if uid := os.Geteuid(); uid != 0 {
		return nil, fmt.Errorf("--user %s: cvpn serve runs as uid %d, not root, so it cannot change to another user "+
			"(start it as root, or under systemd with User=%s and AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE, without --user)", *p.user, uid, *p.user)
	}
	if err := privdrop.Supported(); err != nil {
		return nil, fmt.Errorf("--user %s: %w", *p.user, err)
	}
	t, err := privdrop.Lookup(*p.user, *p.group, keptCaps)
	if err != nil {
		return nil, fmt.Errorf("--user: %w", err)
	}
	return &t, nil
}

// serveFunc is endpoint.Serve, or serveAs's.
type serveFunc = func(context.Context, string, *endpoint.Endpoint, <-chan struct{}, endpoint.Options) error

// serveAs is endpoint.Serve that changes to t once the endpoint has started: the TUN device,
// route, neighbour entry and sysctls are set up, the listeners, admin socket, connection log
// and state store are open. What cvpn created at this start is handed to t first (handOver),
// so that it can still remove the admin socket and reopen the connection log.
func serveAs(t privdrop.Target) serveFunc {
	return func(ctx context.Context, path string, ep *endpoint.Endpoint, reload <-chan struct{}, opts endpoint.Options) error {
		created := willCreate(ep.Config)
		// The service manager hears that the endpoint started once it runs as t, not before.
		ready := opts.Lifecycle
		if ready != nil {
			opts.Lifecycle = startedLater{ready}
		}
		opts.Started = func(r *endpoint.Running) error {
			log := opts.Log
			handOver(created, t, log)
			if err := privdrop.Drop(t); err != nil {
				return fmt.Errorf("--user %s: %w", t.User, err)
			}
			log.Info("privileges dropped", "user", t.User, "uid", t.UID, "gid", t.GID, "capabilities", t.Keep.String())
			warnUnwritable(path, ep.Config, t, log)
			if ready != nil {
				ready.Started(r)
			}
			return nil
		}
		return endpoint.Serve(ctx, path, ep, reload, opts)
	}
}

// startedLater is a Lifecycle whose Started is left to the caller (serveAs, after the drop).
type startedLater struct{ endpoint.Lifecycle }

func (startedLater) Started(*endpoint.Running) {}

// created is what a start of the endpoint will create, found before it starts.
type created struct {
	adminDirs []string // the admin socket's directory and parents that do not exist yet, deepest first
	socket    string   // the admin socket
	stateDirs []string // state_dir and parents that do not exist yet, deepest first
	connLog   string   // the connection log file when it does not exist yet
}

// willCreate finds what starting cfg will create.
func willCreate(cfg *config.Endpoint) created {
	c := created{socket: cfg.Admin.Socket}
	if cfg.Admin.Socket != "" {
		c.adminDirs = missingDirs(filepath.Dir(cfg.Admin.Socket))
	}
	if cfg.StateDir != "" {
		c.stateDirs = missingDirs(cfg.StateDir)
	}
	if cfg.ConnectionLog.Enabled && cfg.ConnectionLog.File != "" {
		if _, err := os.Lstat(cfg.ConnectionLog.File); errors.Is(err, fs.ErrNotExist) {
			c.connLog = cfg.ConnectionLog.File
		}
	}
	return c
}

// missingDirs are dir and those of its parents that do not exist, deepest first.
func missingDirs(dir string) []string {
	var out []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); !errors.Is(err, fs.ErrNotExist) {
			return out
		}
		out = append(out, d)
		if d == filepath.Dir(d) {
			return out
		}
	}
}

// handOver gives t what this start created and the process must still change after it drops:
// the admin socket and the directories created for it (the socket is removed at stop; root,
// and only root, may still use it: the admin API admits root and the user cvpn serve started
// as), the
// state directories it created with what is in them (a reload may open the store), and a
// connection log file it created (SIGUSR1 reopens it). Nothing that existed before is changed:
// an operator who runs cvpn serve --user owns those (under systemd, StateDirectory=,
// LogsDirectory= and RuntimeDirectory= give them to the service's user). Symbolic links are
// not followed. A failure is logged; the endpoint goes on.
func handOver(c created, t privdrop.Target, log *slog.Logger) {
	chown := func(path string) {
		if err := os.Lchown(path, t.UID, t.GID); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.Warn("handing a file over to --user", "path", path, "user", t.User, "err", err)
		}
	}
	for _, d := range c.adminDirs {
		chown(d)
	}
	if c.socket != "" {
		chown(c.socket) // made anew at each start
	}
	if len(c.stateDirs) > 0 {
		// Everything below the deepest is the store's, created just now.
		_ = filepath.WalkDir(c.stateDirs[0], func(path string, _ fs.DirEntry, err error) error {
			if err == nil {
				chown(path)
			}
			return nil
		})
		for _, d := range c.stateDirs[1:] {
			chown(d)
		}
	}
	if c.connLog != "" {
		chown(c.connLog)
	}
}

// warnUnwritable logs, once the process runs as t, each file or directory the endpoint may
// still have to read or change and cannot: the operator must give it to t. path is the
// endpoint file.
func warnUnwritable(path string, cfg *config.Endpoint, t privdrop.Target, log *slog.Logger) {
	check := func(path, mode, why string) {
		m := uint32(unix.W_OK)
		if mode == "read" {
			m = unix.R_OK
		}
		err := unix.Faccessat(unix.AT_FDCWD, path, m, unix.AT_EACCESS)
		if err == nil || (errors.Is(err, fs.ErrNotExist) && mode == "create") {
			return
		}
		log.Warn("--user "+t.User+" cannot "+mode+" "+path+": "+why+"; give it to that user", "path", path, "err", err)
	}
	check(path, "read", "SIGHUP re-reads the endpoint file")
	if k := cfg.ServerCertificate.KeyFile; k != "" {
		check(k, "read", "SIGHUP re-reads the server key with the endpoint file")
	}
	if cfg.Admin.Socket != "" {
		check(filepath.Dir(cfg.Admin.Socket), "write", "the admin socket is removed from it at stop")
	}
	if cfg.ConnectionLog.Enabled && cfg.ConnectionLog.File != "" {
		check(cfg.ConnectionLog.File, "write", "the connection log is reopened there on SIGUSR1 (logrotate)")
	}
	if cfg.StateDir != "" {
		check(cfg.StateDir, "create", "a reload that adds a directory or single sign-on opens the state store there")
	}
	if c := cfg.Authentication.Certificate; c != nil && c.CRLFile != "" {
		store := clientstore.Of(cfg, "")
		if _, err := os.Stat(store.CAKeyFile); err == nil {
			check(store.CAKeyFile, "read", "cvpn re-signs the CRL with it")
			check(filepath.Dir(c.CRLFile), "write", "cvpn re-signs the CRL and replaces it there")
		}
	}
}
