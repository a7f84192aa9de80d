package deploy

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// units are the unit files the package installs.
var units = []string{"cvpn.service", "cvpn@.service"}

// maxExposure is the highest `systemd-analyze security` score allowed: "OK" ends at 2.5.
const maxExposure = 2.5

// need returns the path of a tool the tests need; make deps installs them all.
func need(t *testing.T, tool string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s is needed (make deps installs it): %v", tool, err)
	}
	return path
}

var exposureLine = regexp.MustCompile(`Overall exposure level for \S+: (\d+\.\d+)`)

// exposure runs systemd-analyze security on a unit file with --threshold at maxExposure and
// returns the overall score and whether systemd-analyze accepted it.
func exposure(t *testing.T, unit string) (score float64, ok bool, out string) {
	t.Helper()
	cmd := exec.Command(need(t, "systemd-analyze"), "security", "--offline=yes", "--no-pager",
		"--threshold="+strconv.Itoa(int(maxExposure*10)), unit)
	b, err := cmd.CombinedOutput()
	out = string(b)
	m := exposureLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security %s: no overall exposure level (%v):\n%s", unit, err, out)
	}
	score, _ = strconv.ParseFloat(m[1], 64)
	return score, err == nil, out
}

// TestUnitsExposure: both units score "OK" or better, and a unit without the sandbox does not
// (so the check can fail).
func TestUnitsExposure(t *testing.T) {
	for _, u := range units {
		score, ok, out := exposure(t, filepath.Join("systemd", u))
		t.Logf("%s: exposure %.1f", u, score)
		if score > maxExposure || !ok {
			t.Errorf("%s: exposure %.1f, want at most %.1f (threshold accepted: %v):\n%s", u, score, maxExposure, ok, out)
		}
	}
	bare := filepath.Join(t.TempDir(), "bare.service")
	if err := os.WriteFile(bare, []byte("[Service]\nExecStart=/usr/bin/cvpn serve\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if score, ok, _ := exposure(t, bare); ok || score <= maxExposure {
		t.Errorf("a unit without a sandbox: exposure %.1f, accepted %v", score, ok)
	}
}

// TestUnitsHardening checks the settings the service's least privilege rests on, which a
// score alone would not notice being traded for others.
func TestUnitsHardening(t *testing.T) {
	for _, u := range units {
		text, err := os.ReadFile(filepath.Join("systemd", u))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			"Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=30s", "Restart=on-failure",
			"User=cvpn", "Group=cvpn",
			"AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
			"CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
			"NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
			"DevicePolicy=closed", "DeviceAllow=/dev/net/tun rw", "ProtectKernelTunables=yes",
			"RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK AF_UNIX",
			"SystemCallFilter=@system-service", "SystemCallArchitectures=native",
			"StateDirectory=cvpn", "LogsDirectory=cvpn", "RuntimeDirectory=cvpn", "ConfigurationDirectory=cvpn",
			"MemoryDenyWriteExecute=yes", "UMask=0077",
			"ExecStartPre=+/usr/lib/systemd/systemd-sysctl 60-cvpn.conf",
		} {
			if !strings.Contains(string(text), "\n"+want) {
				t.Errorf("%s lacks %q", u, want)
			}
		}
	}
}

// built holds the binaries the tests build once: cvpn (static, as packaged) and cvpn-docs.
var built struct {
	once       sync.Once
	dir        string
	cvpn, docs string
	err        error
	out        []byte
}

func buildBinaries(t *testing.T) (cvpn, docs string) {
	t.Helper()
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "cvpn-deploy-test-")
		if built.err != nil {
			return
		}
		built.cvpn = filepath.Join(built.dir, "cvpn")
		built.docs = filepath.Join(built.dir, "cvpn-docs")
		cmd := exec.Command("go", "build", "-o", built.dir+"/", "../cmd/cvpn", "../cmd/cvpn-docs")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		built.out, built.err = cmd.CombinedOutput()
	})
	if built.err != nil {
		t.Fatalf("go build: %v\n%s", built.err, built.out)
	}
	return built.cvpn, built.docs
}

