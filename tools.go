//go:build tools

// Package tools pins modules the product will import, so go.mod keeps them while the tree grows.
package tools

import (
	_ "github.com/google/gopacket"
	_ "github.com/vishvananda/netlink"
	_ "go.yaml.in/yaml/v3"
	_ "golang.org/x/crypto/chacha20poly1305"
	_ "golang.org/x/net/ipv4"
	_ "golang.org/x/sys/unix"
	_ "golang.zx2c4.com/wireguard/tun"
)
