package session

// controlFailed is the control channel's Fail: the client stopped acknowledging control
// messages for the hand window (channel.ErrStalled), or left so much unacknowledged that the
// send backlog passed its bound (channel.ErrBacklogFull), as a TLS 1.3 KeyUpdate storm with
// withheld acks does. Nothing can be told to such a client, so the session is torn down without
// a goodbye; the reason names the failure. The channel calls this without its lock held, but
// possibly on a listener's receive goroutine or inside a TLS write, so the teardown (which
// closes the channel and the link and calls the hooks) runs on its own goroutine.
func (s *Session) controlFailed(err error) {
	if s.state.Load() == stateClosed {
		return
	}
	go s.teardown(err.Error())
}
