// Package journallog is a slog.Handler that writes each record to the systemd journal as one
// entry of its native protocol (systemd.journal-fields(7), sent with go-systemd's journal
// package): PRIORITY from the level, SYSLOG_IDENTIFIER, MESSAGE, and every attribute as a field
// of its own (USER=alice, REMOTE=192.0.2.7:51000), so that journalctl can filter on them
// (journalctl -u cvpn USER=alice). MESSAGE also carries the attributes as key=value after the
// message, so that plain journalctl shows what the text log shows.
//
// It does not decide whether the journal is there: cmd/cvpn uses it when systemd connected
// stderr to the journal (JOURNAL_STREAM) and the journal's socket answers.
package journallog

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/coreos/go-systemd/v22/journal"
)

// Options configure a Handler.
type Options struct {
	// Level is the lowest level written; nil means slog.LevelInfo.
	Level slog.Leveler
	// Identifier is SYSLOG_IDENTIFIER, what journalctl shows in front of each line and
	// filters with -t; empty means "cvpn".
	Identifier string
	// Send writes one entry; nil means journal.Send (the journal's native socket).
	Send func(message string, priority journal.Priority, fields map[string]string) error
	// Fallback handles the records that could not be sent (the journal's socket went away),
	// for instance a text handler on stderr, which systemd also takes to the journal; nil
	// drops them.
	Fallback slog.Handler
}

// MaxValue is the most bytes of an attribute's value a field carries; longer values (from a
// client that sends a huge user name, say) are cut, and end in "...".
const MaxValue = 8192

// Handler writes records to the journal. It is safe for concurrent use.
type Handler struct {
	opts Options
	// fields are the attributes of WithAttrs, named; text is them as " key=value" for MESSAGE.
	fields []field
	text   string
	// group is the field name prefix and key prefix of WithGroup ("SESSION_", "session.").
	fieldPrefix, keyPrefix string
	fallback               slog.Handler
}

// field is one journal field.
type field struct{ name, value string }

// New returns a Handler with opts.
func New(opts Options) *Handler {
	if opts.Level == nil {
		opts.Level = slog.LevelInfo
	}
	if opts.Identifier == "" {
		opts.Identifier = "cvpn"
	}
	if opts.Send == nil {
		opts.Send = journal.Send
	}
	return &Handler{opts: opts, fallback: opts.Fallback}
}

// Enabled reports whether records at level are written.
func (h *Handler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= h.opts.Level.Level()
}

// Handle sends r as one journal entry, or to the fallback when that fails.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	fields := make(map[string]string, len(h.fields)+r.NumAttrs()+1)
	for _, f := range h.fields {
		fields[f.name] = f.value
	}
	var msg strings.Builder
	msg.WriteString(r.Message)
	msg.WriteString(h.text)
	r.Attrs(func(a slog.Attr) bool {
		h.addAttr(a, h.fieldPrefix, h.keyPrefix, func(f field, key string) {
			fields[f.name] = f.value
			writeText(&msg, key, f.value)
		})
		return true
	})
	fields["SYSLOG_IDENTIFIER"] = h.opts.Identifier
	err := h.opts.Send(msg.String(), Priority(r.Level), fields)
	if err != nil && h.fallback != nil {
		return h.fallback.Handle(ctx, r)
	}
	return err
}

// WithAttrs returns a Handler that adds attrs to every entry.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	h2 := *h
	h2.fields = append([]field(nil), h.fields...)
	var text strings.Builder
	text.WriteString(h.text)
	for _, a := range attrs {
		h.addAttr(a, h.fieldPrefix, h.keyPrefix, func(f field, key string) {
			h2.fields = append(h2.fields, f)
			writeText(&text, key, f.value)
		})
	}
	h2.text = text.String()
	if h.fallback != nil {
		h2.fallback = h.fallback.WithAttrs(attrs)
	}
	return &h2
}

// WithGroup returns a Handler that puts later attributes in the group name: the field
// NAME_KEY, the key name.key in MESSAGE.
func (h *Handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.fieldPrefix = h.fieldPrefix + name + "_"
	h2.keyPrefix = h.keyPrefix + name + "."
	if h.fallback != nil {
		h2.fallback = h.fallback.WithGroup(name)
	}
	return &h2
}

