package browser

import (
	"context"
	"errors"
	"syscall"
	"time"

	"crypto/rand"
	"encoding/hex"
	"fmt"
	"github.com/chromedp/chromedp"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/cvpn/cvpn/internal/netlab"
)

// TestInNetns: a browser started InNetns reaches a server that listens on
// the loopback of a namespace the test made; a browser outside does not.
func TestInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a network namespace (CI runs as root)")
	}
	var id [4]byte
	_, _ = rand.Read(id[:])
	ns := "cvbr" + hex.EncodeToString(id[:])
	for _, args := range [][]string{{"netns", "add", ns}, {"-n", ns, "link", "set", "lo", "up"}} {
		if out, err := exec.Command(ipPath(), args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		if args[0] == "netns" {
			t.Cleanup(func() {
				if out, err := exec.Command(ipPath(), "netns", "del", ns).CombinedOutput(); err != nil {
					t.Errorf("ip netns del %s: %v: %s", ns, err, out)
				}
			})
		}
	}
	ln, err := netlab.ListenTCPIn(ns, netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatalf("listen in %s: %v", ns, err)
	}
	token := "inside-" + ns
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<h1 id="where">%s</h1>`, token)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	url := fmt.Sprintf("http://%s/", ln.Addr().(*net.TCPAddr).AddrPort())

	inside := Start(t, InNetns(ns))
	inside.Navigate(url)
	if got := inside.Text("#where"); got != token {
		t.Fatalf("inside %s the page says %q, want %q", ns, got, token)
	}
	// Every process of that browser runs in the namespace.
	nsIno := netnsInode(t, "/run/netns/"+ns)
	pids := browserProcesses(inside.root)
	if len(pids) == 0 {
		t.Fatal("found no process of the browser")
	}
	for _, pid := range pids {
		if got := netnsInode(t, fmt.Sprintf("/proc/%d/ns/net", pid)); got != nsIno && got != 0 {
			t.Errorf("browser process %d is in network namespace %d, want %d (%s)", pid, got, nsIno, ns)
		}
	}

	outside := Start(t)
	if err := outside.TryNavigate(url); err == nil {
		ctx, cancel := context.WithTimeout(outside.Context(), 5*time.Second)
		defer cancel()
		body, err := chromedp.Run(ctx, chromedp.Evaluate[string]("document.body ? document.body.innerText : ''"))
		if err != nil || strings.Contains(body, token) {
			t.Fatalf("a browser outside %s reached the server inside it (%q, %v)", ns, body, err)
		}
	}
}

// netnsInode is the inode of a network namespace file, which names the
// namespace; 0 if the process is gone.
func netnsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return 0
		}
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

func TestInNetnsNames(t *testing.T) {
	for _, name := range []string{"cv1234s", "a.b_c-d"} {
		if !validNetnsName(name) {
			t.Errorf("%q refused", name)
		}
	}
	for _, name := range []string{"", ".", "..", "-n", "a/b", "a b", "a;rm", strings.Repeat("x", 65), "../../etc"} {
		if validNetnsName(name) {
			t.Errorf("%q accepted", name)
		}
	}
	msg := failureOf(t, func(tb testing.TB) { Start(tb, InNetns("a b")) })
	if !strings.Contains(msg, "InNetns") {
		t.Fatalf("Start with a bad namespace failed with %q", msg)
	}
}
