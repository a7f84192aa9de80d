package profile

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/cvpn/cvpn/endpoint"
	"github.com/cvpn/cvpn/endpoint/clientstore"
	"github.com/cvpn/cvpn/pki"
	"github.com/cvpn/cvpn/portal"
)

// ForPortal makes the profiles the self-service portal hands out, from the endpoint file in
// force (current). On an endpoint that also asks for client certificates it issues each user
// a personal certificate (CN: the username, as a client name) the first time they download,
// which AWS's portal cannot do; the CA key must then lie beside client_root_ca_file (as cvpn
// init writes it).
func ForPortal(current func() *endpoint.Endpoint, now func() time.Time) portal.Profiles {
	return &portalProfiles{current: current, now: now}
}

type portalProfiles struct {
	current func() *endpoint.Endpoint
	now     func() time.Time
	mu      sync.Mutex // one issue at a time: the store's files and CRL
}

func (pp *portalProfiles) Profile(_ context.Context, id portal.Identity, proto string) (string, []byte, error) {
	ep := pp.current()
	cfg := ep.Config
	var ports []uint16
	for _, l := range cfg.Transport {
		if l.Protocol == proto {
			ports = append(ports, l.Port)
		}
	}
	if len(ports) == 0 {
		return "", nil, fmt.Errorf("the endpoint has no %s listener", proto)
	}
	if cfg.RemoteHostname == "" {
		return "", nil, errors.New("the endpoint has no remote_hostname: profiles cannot be made")
	}
	now := pp.now()
	p, err := New(ep, proto, ports, now)
	if err != nil {
		return "", nil, err
	}
	if cfg.Authentication.Certificate != nil {
		name := ClientName(id.Username)
		cert, err := pp.personal(ep, name, now)
		if err != nil {
			return "", nil, err
		}
		p.SetClient(name, cert)
	}
	host := strings.ReplaceAll(cfg.RemoteHostname, ":", "_")
	return fmt.Sprintf("%s-%s.ovpn", host, proto), p.Render(), nil
}

// personal returns the user's certificate from the client store, issuing it the first time
// (or again when the one on file would be refused: expired, or revoked).
func (pp *portalProfiles) personal(ep *endpoint.Endpoint, name string, now time.Time) (*pki.Identity, error) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	store := clientstore.Of(ep.Config, "")
	if id, err := store.Identity(name); err == nil && CheckClient(ep, id.Cert, now) == nil {
		return id, nil
	}
	ca, err := store.LoadCA()
	if err != nil {
		return nil, fmt.Errorf("issuing a personal certificate: %w", err)
	}
	issued, err := store.Issue(ca, clientstore.Request{Name: name, KeyType: clientstore.CAKeyType(ca)}, now)
	if err != nil {
		return nil, fmt.Errorf("issuing a personal certificate: %w", err)
	}
	return issued.Identity, nil
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._@+-]`)

// ClientName is a username as a client store name: its safe characters, and a short hash of
// the whole when anything was replaced or cut, so that two users never share a name.
func ClientName(user string) string {
	name := unsafeName.ReplaceAllString(user, "_")
	name = strings.TrimLeft(name, "._@+-")
	if name != user || len(name) > 48 || clientstore.CheckName(name) != nil {
		sum := sha256.Sum256([]byte(user))
		if len(name) > 48 {
			name = name[:48]
		}
		name = "u" + name + "-" + hex.EncodeToString(sum[:4])
		if len(name) > 64 {
			name = name[:64]
		}
	}
	return name
}