// TestMain removes what the tests built once for all of them.
func TestMain(m *testing.M) {
	code := m.Run()
	for _, dir := range []string{built.dir, deb.dist} {
		if dir != "" {
			os.RemoveAll(dir)
		}
	}
	os.Exit(code)
}

// TestUnitsVerify runs systemd-analyze verify on the units with ExecStart= pointing at a built
// cvpn and MANPATH at the generated manual pages (so Documentation= is checked too), and
// fails on anything it says about them. An unknown key is caught (so the check can fail).
func TestUnitsVerify(t *testing.T) {
	cvpn, docs := buildBinaries(t)
	dir := t.TempDir()
	man := filepath.Join(dir, "man")
	for _, sec := range []string{"man5", "man8"} {
		if err := os.MkdirAll(filepath.Join(man, sec), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(docs, "man", "--cvpn", cvpn, "--readme", "../README.md", "--out", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("cvpn-docs: %v: %s", err, out)
	}
	for page, sec := range map[string]string{"cvpn.8": "man8", "cvpn-endpoint.5": "man5"} {
		if err := os.Rename(filepath.Join(dir, page), filepath.Join(man, sec, page)); err != nil {
			t.Fatal(err)
		}
	}
	verify := func(name, text string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		text = strings.ReplaceAll(text, "/usr/bin/cvpn", cvpn)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(need(t, "systemd-analyze"), "verify", "--man=yes", path)
		cmd.Env = append(os.Environ(), "MANPATH="+man)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		if err != nil && stderr.Len() == 0 {
			t.Fatalf("systemd-analyze verify %s: %v", name, err)
		}
		base := strings.TrimSuffix(name, ".service")
		var about []string
		for _, line := range strings.Split(stderr.String(), "\n") {
			if strings.Contains(line, base) {
				about = append(about, line)
			}
		}
		return strings.Join(about, "\n")
	}
	for _, u := range units {
		text, err := os.ReadFile(filepath.Join("systemd", u))
		if err != nil {
			t.Fatal(err)
		}
		name := strings.Replace(u, "@.", "@test.", 1) // a template is verified as an instance
		if msg := verify(name, string(text)); msg != "" {
			t.Errorf("systemd-analyze verify %s:\n%s", u, msg)
		}
		broken := strings.Replace(string(text), "[Service]\n", "[Service]\nFrobnicate=yes\n", 1)
		if msg := verify("broken-"+name, broken); !strings.Contains(msg, "Frobnicate") {
			t.Errorf("systemd-analyze verify says nothing of an unknown key in %s: %q", u, msg)
		}
	}
}

// TestSysctlFile applies the sysctl file as the units' ExecStartPre= does (systemd-sysctl
// 60-cvpn.conf, found by name in /usr/lib/sysctl.d) in new mount and network namespaces, whose
// sysctl.d directory and net settings are their own, and reads the settings back: forwarding
// of both families on, proxy NDP on, and no proxy ARP or NDP delay on every interface there (lo
// and a veth pair). A new network namespace has no net.ipv4.neigh.default nor
// net.ipv6.neigh.default (only the host's has), so those lines are only checked to be in the
// file, marked to be passed over quietly where they are missing.
func TestSysctlFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make network and mount namespaces (CI runs as root)")
	}
	const read = `cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/neigh/lo/proxy_delay /proc/sys/net/ipv4/neigh/cvpntest0/proxy_delay ` +
		`/proc/sys/net/ipv6/conf/all/forwarding /proc/sys/net/ipv6/conf/cvpntest0/forwarding /proc/sys/net/ipv6/conf/cvpntest0/proxy_ndp ` +
		`/proc/sys/net/ipv6/neigh/cvpntest0/proxy_delay /proc/sys/net/ipv6/conf/default/proxy_ndp`
	const dummy = `ip link add cvpntest0 type veth peer name cvpntest1 && `
	unshare := need(t, "unshare")
	need(t, "ip")
	before, err := exec.Command(unshare, "--net", "sh", "-c", dummy+read).CombinedOutput()
	if err != nil {
		t.Fatalf("unshare: %v: %s", err, before)
	}
	if got := strings.Join(strings.Fields(string(before)), " "); got != "0 80 80 0 0 0 80 0" {
		t.Fatalf("a new namespace starts with forwarding on, proxy NDP on or no proxy delay: %q", got)
	}
	conf, err := os.ReadFile("sysctl/60-cvpn.conf")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "60-cvpn.conf"), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"net.ipv4.ip_forward = 1", "-net.ipv4.neigh.default.proxy_delay = 0", "net.ipv4.neigh.*.proxy_delay = 0",
		"net.ipv6.conf.all.forwarding = 1", "net.ipv6.conf.*.proxy_ndp = 1", "-net.ipv6.neigh.default.proxy_delay = 0", "net.ipv6.neigh.*.proxy_delay = 0"} {
		if !strings.Contains(string(conf), "\n"+line+"\n") {
			t.Errorf("60-cvpn.conf lacks %q", line)
		}
	}
	script := dummy + `mount --bind "$1" /usr/lib/sysctl.d && /usr/lib/systemd/systemd-sysctl 60-cvpn.conf && ` + read
	var stderr bytes.Buffer
	cmd := exec.Command(unshare, "--mount", "--net", "sh", "-c", script, "sh", dir)
	cmd.Stderr = &stderr
	after, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("systemd-sysctl 60-cvpn.conf: %v: %s%s", err, stderr.Bytes(), after)
	}
	if got := strings.Join(strings.Fields(string(after)), " "); got != "1 0 0 1 1 1 0 1" {
		t.Errorf("after the sysctl file: ip_forward, lo's and cvpntest0's proxy_delay, IPv6 forwarding (all, cvpntest0), cvpntest0's proxy_ndp "+
			"and proxy_delay, and default's proxy_ndp are %q, want 1 0 0 1 1 1 0 1", got)
	}
}

