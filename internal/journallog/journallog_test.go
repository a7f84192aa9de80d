package journallog

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
)

// entry is one entry a fake journal received.
type entry struct {
	message  string
	priority journal.Priority
	fields   map[string]string
}

// fakeJournal records what Send would have sent; fail makes it refuse.
type fakeJournal struct {
	mu      sync.Mutex
	entries []entry
	fail    error
}

func (j *fakeJournal) send(message string, priority journal.Priority, fields map[string]string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.fail != nil {
		return j.fail
	}
	j.entries = append(j.entries, entry{message, priority, fields})
	return nil
}

func (j *fakeJournal) only(t *testing.T) entry {
	t.Helper()
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(j.entries) != 1 {
		t.Fatalf("%d entries, want 1: %+v", len(j.entries), j.entries)
	}
	e := j.entries[0]
	j.entries = nil
	return e
}

func checkFields(t *testing.T, got map[string]string, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("field %s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("fields %v, want exactly %v", got, want)
	}
}

// TestSessionLine: a session's log line becomes an entry with the priority of its level, the
// identifier, each attribute as a field, and the message followed by the attributes.
func TestSessionLine(t *testing.T) {
	j := &fakeJournal{}
	log := slog.New(New(Options{Send: j.send}))
	at := time.Date(2026, 11, 29, 16, 0, 0, 5, time.UTC)
	log.Info("client connected", "user", "alice", "connection_id", "cvpn-endpoint-0123-abc", "remote",
		netip.MustParseAddrPort("192.0.2.7:51000"), "groups", []string{"dev", "ops"}, "message", "hello there",
		"err", errors.New("none"), "took", 1500*time.Millisecond, "at", at, "id", 7)
	e := j.only(t)
	if e.priority != journal.PriInfo {
		t.Errorf("priority %d, want %d", e.priority, journal.PriInfo)
	}
	wantMsg := `client connected user=alice connection_id=cvpn-endpoint-0123-abc remote=192.0.2.7:51000 groups="[dev ops]" ` +
		`message="hello there" err=none took=1.5s at=2026-11-29T16:00:00.000000005Z id=7`
	if e.message != wantMsg {
		t.Errorf("MESSAGE\n%s\nwant\n%s", e.message, wantMsg)
	}
	checkFields(t, e.fields, map[string]string{
		"SYSLOG_IDENTIFIER": "cvpn", "USER": "alice", "CONNECTION_ID": "cvpn-endpoint-0123-abc",
		"REMOTE": "192.0.2.7:51000", "GROUPS": "[dev ops]", "CVPN_MESSAGE": "hello there", "ERR": "none",
		"TOOK": "1.5s", "AT": "2026-11-29T16:00:00.000000005Z", "ID": "7",
	})
}

// TestLevelsAndEnabled: slog's levels map to the journal's priorities, and records below the
// handler's level are not written.
func TestLevelsAndEnabled(t *testing.T) {
	for _, tc := range []struct {
		level slog.Level
		want  journal.Priority
	}{
		{slog.LevelDebug - 4, journal.PriDebug},
		{slog.LevelDebug, journal.PriDebug},
		{slog.LevelInfo, journal.PriInfo},
		{slog.LevelInfo + 2, journal.PriInfo},
		{slog.LevelWarn, journal.PriWarning},
		{slog.LevelError, journal.PriErr},
		{slog.LevelError + 8, journal.PriErr},
	} {
		if got := Priority(tc.level); got != tc.want {
			t.Errorf("Priority(%v) = %d, want %d", tc.level, got, tc.want)
		}
	}
	j := &fakeJournal{}
	log := slog.New(New(Options{Send: j.send, Level: slog.LevelInfo}))
	log.Debug("quiet")
	log.Warn("loud")
	if e := j.only(t); e.message != "loud" || e.priority != journal.PriWarning {
		t.Errorf("got %+v, want the warning only", e)
	}
}

// TestWithAttrsAndGroups: attributes given to With, groups and nested groups become prefixed
// fields (ENDPOINT, SESSION_ID, SESSION_PEER_ADDR) and dotted keys in MESSAGE; an empty-keyed group
// is inlined and empty attributes are dropped.
func TestWithAttrsAndGroups(t *testing.T) {
	j := &fakeJournal{}
	log := slog.New(New(Options{Send: j.send, Identifier: "cvpn@a"}))
	log.With("endpoint", "a").WithGroup("session").With("id", 3).Info("renegotiated",
		slog.Group("peer", "addr", "10.2.0.6"), slog.Group("", "inline", true), slog.Attr{}, slog.Group("empty"))
	e := j.only(t)
	if want := "renegotiated endpoint=a session.id=3 session.peer.addr=10.2.0.6 session.inline=true"; e.message != want {
		t.Errorf("MESSAGE %q, want %q", e.message, want)
	}
	checkFields(t, e.fields, map[string]string{
		"SYSLOG_IDENTIFIER": "cvpn@a", "ENDPOINT": "a", "SESSION_ID": "3", "SESSION_PEER_ADDR": "10.2.0.6", "SESSION_INLINE": "true",
	})
	// The parent logger is unchanged.
	log.Info("plain")
	if e := j.only(t); e.message != "plain" || len(e.fields) != 1 {
		t.Errorf("the parent logger gained attributes: %+v", e)
	}
}

