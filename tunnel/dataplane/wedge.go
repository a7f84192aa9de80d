//go:build !testhooks

package dataplane

// wedgePoint is where a build with the testhooks tag can wedge the receive loops (wedge_testhooks.go);
// in other builds it is nothing at all.
func (p *Plane) wedgePoint() {}
