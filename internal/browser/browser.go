// Package browser drives a headless Chromium from Go tests, for the tests of
// cvpn's web pages (the self-service portal, the single sign-on pages) that
// must run in a real browser.
//
// It owns the browser's lifetime: Start launches Debian's chromium as a child
// process with a fresh profile and home directory, and the test's Cleanup
// closes it and kills every process that it left. It gives tests a few
// actions (Navigate, Fill, Click, Submit, WaitVisible, Text, Location,
// ImageBytes, Download), each bounded by a timeout and each failing the test
// with the page's address and a screenshot when it cannot be done, and it
// keeps screenshots under test-output/<TestName>/ at the repository root.
// internal/qrtest decodes the QR codes that ImageBytes reads.
//
// A test reads like what a person does:
//
//	b := browser.Start(t, browser.TrustCA(serverCertPEM))
//	b.Navigate(portalURL)
//	b.Fill("#username", "alice")
//	b.Fill("#password", password)
//	b.Submit("button[type=submit]")
//	b.Screenshot("signed-in") // test-output/TestPortal/01-signed-in.png
//	secret, err := qrtest.DecodeQR(b.ImageBytes("img.qr"))
//	name, profile := b.Download("a#profile-udp")
//
// It does not know the portal: no selector, address or flow of cvpn lives
// here. It never reaches anything but what a test names: Chromium starts with
// its background traffic (component updates, safe browsing, metrics, sync)
// switched off, reaches IP addresses directly, and sends every request for a
// host name other than localhost to a closed port on loopback, where it
// fails, unless a test maps the name with Resolve.
package browser

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// DefaultTimeout bounds each action of a Browser unless Timeout says otherwise.
const DefaultTimeout = 10 * time.Second

// DefaultExecPath is where Debian's chromium package installs the browser.
const DefaultExecPath = "/usr/bin/chromium"

// startTimeout bounds the launch of the browser and its first tab.
const startTimeout = 30 * time.Second

// closeTimeout bounds the graceful close before the browser is killed.
const closeTimeout = 10 * time.Second

// Window sizes: a phone is the default because the portal must be usable on
// one; Desktop gives the wide layout.
const (
	PhoneWidth    = 412
	PhoneHeight   = 915
	DesktopWidth  = 1280
	DesktopHeight = 900
)

// Browser is one headless Chromium with one tab, owned by one test. Its
// methods must be called from the test's goroutine (they call t.Fatalf).
type Browser struct {
	t          testing.TB
	ctx        context.Context // the tab's context; no deadline
	timeout    time.Duration
	root       string // t.TempDir(): profile/ and home/ of the browser
	profileDir string

	// logMu guards alive: chromedp may log from its goroutines, and a test
	// must not be logged to once it has completed.
	logMu sync.Mutex
	alive bool
}

// config is what the Options set.
type config struct {
	execPath     string
	netns        string
	width        int
	height       int
	mobile       bool // emulate a phone: viewport meta tag, overlay scrollbars
	timeout      time.Duration
	trust        []string // base64 SHA-256 of SubjectPublicKeyInfos
	resolve      []string // host-resolver-rules MAP entries
	resolveHosts []string // the names they map
	errs         []error
}

// Option changes how Start launches the browser.
type Option func(*config)

// InNetns runs Chromium inside the named network namespace (through
// `ip netns exec NAME`, so as root), so that it reaches the addresses of a
// test's namespaces. The name must be one that `ip netns add` made:
// letters, digits, '.', '_' and '-'.
func InNetns(name string) Option {
	return func(c *config) {
		if !validNetnsName(name) {
			c.errs = append(c.errs, fmt.Errorf("InNetns: invalid namespace name %q", name))
			return
		}
		c.netns = name
	}
}

// TrustCA makes the browser accept the TLS certificates of servers that
// present, in the chain they send, a certificate whose public key is one of
// those in pem (one or more PEM CERTIFICATE blocks). It uses Chromium's
// --ignore-certificate-errors-spki-list, which applies only to this
// browser's profile and changes nothing on the system; certificate errors of
// every other server still stop the page. Because Chromium matches the
// chain the server sends, pass the server's own certificate, or a CA that
// the server includes in its chain (Go's tls.Certificate.Certificate[1:]).
// TrustCA may be given more than once.
func TrustCA(pem []byte) Option {
	return func(c *config) {
		hashes, err := spkiHashes(pem)
		if err != nil {
			c.errs = append(c.errs, fmt.Errorf("TrustCA: %w", err))
			return
		}
		c.trust = append(c.trust, hashes...)
	}
}

