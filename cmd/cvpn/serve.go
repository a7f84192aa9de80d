package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/cvpn/cvpn/endpoint"
	"github.com/cvpn/cvpn/endpoint/profile"
	"github.com/cvpn/cvpn/internal/memquiet"
	"github.com/cvpn/cvpn/portal"
)

// cmdServe runs the endpoint (package endpoint) until SIGTERM or SIGINT; SIGHUP reloads the
// endpoint file; SIGUSR1 reopens the connection log (logrotate).
func cmdServe(args []string, stderr io.Writer) int {
	fs := newFlagSet("serve", stderr)
	path := configFileFlag(fs)
	logFormat := fs.String("log-format", "text", "text (logfmt key=value), json (one object per line) or journal (systemd's journal, each attribute a field; "+
		"the default when systemd connects stderr to the journal)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file (for performance work)")
	memProfile := fs.String("memprofile", "", "write a heap profile to this file when stopping, before clients are disconnected")
	privilege := addPrivilegeFlags(fs)
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "cvpn serve: unexpected arguments:", fs.Args())
		return exitInvalid
	}
	log, err := serveLogger(*logFormat, flagGiven(fs, "log-format"), stderr)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn serve: --log-format:", err)
		return exitInvalid
	}
	file, err := resolveConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, "cvpn serve:", err)
		return exitInvalid
	}
	serve := endpoint.Serve
	if t, err := privilege.target(); err != nil {
		fmt.Fprintln(stderr, "cvpn serve:", err)
		return exitInvalid
	} else if t != nil {
		serve = serveAs(*t)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "cvpn serve: --cpuprofile:", err)
			return exitInvalid
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "cvpn serve: --cpuprofile:", err)
			return exitInvalid
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	if *memProfile != "" {
		runtime.MemProfileRate = 1024 // fine-grained, for per-session accounting
	}
	// The packet path allocates nothing, so garbage comes from handshakes only; a tighter GC
	// target keeps idle sessions cheap (measured: 47 KiB of RSS per idle session at the default
	// of 100, 37 KiB at 50). GOGC in the environment still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	return serveFile(serve, file, *memProfile, log, stderr)
}

func serveFile(serve serveFunc, path, memProfile string, log *slog.Logger, stderr io.Writer) int {
	ep, err := loadEndpoint(path)
	if err != nil {
		printConfigError(stderr, err)
		return exitInvalid
	}
	// Signals are caught from here on, so that a stop during host setup still removes the host
	// state: the endpoint stops as soon as it has started. SIGHUP reloads, one at a time; one
	// that arrives during a reload is kept for after it.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Free heap memory that would outlast the next 80 s of allocation goes back to the system
	// (internal/memquiet).
	go memquiet.Watch(ctx, memquiet.Default, nil, nil, func(free uint64) {
		log.Debug("returned the free heap to the system", "mib", free>>20)
	})
	reload := make(chan struct{}, 1)
	reopenLog := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case sig := <-sigs:
				if sig == syscall.SIGUSR1 {
					select {
					case reopenLog <- struct{}{}:
					default: // one is pending already
					}
					continue
				}
				if sig == syscall.SIGHUP {
					select {
					case reload <- struct{}{}:
					default: // one is pending already and will read the file as it is then
					}
					continue
				}
				log.Info("stopping", "signal", sig.String())
				if memProfile != "" {
					writeHeapProfile(memProfile, log)
				}
				cancel()
				return
			}
		}
	}()
	sd := startServiceManager(log) // systemd.go: readiness, status, watchdog
	defer sd.close()
	err = serve(ctx, path, ep, reload, endpoint.Options{Log: log, Now: timeNow, Host: setupHost, ReopenLog: reopenLog, Lifecycle: sd.lifecycle(),
		PortalProfiles: func(current func() *endpoint.Endpoint) portal.Profiles { return profile.ForPortal(current, timeNow) }})
	if err != nil {
		printServeError(stderr, err)
		return exitRuntime
	}
	return 0
}

// setupHost sets the host up; nil means the real one (package tunnel/host). Tests replace it so
// that serve runs without root.
var setupHost endpoint.HostSetup

// newLogger returns the logger of format "text" (slog's key=value lines) or "json" (one JSON
// object per line, for log shippers), at logLevel.
func newLogger(format string, w io.Writer) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: logLevel()}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("%q: want text or json", format)
}

func logLevel() slog.Level {
	if os.Getenv("CVPN_DEBUG") != "" {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

// printServeError prints why serve failed as one line.
func printServeError(stderr io.Writer, err error) {
	fmt.Fprintln(stderr, "cvpn serve:", strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " "))
}

// writeHeapProfile writes the live heap (after a GC) for memory work.
func writeHeapProfile(file string, log *slog.Logger) {
	f, err := os.Create(file)
	if err != nil {
		log.Error("memprofile", "err", err)
		return
	}
	defer f.Close()
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		log.Error("memprofile", "err", err)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	log.Info("memory", "heap_inuse", ms.HeapInuse, "stack_inuse", ms.StackInuse, "goroutines", runtime.NumGoroutine(), "sys", ms.Sys)
}
