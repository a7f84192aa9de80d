package slapdlab

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestStartInNamespace runs slapd in a namespace of its own and searches it from inside that
// namespace with ldapsearch, while the admin writes go over the ldapi socket from outside.
func TestStartInNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root (make test runs as root)")
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	ns := "slapdlab" + hex.EncodeToString(b[:])
	for _, args := range [][]string{{"netns", "add", ns}, {"-n", ns, "link", "set", "lo", "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })

	l := StartIn(t, ns, "127.0.0.1")
	l.AddUser("dave", "dave-pw")
	l.AddGroup("vpn", "dave")
	out, err := exec.Command("ip", "netns", "exec", ns, "ldapsearch", "-x", "-LLL", "-H", l.URL,
		"-D", l.ServiceDN, "-w", l.ServicePassword, "-b", l.PeopleDN, "(uid=dave)", "memberOf").CombinedOutput()
	if err != nil {
		t.Fatalf("ldapsearch in %s: %v: %s", ns, err, out)
	}
	if !strings.Contains(strings.ToLower(string(out)), "memberof: "+strings.ToLower(l.GroupDN("vpn"))) {
		t.Errorf("ldapsearch in the namespace: %s", out)
	}
	// Not reachable from the root namespace: slapd listens in its own.
	if out, err := exec.Command("ldapsearch", "-x", "-LLL", "-o", "nettimeout=2", "-H", l.URL, "-b", l.BaseDN).CombinedOutput(); err == nil {
		t.Errorf("slapd in %s answered from the root namespace: %s", ns, out)
	}
	l.Restart()
	if out, err := exec.Command("ip", "netns", "exec", ns, "ldapwhoami", "-x", "-H", l.URL,
		"-D", l.UserDN("dave"), "-w", "dave-pw").CombinedOutput(); err != nil {
		t.Fatalf("ldapwhoami after restart: %v: %s", err, out)
	}
}