// Resolve makes the browser resolve host to ip (an IPv4 or IPv6 address),
// for pages that must be reached by name (cookies, redirect URLs). Pages of
// every other name but localhost fail to load (ERR_PROXY_CONNECTION_FAILED),
// without a name lookup.
func Resolve(host, ip string) Option {
	return func(c *config) {
		rule, err := resolveRule(host, ip)
		if err != nil {
			c.errs = append(c.errs, fmt.Errorf("Resolve: %w", err))
			return
		}
		c.resolve = append(c.resolve, rule)
		c.resolveHosts = append(c.resolveHosts, strings.ToLower(host))
	}
}

// WindowSize sets the page's viewport, in CSS pixels, on a desktop browser
// (no mobile emulation). The default is a phone (PhoneWidth x PhoneHeight,
// with mobile emulation: Chromium's windows are at least 500 pixels wide,
// so a phone's width needs the emulation anyway).
func WindowSize(width, height int) Option {
	return func(c *config) {
		if width < 100 || height < 100 || width > 8000 || height > 8000 {
			c.errs = append(c.errs, fmt.Errorf("WindowSize: %dx%d is outside 100..8000", width, height))
			return
		}
		c.width, c.height, c.mobile = width, height, false
	}
}

// Desktop sets a desktop window, DesktopWidth x DesktopHeight.
func Desktop() Option { return WindowSize(DesktopWidth, DesktopHeight) }

// Timeout sets how long each action may take before it fails the test. The
// default is DefaultTimeout.
func Timeout(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.errs = append(c.errs, fmt.Errorf("Timeout: %v is not positive", d))
			return
		}
		c.timeout = d
	}
}

// ExecPath runs another Chromium binary than DefaultExecPath.
func ExecPath(path string) Option {
	return func(c *config) { c.execPath = path }
}

// Start launches a headless Chromium for t and opens one tab on about:blank.
// The browser is closed, and every process it started is killed, in
// t.Cleanup. Start fails the test if the browser cannot start.
func Start(t testing.TB, opts ...Option) *Browser {
	t.Helper()
	cfg := config{
		execPath: DefaultExecPath,
		width:    PhoneWidth,
		height:   PhoneHeight,
		mobile:   true,
		timeout:  DefaultTimeout,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if err := errors.Join(cfg.errs...); err != nil {
		t.Fatalf("browser: %v", err)
	}
	if _, err := os.Stat(cfg.execPath); err != nil {
		t.Fatalf("browser: no Chromium at %s (Debian package chromium; `make deps` installs it): %v", cfg.execPath, err)
	}

	// TempDir first: its removal is a Cleanup too, and Cleanups run last
	// registered first, so the browser is gone before its profile is removed.
	root := t.TempDir()
	b := &Browser{
		t:          t,
		root:       root,
		timeout:    cfg.timeout,
		profileDir: filepath.Join(root, "profile"),
		alive:      true,
	}
	home := filepath.Join(root, "home")
	for _, d := range []string{b.profileDir, home} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatalf("browser: %v", err)
		}
	}

	allocCtx, allocCancel := chromedp.NewExecAllocator(context.Background(),
		b.allocatorOptions(cfg, home)...)
	ctx, cancel := chromedp.NewContext(allocCtx,
		chromedp.WithLogf(b.logf), chromedp.WithErrorf(b.logf))
	b.ctx = ctx
	t.Cleanup(func() { b.close(cancel, allocCancel) })

	// The first Run launches the browser; it must not carry a deadline, as
	// that deadline would end the browser, so a timer bounds it instead.
	viewport := []chromedp.EmulateViewportOption{}
	if cfg.mobile {
		viewport = append(viewport, chromedp.EmulateMobile)
	}
	started := make(chan error, 1)
	go func() {
		started <- chromedp.Do(ctx, chromedp.EmulateViewport(int64(cfg.width), int64(cfg.height), viewport...))
	}()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("browser: start %s: %v", cfg.execPath, err)
		}
	case <-time.After(startTimeout):
		t.Fatalf("browser: start %s: no tab after %v", cfg.execPath, startTimeout)
	}
	return b
}

