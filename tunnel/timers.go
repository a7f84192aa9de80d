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
		if idle > s.cfg.PingRestart {
			s.disconnect(c, "ping-restart: no packet from the client for "+idle.Round(time.Second).String())
			continue
		}
		if now.Sub(time.Unix(0, c.lastSend.Load())) >= s.cfg.Ping {
			s.sendPing(c)
		}
	}
	s.cfg.NAT.Expire()
}
