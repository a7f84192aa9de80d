package push

import "errors"

var (
	// ErrReply means a PUSH_REPLY could not be parsed or names an option value
	// that does not decode. Errors from Parse and ParseReply wrap it and name
	// the option.
	ErrReply = errors.New("push: bad PUSH_REPLY")
	// ErrOption means a Config holds a value that cannot be pushed: an
	// address that is not IPv4, or a word with a comma, a space or a control
	// character in it. Errors from Options and Messages wrap it.
	ErrOption = errors.New("push: option cannot be pushed")
)