// deb is the package deploy/debian/build.sh builds, once, into a temporary directory.
var deb struct {
	once sync.Once
	path string
	dist string
	err  error
	out  []byte
}

const testVersion = "0.0.0+test"

func buildDeb(t *testing.T) string {
	t.Helper()
	need(t, "dpkg-deb")
	deb.once.Do(func() {
		deb.dist, deb.err = os.MkdirTemp("", "cvpn-deb-test-")
		if deb.err != nil {
			return
		}
		cmd := exec.Command("deploy/debian/build.sh", testVersion)
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "DIST="+deb.dist)
		deb.out, deb.err = cmd.CombinedOutput()
		deb.path = filepath.Join(deb.dist, "cvpn_"+testVersion+"_"+runtime.GOARCH+".deb")
	})
	if deb.err != nil {
		t.Fatalf("build.sh: %v\n%s", deb.err, deb.out)
	}
	return deb.path
}

// TestDebContents: the package holds a static cvpn, the units as they are in deploy/systemd, the
// sysctl file, manual pages man renders, completions that complete, the documents lintian asks
// for, the maintainer scripts, and no live endpoint file.
func TestDebContents(t *testing.T) {
	pkg := buildDeb(t)
	field := func(name string) string {
		out, err := exec.Command("dpkg-deb", "-f", pkg, name).Output()
		if err != nil {
			t.Fatalf("dpkg-deb -f %s: %v", name, err)
		}
		return strings.TrimSpace(string(out))
	}
	for name, want := range map[string]string{"Package": "cvpn", "Version": testVersion, "Architecture": runtime.GOARCH, "Depends": "adduser"} {
		if got := field(name); got != want {
			t.Errorf("control field %s is %q, want %q", name, got, want)
		}
	}

	listing, err := exec.Command("dpkg-deb", "-c", pkg).Output()
	if err != nil {
		t.Fatal(err)
	}
	modes := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(listing)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			t.Fatalf("dpkg-deb -c line %q", line)
		}
		if f[1] != "root/root" {
			t.Errorf("%s is owned by %s, want root/root", f[5], f[1])
		}
		modes[strings.TrimPrefix(f[5], ".")] = f[0]
	}
	for path, mode := range map[string]string{
		"/usr/bin/cvpn":                               "-rwxr-xr-x",
		"/usr/lib/systemd/system/cvpn.service":        "-rw-r--r--",
		"/usr/lib/systemd/system/cvpn@.service":       "-rw-r--r--",
		"/usr/lib/sysctl.d/60-cvpn.conf":              "-rw-r--r--",
		"/usr/share/man/man8/cvpn.8.gz":               "-rw-r--r--",
		"/usr/share/man/man5/cvpn-endpoint.5.gz":      "-rw-r--r--",
		"/usr/share/bash-completion/completions/cvpn": "-rw-r--r--",
		"/usr/share/zsh/vendor-completions/_cvpn":     "-rw-r--r--",
		"/usr/share/doc/cvpn/copyright":               "-rw-r--r--",
		"/usr/share/doc/cvpn/changelog.gz":            "-rw-r--r--",
		"/usr/share/doc/cvpn/examples/endpoint.yaml":  "-rw-r--r--",
		"/etc/cvpn/": "drwxr-xr-x",
	} {
		if got, ok := modes[path]; !ok {
			t.Errorf("the package lacks %s", path)
		} else if got != mode {
			t.Errorf("%s has mode %s, want %s", path, got, mode)
		}
	}
	for path := range modes {
		if strings.HasPrefix(path, "/etc/cvpn/") && path != "/etc/cvpn/" {
			t.Errorf("the package ships %s: /etc/cvpn is the admin's", path)
		}
	}

	root := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-R", pkg, root).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -R: %v: %s", err, out)
	}
	in := func(p string) string { return filepath.Join(root, p) }

	bin, err := elf.Open(in("usr/bin/cvpn"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range bin.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("usr/bin/cvpn is not static: it has a %v segment", p.Type)
		}
	}
	bin.Close()
	if out, err := exec.Command(in("usr/bin/cvpn"), "version").CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "cvpn ") {
		t.Errorf("the packaged cvpn version: %v: %s", err, out)
	}

	for _, u := range units {
		got, err := os.ReadFile(in("usr/lib/systemd/system/" + u))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := os.ReadFile(filepath.Join("systemd", u))
		if !bytes.Equal(got, want) {
			t.Errorf("the packaged %s differs from deploy/systemd/%s", u, u)
		}
	}

	for page, want := range map[string]string{"usr/share/man/man8/cvpn.8.gz": "cvpn client issue", "usr/share/man/man5/cvpn-endpoint.5.gz": "client_cidr_block"} {
		cmd := exec.Command(need(t, "man"), "-l", "-Tutf8", in(page))
		cmd.Env = append(os.Environ(), "MANWIDTH=200")
		out, err := cmd.Output()
		text := strings.Join(strings.Fields(regexp.MustCompile(".\b").ReplaceAllString(string(out), "")), " ")
		if err != nil || !strings.Contains(text, want) {
			t.Errorf("man -l %s: %v; lacks %q", page, err, want)
		}
	}

	bashFile := in("usr/share/bash-completion/completions/cvpn")
	if out, err := exec.Command("bash", "-n", bashFile).CombinedOutput(); err != nil {
		t.Errorf("bash -n %s: %v: %s", bashFile, err, out)
	}
	out, err := exec.Command("bash", "-c", `source "$1"; COMP_WORDS=(cvpn cli); COMP_CWORD=1; _cvpn; echo "${COMPREPLY[@]}"`, "bash", bashFile).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "client" {
		t.Errorf("bash completion of 'cvpn cli': %v: %q, want client", err, out)
	}
	if out, err := exec.Command(need(t, "zsh"), "-n", in("usr/share/zsh/vendor-completions/_cvpn")).CombinedOutput(); err != nil {
		t.Errorf("zsh -n _cvpn: %v: %s", err, out)
	}

	for _, script := range []string{"postinst", "prerm", "postrm"} {
		path := in("DEBIAN/" + script)
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("DEBIAN/%s: %v", script, err)
			continue
		}
		if out, err := exec.Command("sh", "-n", path).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v: %s", script, err, out)
		}
	}
	postinst, _ := os.ReadFile(in("DEBIAN/postinst"))
	for _, want := range []string{"adduser --quiet --system --group --no-create-home --home /var/lib/cvpn", "daemon-reload"} {
		if !strings.Contains(string(postinst), want) {
			t.Errorf("postinst lacks %q", want)
		}
	}
	if m := regexp.MustCompile(`(systemctl|deb-systemd-invoke|deb-systemd-helper)( --\S+)* (enable|start|restart|reenable)\b`).Find(postinst); m != nil {
		t.Errorf("postinst runs %q: installing must not enable or start anything", m)
	}
	postrm, _ := os.ReadFile(in("DEBIAN/postrm"))
	if !strings.Contains(string(postrm), "purge)") || !strings.Contains(string(postrm), "deluser --quiet --system cvpn") {
		t.Errorf("postrm does not remove the user on purge:\n%s", postrm)
	}
	if out, err := exec.Command("gzip", "-t", in("usr/share/doc/cvpn/changelog.gz")).CombinedOutput(); err != nil {
		t.Errorf("changelog.gz: %v: %s", err, out)
	}
}

