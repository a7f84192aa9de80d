package connlog

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cvpn/cvpn/tunnel/session"
)

// Defaults of Options.
const (
	DefaultCommit = 100 * time.Millisecond
	DefaultUpdate = 5 * time.Minute
	DefaultQueue  = 8192
)

// errorEvery is how often a failing file is logged at most.
const errorEvery = 10 * time.Second

// maxBatch bounds one write: the records queued when the writer wakes go out together, each one
// whole, up to this many bytes.
const maxBatch = 64 << 10

// File is where the log goes; *os.File is one. Tests pass fakes to watch writes and syncs.
type File interface {
	io.Writer
	Sync() error
	Close() error
}

// Options shape a Log. Zero values take the defaults.
type Options struct {
	// Path is the log file, opened for append (created 0640 when missing); "" logs nothing.
	Path string
	// EndpointID is the client-vpn-endpoint-id of every record.
	EndpointID string
	// Node is the cluster node name every record carries as node-name; "" on a single node,
	// whose records then have AWS's keys alone.
	Node string
	// Log receives the log's own problems (a failed write, dropped records); nil discards them.
	Log *slog.Logger
	// Now is the clock of update records; nil means time.Now.
	Now func() time.Time
	// Commit is the longest a written record waits for its fsync; 0 means DefaultCommit.
	Commit time.Duration
	// Update is how often each live connection gets a record; 0 means DefaultUpdate.
	Update time.Duration
	// Queue is how many records may wait for the writer; beyond it records are dropped and
	// counted. 0 means DefaultQueue.
	Queue int
	// Open opens the file at path for append; nil means the real file.
	Open func(path string) (File, error)

	// after arms the commit timer; nil means time.After. Tests fire it themselves.
	after func(time.Duration) <-chan time.Time
}

// Log is the connection log: it implements session.Events, queueing each record for one writer
// goroutine that writes the queued records whole, in one write, and fsyncs within Commit of the
// first unsynced write (group commit). An event never blocks: with the queue full, the record is
// dropped and counted, and the writer logs the count once a second. A kill -9 loses only the
// queued records (the writer writes as soon as it wakes), a crash of the host at most the last
// Commit.
type Log struct {
	opts    Options
	log     *slog.Logger
	q       chan Record
	ctl     chan func()
	done    chan struct{}
	on      atomic.Bool // a file is open: events are recorded
	dropped atomic.Uint64
	clients atomic.Pointer[func() []session.Status]

	closeOnce sync.Once

	// Owned by the writer goroutine.
	f        File
	path     string
	dirty    bool // written since the last fsync, which commit then brings
	commit   <-chan time.Time
	reported uint64
	// A failed write may have left part of a line: the next write starts a new one. Failures
	// are logged at most every errorEvery, with their count.
	torn       bool
	writeErrs  int
	lastErrLog time.Time
}

// Open opens the log at opts.Path (nothing when it is "") and starts its writer.
func Open(opts Options) (*Log, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Commit <= 0 {
		opts.Commit = DefaultCommit
	}
	if opts.Update <= 0 {
		opts.Update = DefaultUpdate
	}
	if opts.Queue <= 0 {
		opts.Queue = DefaultQueue
	}
	if opts.Open == nil {
		opts.Open = openFile
	}
	if opts.after == nil {
		opts.after = time.After
	}
	l := &Log{opts: opts, log: opts.Log, q: make(chan Record, opts.Queue), ctl: make(chan func()), done: make(chan struct{})}
	if opts.Path != "" {
		f, err := opts.Open(opts.Path)
		if err != nil {
			return nil, fmt.Errorf("connlog: %w", err)
		}
		l.f, l.path = f, opts.Path
		l.on.Store(true)
	}
	go l.run()
	return l, nil
}

// openFile opens path for append. A file whose last line a crash cut short gets a newline
// first, so that the next record starts a line of its own.
func openFile(path string) (File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		var last [1]byte
		if r, err := os.Open(path); err == nil {
			_, err = r.ReadAt(last[:], st.Size()-1)
			r.Close()
			if err == nil && last[0] != '\n' {
				_, _ = f.Write([]byte{'\n'})
			}
		}
	}
	return f, nil
}

// Connected records an admitted connection.
func (l *Log) Connected(s session.Status) {
	if l.on.Load() {
		at := s.Established
		if at.IsZero() {
			at = l.opts.Now()
		}
		l.enqueue(l.node(ConnectionRecord(s, l.opts.EndpointID, at, nil)))
	}
}

// Refused records a refused attempt.
func (l *Log) Refused(a session.Attempt) {
	if l.on.Load() {
		l.enqueue(l.node(AttemptRecord(a, l.opts.EndpointID)))
	}
}

// Disconnected records a connection's end with its final counters.
func (l *Log) Disconnected(s session.Status, end session.End) {
	if l.on.Load() {
		l.enqueue(l.node(ConnectionRecord(s, l.opts.EndpointID, end.Time, &end)))
	}
}

// node stamps r with the node name.
func (l *Log) node(r Record) Record {
	r.Node = l.opts.Node
	return r
}

func (l *Log) enqueue(r Record) {
	select {
	case l.q <- r:
	default:
		l.dropped.Add(1)
	}
}

// Dropped is how many records the full queue has dropped.
func (l *Log) Dropped() uint64 { return l.dropped.Load() }

