package tunnel

import (
	"time"
)

// timerTick is how often keepalives, reaping and NAT expiry run.
const timerTick = time.Second

// clockNano is the injected clock in unix nanoseconds, for timestamps on the packet path.
func (s *Server) clockNano() int64 { return s.cfg.Now().UnixNano() }

// timerLoop sends keepalive pings, reaps silent clients and stale handshakes, and expires NAT
// mappings, once per tick.
func (s *Server) timerLoop() {
	t := time.NewTicker(timerTick)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.tick(s.cfg.Now())
		}
	}
}

// tick does one round of timer work at now.
func (s *Server) tick(now time.Time) {
	for _, c := range s.clients() {
		idle := now.Sub(time.Unix(0, c.lastRecv.Load()))
		if !c.authenticated.Load() {
			if now.Sub(c.since) > s.cfg.HandWindow {
				s.disconnect(c, "handshake did not finish within the hand window")
			}
			continue
		}
		if s.cfg.SessionTimeout > 0 && now.Sub(c.since) > s.cfg.SessionTimeout && !c.timedOut.Swap(true) {
			if conn := c.tlsConn.Load(); conn != nil {
				_, _ = conn.Write([]byte("RESTART\x00"))
			}
			go func() {
				time.Sleep(time.Second) // let the RESTART reach the client
				s.disconnect(c, "session timeout")
			}()
			continue
		}
		if idle > s.cfg.PingRestart {
			s.disconnect(c, "ping-restart: no packet from the client for "+idle.Round(time.Second).String())
			continue
		}
		if now.Sub(time.Unix(0, c.lastSend.Load())) >= s.cfg.Ping {
			s.sendPing(c)
		}
		s.rekey(c, now)
	}
	s.cfg.NAT.Expire()
}

// rekey starts a server-initiated renegotiation when the session's key is due, and moves sending
// to a renegotiated key that the client has had for a while even if it sent nothing with it.
func (s *Server) rekey(c *client, now time.Time) {
	if s.cfg.Reneg > 0 {
		if at := c.renegAt.Load(); at != 0 && now.UnixNano() >= at && c.ctl.Idle(c.ctl.Current()) {
			c.renegAt.Store(0) // set again when the new key is installed
			k := c.ctl.StartRenegotiation()
			go s.runKey(c, k)
		}
	}
	send := c.sendKey.Load()
	for i := range c.keys {
		k := c.keys[i].Load()
		if k != nil && k.newerThan(send) && now.Sub(k.created) > lameDuckSwitch {
			c.sendKey.Store(k)
			send = k
		}
	}
}

// lameDuckSwitch is how long the server keeps sending with the old key after a renegotiation
// when the client has not yet used the new one.
const lameDuckSwitch = 5 * time.Second
