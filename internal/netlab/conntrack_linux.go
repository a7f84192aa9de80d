package netlab

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// FlushConntrack empties the IPv4 connection-tracking table of namespace ns. NAT rules are
// applied when a flow is first tracked, so a test that adds or removes one flushes the table to
// have the flows already under way translated (or not) from their next packet on.
func FlushConntrack(ns string) error {
	target, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("netns %s: %w", ns, err)
	}
	defer target.Close()
	h, err := netlink.NewHandleAt(target)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", ns, err)
	}
	defer h.Close()
	if err := h.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		return fmt.Errorf("flush conntrack in %s: %w", ns, err)
	}
	return nil
}
