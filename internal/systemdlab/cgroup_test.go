package systemdlab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHierarchies(t *testing.T) {
	hs, err := hierarchies()
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) == 0 {
		t.Fatal("no cgroup hierarchy found; the lab needs one")
	}
	for _, h := range hs {
		d := filepath.Join(h.mountPoint, h.own)
		if _, err := os.Stat(filepath.Join(d, "cgroup.procs")); err != nil {
			t.Errorf("hierarchy %+v: the process's own cgroup %s: %v", h, d, err)
		}
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/sys/fs/cgroup`:    "/sys/fs/cgroup",
		`/a\040b`:           "/a b",
		`/a\011b\134c`:      "/a\tb\\c",
		`/trailing\04`:      `/trailing\04`,
		`/not\9octal`:       `/not\9octal`,
		`\040`:              " ",
		`/x\0401\040\040y/`: "/x 1  y/",
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestValidUnitName(t *testing.T) {
	for _, ok := range []string{"hello.service", "getty@.service", "getty@tty1.service", "sys-kernel-debug.mount", "dev-disk-by\\x2duuid.device"} {
		if err := validUnitName(ok); err != nil {
			t.Errorf("validUnitName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "hello", "-x.service", "../../etc/passwd.service", "a b.service", "a/b.service", "x.service\n", strings.Repeat("a", 300) + ".service"} {
		if err := validUnitName(bad); err == nil {
			t.Errorf("validUnitName(%q) accepted it", bad)
		}
	}
}

func TestSeedPath(t *testing.T) {
	if got, err := seedPath("/s", "/etc/systemd/system/x.service"); err != nil || got != "/s/etc/systemd/system/x.service" {
		t.Errorf("seedPath = %q, %v", got, err)
	}
	for _, bad := range []string{"etc/x", "/etc/../../x", "/", "/etc/", "/etc//x", ""} {
		if got, err := seedPath("/s", bad); err == nil {
			t.Errorf("seedPath(%q) = %q, want an error", bad, got)
		}
	}
}

func TestCapped(t *testing.T) {
	var c capped
	big := strings.Repeat("x", maxConsole-3)
	if n, _ := c.Write([]byte(big)); n != len(big) {
		t.Fatalf("Write = %d", n)
	}
	if n, _ := c.Write([]byte("abcdef")); n != 6 {
		t.Fatalf("Write past the cap = %d, want 6 (it drops, never blocks)", n)
	}
	if s := c.String(); len(s) != maxConsole || !strings.HasSuffix(s, "abc") {
		t.Errorf("kept %d bytes ending %q", len(s), s[len(s)-5:])
	}
}

func TestIsMachineName(t *testing.T) {
	for name, want := range map[string]bool{"cvsd0a1b2c": true, "cvsd0A1b2c": false, "cvsd0a1b2": false, "cvsd0a1b2c3": false, "cv0a1b2cs": false, "xcvsd0a1b2c": false} {
		if got := isMachineName(name); got != want {
			t.Errorf("isMachineName(%q) = %v", name, got)
		}
	}
}

func TestUpperSize(t *testing.T) {
	for size, want := range map[string]bool{"1g": true, "512m": true, "1048576": true, "0": false, "": false, "1g,exec": false, "1G": false, "50%": false} {
		if got := upperSizeRE.MatchString(size); got != want {
			t.Errorf("upper size %q accepted: %v, want %v", size, got, want)
		}
	}
}