// allocatorOptions are the command line and environment of the browser.
func (b *Browser) allocatorOptions(cfg config, home string) []chromedp.ExecAllocatorOption {
	opts := append([]chromedp.ExecAllocatorOption{}, chromedp.DefaultExecAllocatorOptions[:]...)
	opts = append(opts,
		chromedp.ExecPath(cfg.execPath),
		// The new headless mode is the real browser without a window; the
		// old one is a separate build that Debian does not ship.
		chromedp.Flag("headless", "new"),
		chromedp.UserDataDir(b.profileDir),
		chromedp.WindowSize(cfg.width, cfg.height),
		chromedp.Flag("lang", "en-US"),
		chromedp.Flag("hide-scrollbars", true),
		// Nothing but what a test names: no component updates, pings,
		// domain reliability reports, crash uploads or DNS prefetching;
		// addresses are reached directly, and every request to a host name
		// but localhost and those that Resolve maps goes to a proxy on a
		// closed loopback port, and fails, without a name lookup.
		chromedp.Flag("proxy-server", deadProxy),
		chromedp.Flag("proxy-bypass-list", proxyBypassList(cfg.resolveHosts)),
		chromedp.Flag("dns-prefetch-disable", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("disable-crash-reporter", true),
		// The browser gets none of the test's environment (proxies,
		// DISPLAY, secrets); HOME and the XDG directories point into the
		// test's directory, so it reads no NSS database, config or cache of
		// the user.
		chromedp.NoInheritEnv,
		chromedp.Env("PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "TZ=UTC", "HOME="+home,
			"XDG_CONFIG_HOME="+filepath.Join(home, ".config"),
			"XDG_CACHE_HOME="+filepath.Join(home, ".cache")),
		chromedp.ModifyCmdFunc(func(cmd *exec.Cmd) { prepareCmd(cmd, cfg) }),
	)
	// Chromium's sandbox needs user namespaces (or the setuid helper, which
	// Debian does not ship); as root it refuses to start with the sandbox,
	// and a CI runner's container may not grant user namespaces anyway. The
	// pages under test are our own, served from loopback.
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	if len(cfg.resolve) > 0 {
		opts = append(opts, chromedp.Flag("host-resolver-rules", strings.Join(cfg.resolve, ", ")))
	}
	if len(cfg.trust) > 0 {
		opts = append(opts, chromedp.Flag("ignore-certificate-errors-spki-list", strings.Join(cfg.trust, ",")))
	}
	return opts
}

// prepareCmd kills the browser with the test binary, and runs it through
// `ip netns exec` when InNetns asked for a namespace. `ip netns exec` execs
// the browser in place, so the process is still the browser: the pipe to it,
// the parent-death signal and the kill on close all reach it.
func prepareCmd(cmd *exec.Cmd, cfg config) {
	setPdeathsig(cmd)
	if cfg.netns != "" {
		ip := ipPath()
		cmd.Args = append([]string{ip, "netns", "exec", cfg.netns, cfg.execPath}, cmd.Args[1:]...)
		cmd.Path = ip
	}
}

// ipPath is the ip(8) command of iproute2.
func ipPath() string {
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "ip"
}

// validNetnsName reports whether name is a plain network namespace name:
// it becomes an argument of ip(8), and a file under /run/netns.
func validNetnsName(name string) bool {
	if name == "" || len(name) > 64 || name == "." || name == ".." || name[0] == '-' {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// logf passes chromedp's messages to the test's log while the test runs.
func (b *Browser) logf(format string, args ...any) {
	b.logMu.Lock()
	defer b.logMu.Unlock()
	if b.alive {
		b.t.Logf("browser: chromedp: "+format, args...)
	}
}

// close closes the browser gracefully, kills it if that does not finish in
// time, then kills every process still running from its folder (Chromium's
// crash handlers detach from it and outlive it, and its zygote, GPU and
// network processes can outlive a killed browser), and fails the test if
// any survives.
func (b *Browser) close(cancel, allocCancel context.CancelFunc) {
	ctx, cancelClose := context.WithTimeout(b.ctx, closeTimeout)
	err := chromedp.Cancel(ctx)
	cancelClose()
	cancel()
	allocCancel() // waits until the browser process has exited
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, chromedp.ErrInvalidContext) {
		b.t.Logf("browser: close: %v", err)
	}
	if left := killBrowserProcesses(b.root, 5*time.Second); len(left) > 0 {
		b.t.Errorf("browser: Chromium processes %v of %s survived SIGKILL", left, b.root)
	}
	b.logMu.Lock()
	b.alive = false
	b.logMu.Unlock()
}

// ProfileDir is the browser's profile directory (--user-data-dir), unique to
// this browser and removed after the test.
func (b *Browser) ProfileDir() string { return b.profileDir }

// Context is the tab's chromedp context, for actions this package does not
// offer. It has no deadline: bound each use with context.WithTimeout.
func (b *Browser) Context() context.Context { return b.ctx }
