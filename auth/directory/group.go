package directory

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/go-ldap/ldap/v3"
)

// Group is one directory group a user belongs to. Any of its fields may be empty: CN when the
// group's DN does not start with a cn= RDN and its entry was not read, SID when the directory is
// not Active Directory or the group entries were not read (memberOf gives DNs only; nested_groups
// and group_base_dn searches read the entries).
type Group struct {
	DN  string // as the directory returned it
	CN  string // the group's common name
	SID string // AD objectSid in its string form, S-1-5-21-...
}

// Matches reports whether id names this group, the way access_group_id is matched in AWS Client
// VPN: the group's cn (case-insensitively), its distinguished name (compared after parsing, so
// spacing and the case of attribute types and values do not matter), or its SID string.
func (g Group) Matches(id string) bool {
	id = strings.TrimSpace(id)
	if id == "" {
		return false
	}
	if g.SID != "" && strings.EqualFold(id, g.SID) {
		return true
	}
	if g.CN != "" && strings.EqualFold(id, g.CN) {
		return true
	}
	if g.DN != "" && strings.Contains(id, "=") {
		want, err := ldap.ParseDN(id)
		if err != nil || len(want.RDNs) == 0 {
			return false
		}
		have, err := ldap.ParseDN(g.DN)
		if err != nil {
			return false
		}
		return have.EqualFold(want)
	}
	return false
}

// groupFromDN builds a Group from a DN alone (a memberOf value): CN is the value of the cn
// attribute of the first RDN, if it has one.
func groupFromDN(dn string) Group {
	g := Group{DN: dn}
	parsed, err := ldap.ParseDN(dn)
	if err != nil || len(parsed.RDNs) == 0 {
		return g
	}
	for _, a := range parsed.RDNs[0].Attributes {
		if strings.EqualFold(a.Type, "cn") {
			g.CN = a.Value
			break
		}
	}
	return g
}

// groupFromEntry builds a Group from a group entry that was read: cn from the entry's cn
// attribute when the DN's first RDN has none, SID from objectSid.
func groupFromEntry(e *ldap.Entry) Group {
	g := groupFromDN(e.DN)
	if g.CN == "" {
		g.CN = e.GetEqualFoldAttributeValue("cn")
	}
	if raw := e.GetEqualFoldRawAttributeValue("objectSid"); len(raw) > 0 {
		if sid, err := decodeSID(raw); err == nil {
			g.SID = sid
		}
	}
	return g
}

// errBadSID is returned by decodeSID for bytes that are not a SID.
var errBadSID = errors.New("directory: malformed objectSid")

// decodeSID turns the binary form of an AD security identifier into its string form.
// Layout (MS-DTYP 2.4.2.2, SID packet representation):
//
//	0        1                  2 .. 7                     8 ..
//	Revision SubAuthorityCount  IdentifierAuthority (6 B,  SubAuthority[count] (4 B each,
//	 (=1)     (<= 15)           big-endian)                little-endian)
//
// The string form (MS-DTYP 2.4.2.1) is S-Revision-Authority-Sub1-...; the authority is decimal
// below 2^32 and hexadecimal (0x...) above.
func decodeSID(b []byte) (string, error) {
	if len(b) < 8 {
		return "", fmt.Errorf("%w: %d bytes", errBadSID, len(b))
	}
	rev, n := b[0], int(b[1])
	if rev != 1 || n > 15 || len(b) != 8+4*n {
		return "", fmt.Errorf("%w: revision %d, %d sub-authorities in %d bytes", errBadSID, rev, n, len(b))
	}
	var auth uint64
	for _, c := range b[2:8] {
		auth = auth<<8 | uint64(c)
	}
	var s strings.Builder
	s.WriteString("S-1-")
	if auth < 1<<32 {
		s.WriteString(strconv.FormatUint(auth, 10))
	} else {
		fmt.Fprintf(&s, "0x%012X", auth)
	}
	for i := 0; i < n; i++ {
		s.WriteByte('-')
		s.WriteString(strconv.FormatUint(uint64(binary.LittleEndian.Uint32(b[8+4*i:])), 10))
	}
	return s.String(), nil
}
