package endpoint

// Lifecycle hears where a running endpoint is, for a service manager: systemd's readiness
// protocol (sd_notify) is one, in cmd/cvpn. Its methods are called on the goroutine that made
// the change and must not block for long.
type Lifecycle interface {
	// Started: Start succeeded: the listeners are bound, the TUN device is up, the host is set
	// up and the admin socket listens. r serves once Run is called.
	Started(r *Running)
	// Reloading: Reload begins; Reloaded: it has ended, applied or refused (as logged).
	Reloading()
	Reloaded()
	// Stopping: Stop begins; clients are told to reconnect (RESTART) next.
	Stopping()
}