// addAttr hands emit the fields of a (several for a group) with their MESSAGE keys.
func (h *Handler) addAttr(a slog.Attr, fieldPrefix, keyPrefix string, emit func(f field, key string)) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return // an empty attribute is ignored, as slog's handlers do
	}
	if a.Value.Kind() == slog.KindGroup {
		attrs := a.Value.Group()
		if len(attrs) == 0 {
			return
		}
		if a.Key != "" {
			fieldPrefix, keyPrefix = fieldPrefix+a.Key+"_", keyPrefix+a.Key+"."
		}
		for _, ga := range attrs {
			h.addAttr(ga, fieldPrefix, keyPrefix, emit)
		}
		return
	}
	name := FieldName(fieldPrefix + a.Key)
	value := valueString(a.Value)
	if name == "" {
		name = "CVPN_ATTR" // a key of nothing but symbols
	}
	emit(field{name: name, value: value}, keyPrefix+a.Key)
}

// valueString is v as the text of a field.
func valueString(v slog.Value) string {
	var s string
	switch v.Kind() {
	case slog.KindTime:
		s = v.Time().Format(time.RFC3339Nano)
	default:
		s = v.String() // errors as Error(), Stringers as String(), others as fmt.Sprint
	}
	if len(s) > MaxValue {
		cut := MaxValue - 3
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}

// writeText appends " key=value" to MESSAGE, quoting the value as slog's text handler does when
// it holds spaces, quotes, '=' or what is not printable (a newline would split the line).
func writeText(b *strings.Builder, key, value string) {
	b.WriteByte(' ')
	b.WriteString(key)
	b.WriteByte('=')
	if needsQuoting(value) {
		b.WriteString(strconv.Quote(value))
	} else {
		b.WriteString(value)
	}
}

func needsQuoting(s string) bool {
	if s == "" {
		return true
	}
	for _, r := range s {
		if r == ' ' || r == '"' || r == '=' || r == utf8.RuneError || !unicode.IsPrint(r) {
			return true
		}
	}
	return false
}

// reserved are the fields this handler sets, or that mean something to journald or journalctl
// (systemd.journal-fields(7)); an attribute of that name gets the prefix CVPN_ instead of
// overriding them ("message" becomes CVPN_MESSAGE).
var reserved = map[string]bool{
	"MESSAGE": true, "MESSAGE_ID": true, "PRIORITY": true, "CODE_FILE": true, "CODE_LINE": true,
	"CODE_FUNC": true, "ERRNO": true, "INVOCATION_ID": true, "USER_INVOCATION_ID": true,
	"SYSLOG_FACILITY": true, "SYSLOG_IDENTIFIER": true, "SYSLOG_PID": true, "SYSLOG_TIMESTAMP": true,
	"SYSLOG_RAW": true, "DOCUMENTATION": true, "TID": true, "UNIT": true, "USER_UNIT": true,
}

// maxName is the longest field name journald accepts.
const maxName = 64

// FieldName maps an attribute key to a journal field name as journald accepts them: upper-case
// letters, digits and underscores, not starting with an underscore (those are set by journald
// itself and cannot be faked) or a digit, at most 64 bytes. Other characters become '_'; a key
// that would name one of journald's own fields gets the prefix CVPN_. It returns "" for a key
// with no letter or digit.
func FieldName(key string) string {
	b := make([]byte, 0, len(key))
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case 'a' <= c && c <= 'z':
			b = append(b, c-'a'+'A')
		case 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
			b = append(b, c)
		default:
			b = append(b, '_')
		}
	}
	name := strings.TrimLeft(string(b), "_")
	if strings.Trim(name, "_") == "" {
		return ""
	}
	if reserved[name] || name[0] <= '9' || strings.HasPrefix(name, "OBJECT_") || strings.HasPrefix(name, "COREDUMP_") {
		name = "CVPN_" + name
	}
	if len(name) > maxName {
		name = name[:maxName]
	}
	return name
}

// Priority maps a slog level to the journal's (syslog's) priority: debug, info, warning, error,
// and anything between two of slog's levels to the lower one's.
func Priority(l slog.Level) journal.Priority {
	switch {
	case l < slog.LevelInfo:
		return journal.PriDebug
	case l < slog.LevelWarn:
		return journal.PriInfo
	case l < slog.LevelError:
		return journal.PriWarning
	}
	return journal.PriErr
}