// TestHostileValues: a value from the network with newlines or a forged assignment stays one
// field's value (the native protocol carries it length-prefixed) and is quoted in MESSAGE; a
// huge value is cut.
func TestHostileValues(t *testing.T) {
	j := &fakeJournal{}
	log := slog.New(New(Options{Send: j.send}))
	evil := "mallory\nPRIORITY=0\nMESSAGE=forged"
	log.Warn("authentication refused", "user", evil, "cn", strings.Repeat("é", MaxValue))
	e := j.only(t)
	if e.fields["USER"] != evil || e.priority != journal.PriWarning {
		t.Errorf("USER = %q, priority %d", e.fields["USER"], e.priority)
	}
	if strings.Contains(e.message, "\n") || !strings.Contains(e.message, `user="mallory\nPRIORITY=0\nMESSAGE=forged"`) {
		t.Errorf("MESSAGE %q does not quote the value onto one line", e.message)
	}
	cn := e.fields["CN"]
	if len(cn) > MaxValue || !strings.HasSuffix(cn, "...") || !strings.HasPrefix(cn, "éé") || !utf8Valid(cn) {
		t.Errorf("CN of %d bytes, want at most %d, cut on a character and marked", len(cn), MaxValue)
	}
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

// TestFallbackWhenJournalFails: an entry the journal refuses goes to the fallback handler, with
// the attributes and groups of With.
func TestFallbackWhenJournalFails(t *testing.T) {
	j := &fakeJournal{fail: errors.New("connection refused")}
	var text bytes.Buffer
	fallback := slog.NewTextHandler(&text, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}})
	log := slog.New(New(Options{Send: j.send, Fallback: fallback}))
	log.With("endpoint", "a").WithGroup("s").Error("reload refused", "err", "bad file")
	if want := "level=ERROR msg=\"reload refused\" endpoint=a s.err=\"bad file\"\n"; text.String() != want {
		t.Errorf("fallback wrote %q, want %q", text.String(), want)
	}
	// Without a fallback, the error is returned to the caller of Handle.
	h := New(Options{Send: j.send})
	if err := h.Handle(context.Background(), slog.NewRecord(time.Now(), slog.LevelInfo, "x", 0)); err == nil {
		t.Error("Handle without a fallback returned no error when the journal refused")
	}
}

// TestFieldName: keys become names journald accepts.
func TestFieldName(t *testing.T) {
	for key, want := range map[string]string{
		"user": "USER", "connection_id": "CONNECTION_ID", "remote": "REMOTE", "key-id": "KEY_ID",
		"_private": "PRIVATE", "9lives": "CVPN_9LIVES", "message": "CVPN_MESSAGE", "PRIORITY": "CVPN_PRIORITY",
		"syslog_identifier": "CVPN_SYSLOG_IDENTIFIER", "object_pid": "CVPN_OBJECT_PID", "a.b c": "A_B_C",
		"---": "", "": "", "__": "", "x" + strings.Repeat("y", 100): "X" + strings.Repeat("Y", 63),
	} {
		if got := FieldName(key); got != want {
			t.Errorf("FieldName(%q) = %q, want %q", key, got, want)
		}
		if want != "" && !validName(FieldName(key)) {
			t.Errorf("FieldName(%q) = %q, which journald refuses", key, FieldName(key))
		}
	}
}

// validName is journald's check of a field name a client sends (journal_field_valid).
func validName(s string) bool {
	if s == "" || len(s) > 64 || s[0] == '_' || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// FuzzFieldName: whatever the key, the name is empty or one journald accepts.
func FuzzFieldName(f *testing.F) {
	for _, s := range []string{"user", "_x", "9", "message", "é", "a-b", strings.Repeat("z", 70)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		if name := FieldName(key); name != "" && !validName(name) {
			t.Fatalf("FieldName(%q) = %q, which journald refuses", key, name)
		}
	})
}

// TestRealJournal sends one entry to the host's journal when there is one (systemd as PID 1).
func TestRealJournal(t *testing.T) {
	if _, err := os.Stat("/run/systemd/journal/socket"); err != nil || !journal.Enabled() {
		t.Skip("no systemd journal on this host")
	}
	h := New(Options{})
	if err := h.Handle(context.Background(), slog.NewRecord(time.Now(), slog.LevelDebug, "cvpn journallog test", 0)); err != nil {
		t.Fatalf("sending to the journal: %v", err)
	}
}