// Track gives the log the live connections (tunnel.Server.Clients), for the update records.
func (l *Log) Track(clients func() []session.Status) { l.clients.Store(&clients) }

// Reopen closes the file and opens its path again (after logrotate moved it), writing what was
// queued to the old file first.
func (l *Log) Reopen() error { return l.SetPath(l.currentPath()) }

// SetPath switches the log to path ("" stops logging), as a reload does: the queued records go
// to the old file first, which is synced and closed once path is open. When path cannot open,
// the log stays as it was.
func (l *Log) SetPath(path string) error {
	var err error
	if !l.do(func() { err = l.setPath(path) }) {
		return ErrClosed
	}
	return err
}

// ErrClosed refuses work on a closed log.
var ErrClosed = errors.New("connlog: closed")

func (l *Log) currentPath() string {
	var p string
	l.do(func() { p = l.path })
	return p
}

// Close writes and syncs what is queued, closes the file and stops the writer. Events after
// Close are dropped.
func (l *Log) Close() error {
	var err error
	l.closeOnce.Do(func() {
		l.do(func() {
			err = l.closeFile()
			l.on.Store(false)
		})
		close(l.ctl)
		<-l.done
	})
	return err
}

// do runs fn on the writer goroutine, after the records queued before; false when closed.
func (l *Log) do(fn func()) (ok bool) {
	defer func() {
		if recover() != nil { // ctl closed
			ok = false
		}
	}()
	ran := make(chan struct{})
	select {
	case l.ctl <- func() { fn(); close(ran) }:
	case <-l.done:
		return false
	}
	<-ran
	return true
}

// run is the writer goroutine.
func (l *Log) run() {
	defer close(l.done)
	updates := time.NewTicker(l.opts.Update)
	defer updates.Stop()
	report := time.NewTicker(time.Second)
	defer report.Stop()
	buf := make([]byte, 0, maxBatch)
	for {
		select {
		case r := <-l.q:
			buf = l.batch(r.Append(buf[:0]))
			l.write(buf)
		case <-l.commit:
			l.sync()
		case <-updates.C:
			buf = buf[:0]
			if c := l.clients.Load(); c != nil && l.on.Load() {
				now := l.opts.Now()
				for _, s := range (*c)() {
					r := l.node(ConnectionRecord(s, l.opts.EndpointID, now, nil))
					buf = r.Append(buf)
					if len(buf) >= maxBatch {
						l.write(buf)
						buf = buf[:0]
					}
				}
			}
			l.write(buf)
		case <-report.C:
			l.reportDrops()
		case fn, ok := <-l.ctl:
			if !ok {
				return
			}
			l.drain(buf[:0])
			fn()
		}
	}
}

// batch appends the records queued now to buf, up to maxBatch bytes.
func (l *Log) batch(buf []byte) []byte {
	for len(buf) < maxBatch {
		select {
		case r := <-l.q:
			buf = r.Append(buf)
		default:
			return buf
		}
	}
	return buf
}

// drain writes every queued record.
func (l *Log) drain(buf []byte) {
	for {
		select {
		case r := <-l.q:
			buf = l.batch(r.Append(buf[:0]))
			l.write(buf)
		default:
			return
		}
	}
}

// write writes whole records in one write and makes sure an fsync follows within Commit.
func (l *Log) write(b []byte) {
	if len(b) == 0 || l.f == nil {
		return
	}
	if l.torn {
		b = append([]byte{'\n'}, b...)
	}
	_, err := l.f.Write(b)
	l.torn = err != nil
	if err != nil {
		l.writeErrs++
		if now := time.Now(); now.Sub(l.lastErrLog) >= errorEvery {
			l.log.Error("connection log: write", "file", l.path, "err", err, "failed_writes", l.writeErrs)
			l.lastErrLog, l.writeErrs = now, 0
		}
	}
	if !l.dirty {
		l.dirty = true
		l.commit = l.opts.after(l.opts.Commit)
	}
}

// sync fsyncs what was written since the last one.
func (l *Log) sync() {
	l.commit = nil
	if !l.dirty || l.f == nil {
		return
	}
	l.dirty = false
	if err := l.f.Sync(); err != nil {
		l.log.Error("connection log: fsync", "file", l.path, "err", err)
	}
}

// reportDrops logs how many records the full queue dropped since the last report.
func (l *Log) reportDrops() {
	if n := l.dropped.Load(); n != l.reported {
		l.log.Warn("connection log: queue full, records dropped", "dropped", n-l.reported, "dropped_total", n, "queue", l.opts.Queue)
		l.reported = n
	}
}

// closeFile syncs and closes the file; the writer goroutine only, queue drained.
func (l *Log) closeFile() error {
	l.reportDrops()
	if l.f == nil {
		return nil
	}
	l.sync()
	err := l.f.Close()
	l.f, l.path = nil, ""
	return err
}

// setPath opens path and then closes the file in use, so that a path that cannot open leaves
// the log as it was; "" closes the file and stops logging. The writer goroutine only, queue
// drained.
func (l *Log) setPath(path string) error {
	var f File
	if path != "" {
		var err error
		if f, err = l.opts.Open(path); err != nil {
			return fmt.Errorf("connlog: %w", err)
		}
	}
	if err := l.closeFile(); err != nil {
		l.log.Error("connection log: close", "err", err)
	}
	l.f, l.path, l.torn = f, path, false
	l.on.Store(f != nil)
	return nil
}
