package packet

import "errors"

// Sentinel errors returned by ParseControl and ParseDataHeader. They are
// returned unwrapped so that parsing never allocates; callers add context when
// they log.
var (
	// ErrTruncated means the packet ended before a field the layout requires.
	ErrTruncated = errors.New("packet: packet truncated")
	// ErrNotControl means the opcode is a data opcode or an unknown opcode.
	ErrNotControl = errors.New("packet: opcode is not a control opcode")
	// ErrNotData means the opcode is a control opcode or an unknown opcode.
	ErrNotData = errors.New("packet: opcode is not a data opcode")
	// ErrTooManyAcks means the ack count byte exceeds MaxAcks.
	ErrTooManyAcks = errors.New("packet: ack count exceeds 8")
)