// TestDebLintian: lintian reports no error about the package.
func TestDebLintian(t *testing.T) {
	pkg := buildDeb(t)
	out, err := exec.Command(need(t, "lintian"), "--fail-on", "error", "--display-info", pkg).CombinedOutput()
	t.Logf("lintian:\n%s", out)
	if err != nil {
		t.Errorf("lintian failed: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "E: ") {
			t.Errorf("lintian: %s", line)
		}
	}
}

// TestInstall: install.sh with another PREFIX puts the files there and the units name the
// binary there.
func TestInstall(t *testing.T) {
	dest := t.TempDir()
	cmd := exec.Command("deploy/install.sh", dest, "/opt/cvpn")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "BUILD="+filepath.Join(t.TempDir(), "build"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install.sh: %v\n%s", err, out)
	}
	for _, p := range []string{
		"opt/cvpn/bin/cvpn", "opt/cvpn/lib/systemd/system/cvpn.service", "opt/cvpn/lib/systemd/system/cvpn@.service",
		"opt/cvpn/lib/sysctl.d/60-cvpn.conf", "opt/cvpn/share/man/man8/cvpn.8.gz", "opt/cvpn/share/man/man5/cvpn-endpoint.5.gz",
		"opt/cvpn/share/bash-completion/completions/cvpn", "opt/cvpn/share/zsh/vendor-completions/_cvpn", "etc/cvpn",
	} {
		if _, err := os.Stat(filepath.Join(dest, p)); err != nil {
			t.Errorf("install.sh did not install %s: %v", p, err)
		}
	}
	unit, err := os.ReadFile(filepath.Join(dest, "opt/cvpn/lib/systemd/system/cvpn.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "\nExecStart=/opt/cvpn/bin/cvpn serve --config /etc/cvpn/endpoint.yaml\n") || strings.Contains(string(unit), "/usr/bin/cvpn") {
		t.Errorf("the installed unit does not run /opt/cvpn/bin/cvpn:\n%s", unit)
	}
	cmd = exec.Command("deploy/install.sh", dest, "relative")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "PREFIX must be an absolute path") {
		t.Errorf("install.sh with a relative PREFIX: %v: %s", err, out)
	}
}
