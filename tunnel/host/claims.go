package host

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// claims is the claim file (Config.ClaimFile): one line for each piece of proxy neighbour state
// this cvpn added, "proxy neighbour ADDR dev IFACE" for one entry and "proxy neighbours BLOCK dev
// IFACE" for the entries of a client block. A cvpn started after one that was killed reads the
// lines the killed one left and takes over what they name; an entry no line names is the
// operator's. A file of one line is what cvpn wrote before IPv6, so it reads the same.
type claims struct {
	file string
	log  *slog.Logger
	prev []string // the lines the file had when Setup began: a previous cvpn's

	mu  sync.Mutex // guards cur and the file
	cur []string
}

// readClaims reads the claim file; a missing or unreadable one claims nothing.
func readClaims(file string, log *slog.Logger) *claims {
	c := &claims{file: file, log: log}
	if file == "" {
		return c
	}
	if data, err := os.ReadFile(file); err == nil {
		c.prev = strings.FieldsFunc(string(data), func(r rune) bool { return r == '\n' })
	}
	return c
}

// previous reports whether the cvpn before this one claimed line.
func (c *claims) previous(line string) bool { return slices.Contains(c.prev, line) }

// add records line in the file.
func (c *claims) add(line string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur = append(c.cur, line)
	c.write()
}

// remove drops line from the file, and the file once it claims nothing.
func (c *claims) remove(line string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.Index(c.cur, line)
	if i < 0 {
		return // never added: the file, perhaps a previous cvpn's, stays as it is
	}
	c.cur = slices.Delete(c.cur, i, i+1)
	c.write()
}

// write puts cur into the file; c.mu is held. A claim that cannot be recorded only costs the
// cleanup after a kill, so it is logged, not fatal.
func (c *claims) write() {
	if c.file == "" {
		return
	}
	if len(c.cur) == 0 {
		_ = os.Remove(c.file)
		return
	}
	err := os.MkdirAll(filepath.Dir(c.file), 0o750)
	if err == nil {
		err = os.WriteFile(c.file, []byte(strings.Join(c.cur, "\n")+"\n"), 0o600)
	}
	if err != nil {
		c.log.Warn("host: cannot record the proxy neighbour entries; if cvpn is killed, remove them by hand", "file", c.file, "claims", c.cur, "err", err)
	}
}
