package browser

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// maxTrustPEM bounds the PEM that TrustCA reads.
const maxTrustPEM = 1 << 20

// spkiHashes returns the base64 SHA-256 of the SubjectPublicKeyInfo of each
// certificate in data, the form of Chromium's
// --ignore-certificate-errors-spki-list.
func spkiHashes(data []byte) ([]string, error) {
	if len(data) > maxTrustPEM {
		return nil, fmt.Errorf("PEM of %d bytes is over %d", len(data), maxTrustPEM)
	}
	var hashes []string
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(hashes)+1, err)
		}
		sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
		hashes = append(hashes, base64.StdEncoding.EncodeToString(sum[:]))
	}
	if len(hashes) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return hashes, nil
}

// resolveRule is a host-resolver-rules entry mapping host to ip. Both are
// checked, as they become part of one comma-separated flag.
func resolveRule(host, ip string) (string, error) {
	addr, err := netip.ParseAddr(ip)
	if err != nil || addr.Zone() != "" {
		return "", fmt.Errorf("%q is not an IP address", ip)
	}
	if !validHostname(host) {
		return "", fmt.Errorf("%q is not a host name", host)
	}
	target := addr.String()
	if addr.Is6() {
		target = "[" + target + "]"
	}
	return "MAP " + strings.ToLower(host) + " " + target, nil
}

// validHostname reports whether host is a DNS name of letters, digits,
// hyphens and dots.
func validHostname(host string) bool {
	if host == "" || len(host) > 253 || strings.HasPrefix(host, ".") || strings.HasSuffix(host, ".") {
		return false
	}
	for label := range strings.SplitSeq(host, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// deadProxy is where requests to host names go: the discard port on
// loopback, where nothing listens, so they fail at once.
const deadProxy = "http://127.0.0.1:9"

// proxyBypassList is Chromium's --proxy-bypass-list: every IP address (a
// range matches only URLs whose host is an address, never a name),
// localhost, and the names that Resolve maps.
func proxyBypassList(hosts []string) string {
	rules := append([]string{"0.0.0.0/0", "::/0", "localhost"}, hosts...)
	return strings.Join(rules, ";")
}
