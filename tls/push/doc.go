// Package push owns the PUSH_REPLY option set and its message framing
// (docs/protocol.md §10.1): a server describes what it pushes as a Config and
// gets back the control messages, split at the 1024-byte limit with
// push-continuation markers; a client parses the messages of one reply into a
// Reply.
//
// It does not own the policy that decides what is pushed (addresses, routes,
// ciphers, flags: the server's sessions do), sending the messages on the
// control channel, or acting on a reply (the client does).
package push
