package endpoint

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cvpn/cvpn/endpoint/connlog"
)

// readLog returns the records of the lab's log file name (none when it does not exist).
func (l *lab) readLog(name string) []connlog.Record {
	l.t.Helper()
	f, err := os.Open(filepath.Join(l.dir, name))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		l.t.Fatal(err)
	}
	defer f.Close()
	recs, skipped, err := connlog.ReadRecords(f)
	if err != nil || skipped > 0 {
		l.t.Fatalf("%s: %v, %d lines skipped", name, err, skipped)
	}
	return recs
}

// waitLog waits until the log file name holds a record that match accepts.
func (l *lab) waitLog(name string, what string, match func(connlog.Record) bool) connlog.Record {
	l.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if i := slices.IndexFunc(l.readLog(name), match); i >= 0 {
			return l.readLog(name)[i]
		}
	}
	l.t.Fatalf("%s: no %s in %+v", name, what, l.readLog(name))
	return connlog.Record{}
}

func connectOf(cn string) func(connlog.Record) bool {
	return func(r connlog.Record) bool {
		return r.CommonName == cn && r.AttemptStatus == "successful" && !r.Final()
	}
}

func finalOf(cn string) func(connlog.Record) bool {
	return func(r connlog.Record) bool { return r.CommonName == cn && r.Final() }
}

// TestConnectionLogLive: a reload turns the connection log on and moves it to another file at
// once, ReopenConnectionLog (SIGUSR1) starts a new file at the path after logrotate moved it, and
// Stop writes the final records of the sessions it ends.
func TestConnectionLogLive(t *testing.T) {
	l := newLab(t)
	l.start()
	a, _ := l.connect(clientOptions{cn: "a"})
	l.ping(a, 1)

	const anchor = "bandwidth_limit_mbps: 0\n"
	rep, err := l.reload(anchor, anchor+"connection_log: {enabled: true, file: one.log}\n")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rep.Changed, "connection_log.enabled") || !slices.Contains(rep.Changed, "connection_log.file") {
		t.Errorf("reload changed %v", rep.Changed)
	}
	b, _ := l.connect(clientOptions{cn: "b"})
	l.ping(b, 2)
	rb := l.waitLog("one.log", "connect record of b", connectOf("b"))
	if rb.ClientIP != b.Address().Addr().String() || rb.ConnectionID == connlog.NA || rb.EndpointID != endpointID(l.run.Endpoint().Config) {
		t.Errorf("b's connect record %+v", rb)
	}

	if _, err := l.reload(anchor, anchor+"connection_log: {enabled: true, file: two.log}\n"); err != nil {
		t.Fatal(err)
	}
	a.Close()
	ra := l.waitLog("two.log", "final record of a", finalOf("a"))
	if ra.IngressPackets == "0" || ra.EgressPackets == "0" {
		t.Errorf("a's final record counts no traffic: %+v", ra)
	}
	if recs := l.readLog("one.log"); len(recs) != 1 {
		t.Errorf("one.log after the switch: %+v, want b's connect record alone", recs)
	}

	if err := os.Rename(filepath.Join(l.dir, "two.log"), filepath.Join(l.dir, "two.log.1")); err != nil {
		t.Fatal(err)
	}
	l.run.ReopenConnectionLog()
	if !strings.Contains(l.logs.String(), "connection log reopened") {
		t.Errorf("no log line of the reopening:\n%s", l.logs.String())
	}
	l.run.Stop()
	select {
	case <-l.done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Stop")
	}
	recs := l.readLog("two.log")
	if len(recs) != 1 || !finalOf("b")(recs[0]) || recs[0].ConnectionID != rb.ConnectionID {
		t.Errorf("two.log after the reopening and Stop: %+v, want b's final record", recs)
	}
	if recs := l.readLog("two.log.1"); len(recs) != 1 || !finalOf("a")(recs[0]) {
		t.Errorf("two.log.1: %+v, want a's final record", recs)
	}

	// Turned off, nothing more is written.
	l2 := newLab(t)
	l2.writeFile("endpoint.yaml", []byte(baseFile+"connection_log: {enabled: false, file: off.log}\n"))
	l2.start()
	c, _ := l2.connect(clientOptions{cn: "c"})
	c.Close()
	time.Sleep(200 * time.Millisecond)
	if _, err := os.Stat(filepath.Join(l2.dir, "off.log")); !os.IsNotExist(err) {
		t.Errorf("a disabled log was written: %v", err)
	}
}
