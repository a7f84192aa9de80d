package config

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/cvpn/cvpn/ippool"
)

// This file is the cluster section (issue 18): the keys that make one process a node of an
// endpoint served by several, and ParseWithCluster, which runs a pushed endpoint file with the
// node's own section.

// Cluster is this node's part in an endpoint served by several cvpn nodes that coordinate
// through etcd (cluster). Every node runs the same endpoint file, pushed to etcd with `cvpn
// cluster push`, with its own cluster section spliced in (ParseWithCluster); so the section is
// what differs between nodes, and with the node's other own sections (NodeKeys: state_dir,
// admin, connection_log, metrics) the part of a node's local file a push does not replace. Every key needs a restart to change (CheckReload). AWS: the endpoint's subnet
// associations, each of which is a node here.
type Cluster struct {
	// NodeName (node_name, required) names this node among the cluster's: 1 to 63 of a-z, 0-9
	// and '-', starting and ending with a letter or digit (a DNS label, so that it can be a key
	// in etcd, a metric label and a log field as it is). No two live nodes may share one.
	NodeName string
	// PublicAddress (public_address, required) is the DNS name or IP address clients dial to
	// reach this node; exported profiles list every live node's. As remote_hostname, an
	// address must be of a family the endpoint listens on.
	PublicAddress string
	// SNATAddress (snat_address) is this node's own IPv4 address in the private network: it
	// replaces target_network.snat_address (TargetNetwork.SNATAddress is this value), and the
	// rules of that key apply to it. Required with IPv4 traffic: each node source-NATs to its
	// own address, so that return traffic reaches the node that holds the session without any
	// coordination; target_network.snat_address, which is the same on every node running the
	// pushed file, may be left out.
	SNATAddress netip.Addr
	// SNATIPv6Address (snat_ipv6_address) is this node's own IPv6 address there, replacing
	// target_network.snat_ipv6_address. Required with IPv6 traffic: routed IPv6, where clients
	// keep their own addresses, is not supported across nodes (the private network would need
	// a route to each node for each address block it leases).
	SNATIPv6Address netip.Addr
	// LeaseTTL (lease_ttl_seconds) is the time to live of the node's etcd lease: 3 to 60
	// seconds, 10 by default. A node cut off from etcd stops admitting and ends its sessions
	// within it; a dead node's address blocks go to other nodes only after it.
	LeaseTTL time.Duration
	// AddressBlockSize (address_block_size) is how many pool indexes (an IPv4 address and its
	// IPv6 twin, and the peer-id) a node leases at once: a power of two, 4 to 4096, 64 by
	// default, and no more than the pool's index space (the IPv4 block's size; an IPv6-only
	// pool's size, at most 65536).
	AddressBlockSize int
	// Etcd (etcd, required) is how the node reaches the cluster's etcd.
	Etcd ClusterEtcd
}

// ClusterEtcd is how a node reaches etcd (cluster.etcd).
type ClusterEtcd struct {
	// Endpoints (endpoints, required) are etcd's client URLs, 1 to 9 (an etcd cluster has
	// at most 7 members, and a proxy or two may stand beside them): scheme://host:port, no
	// path, all of one scheme. https is the norm; http sends the cluster's state (MFA secrets
	// sealed, but sessions, address blocks and the pushed endpoint file in clear) over the
	// network unauthenticated, and is meant for labs and tests on one host.
	Endpoints []string
	// CAFile (ca_file) is the PEM bundle of roots that sign the etcd servers' certificates;
	// "" for the system roots. Only with https endpoints. Absolute path.
	CAFile string
	// CertFile (cert_file) and KeyFile (key_file) are the node's client certificate and key
	// (PEM), for etcd's client certificate authentication; set together, or neither. Only
	// with https endpoints. Absolute paths, read when the node starts.
	CertFile string
	KeyFile  string
	// Prefix (prefix) is the root of the cluster's keys in etcd: DefaultClusterPrefix by
	// default; '/' and then names of letters, digits, '.', '_' and '-' separated by single
	// '/', no trailing '/', at most 128 bytes. Several clusters may share one etcd under
	// different prefixes, none of which is a path prefix of another.
	Prefix string
}

// Cluster defaults and limits.
const (
	DefaultClusterPrefix    = "/cvpn"
	DefaultLeaseTTL         = 10 * time.Second
	DefaultAddressBlockSize = 64
	minLeaseTTL             = 3  // seconds: a renewal every second still leaves one miss
	maxLeaseTTL             = 60 // seconds: a dead node's addresses are unused this long
	minAddressBlock         = 4
	maxAddressBlock         = 4096
	maxEtcdEndpoints        = 9
	maxPrefixLen            = 128
	maxNodeName             = 63
)

// ErrNoCluster refuses ParseWithCluster a local endpoint without a cluster section.
var ErrNoCluster = errors.New("config: the local endpoint file has no cluster section")

// clusterSource is where an Endpoint's cluster section came from: its key and value nodes in
// the parsed document, and the file name and directory they are read against. ParseWithCluster
// splices the nodes into a pushed document, so that the section is decoded exactly as in its
// own file: its relative paths against its own directory, its problems with its own lines,
// named with its own file.
type clusterSource struct {
	key, value *yaml.Node
	file, dir  string
	// own are the key and value nodes, in pairs, of the other node-local sections (NodeKeys)
	// the local file has.
	own []*yaml.Node
}

// NodeKeys are the top-level sections a cluster node keeps from its own file whatever a push
// holds: its cluster section, and where it keeps its own state, its admin socket, its
// connection log and its metrics listener (paths and addresses of its host). A section the
// node's file leaves out takes its defaults, not the pushed file's.
var NodeKeys = []string{"cluster", "state_dir", "admin", "connection_log", "metrics"}

// ParseWithCluster parses data, an endpoint file pushed to the cluster (file is the name its
// problems carry, such as "etcd revision 12"; relative paths in it resolve against dir), as
// Parse does, except that its cluster section, if it has one, is replaced by local's: the
// node runs the pushed file as itself, and whoever can write the pushed file (anyone with
// write access to the cluster's etcd prefix) cannot rename a node, point it at another etcd
// or change its SNAT addresses. local must have a cluster section (ErrNoCluster
// otherwise); it is the endpoint parsed from the node's local file, or an earlier result of
// ParseWithCluster, which carries the same section.
//
// Every rule applies to the spliced file as to any other, those between the cluster section
// and the rest included (cluster.snat_address inside vpc_cidr_blocks, say). A problem in the
// spliced section, or a rule that names one of its keys, is reported with local's file name
// and local's line; every other problem with file and the pushed file's line. A pushed file
// that changes a key a running endpoint cannot change still parses: whether it may replace
// the running one is CheckReload's question.
func ParseWithCluster(data []byte, file, dir string, local *Endpoint) (*Endpoint, error) {
	if local == nil || local.Cluster == nil || local.clusterSrc == nil {
		return nil, ErrNoCluster
	}
	return parse(data, dir, file, local.clusterSrc)
}

// splice replaces root's node-local sections (NodeKeys; all of them: a duplicate is nobody's)
// with src's. root's own slice is not written: the result is a copy.
func splice(root *yaml.Node, src *clusterSource) *yaml.Node {
	if root == nil || root.Kind != yaml.MappingNode {
		return root
	}
	out := *root
	out.Content = make([]*yaml.Node, 0, len(root.Content)+2+len(src.own))
	for i := 0; i+1 < len(root.Content); i += 2 {
		if k := root.Content[i]; k.Kind == yaml.ScalarNode && slices.Contains(NodeKeys, k.Value) {
			continue
		}
		out.Content = append(out.Content, root.Content[i], root.Content[i+1])
	}
	out.Content = append(out.Content, src.own...)
	out.Content = append(out.Content, src.key, src.value)
	return &out
}

// ownSections returns the key and value nodes of root's node-local sections other than
// cluster, in pairs.
func ownSections(root *yaml.Node) []*yaml.Node {
	var own []*yaml.Node
	if root == nil || root.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		if k := root.Content[i]; k.Kind == yaml.ScalarNode && k.Value != "cluster" && slices.Contains(NodeKeys, k.Value) {
			own = append(own, root.Content[i], root.Content[i+1])
		}
	}
	return own
}

// findCluster returns the key and value nodes of root's cluster section; nil when it has none.
func findCluster(root *yaml.Node) (key, value *yaml.Node) {
	if root == nil || root.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		if k := root.Content[i]; k.Kind == yaml.ScalarNode && k.Value == "cluster" {
			return k, root.Content[i+1]
		}
	}
	return nil, nil
}

// isClusterPath reports whether a key path is in a node-local section (NodeKeys): the cluster
// section or another the node keeps from its own file.
func isClusterPath(path string) bool {
	top, _, _ := strings.Cut(path, ".")
	top, _, _ = strings.Cut(top, "[")
	return slices.Contains(NodeKeys, top)
}

// fileOf is the file a key's problems name: the cluster section's own for its keys.
func (e *Endpoint) fileOf(path string) string {
	if e.clusterSrc != nil && isClusterPath(path) {
		return e.clusterSrc.file
	}
	return e.file
}

// clusterPlaces says where the cluster's SNAT addresses are, for the rules that replace
// target_network's with them.
type clusterPlaces struct {
	snat, snat6 placed
}

// cluster walks the cluster section. Relative paths in it resolve against its own file's
// directory (the node's local file, when ParseWithCluster spliced it in).
func (d *decoder) cluster(n *yaml.Node, path string, line int, ep *Endpoint) (at clusterPlaces) {
	m, ok := d.mapping(n, path, line, "node_name", "public_address", "snat_address", "snat_ipv6_address",
		"lease_ttl_seconds", "address_block_size", "etcd")
	if !ok {
		return at
	}
	if d.clusterSrc != nil {
		dir := d.dir
		d.dir = d.clusterSrc.dir
		defer func() { d.dir = dir }()
	}
	c := &Cluster{LeaseTTL: DefaultLeaseTTL, AddressBlockSize: DefaultAddressBlockSize, Etcd: ClusterEtcd{Prefix: DefaultClusterPrefix}}
	ep.Cluster = c
	if n, path, ok := d.required(m, "node_name", " (this node's name among the cluster's)"); ok {
		if s, ok := d.str(n, path); ok {
			if err := CheckNodeName(s); err != nil {
				d.errorf(path, n.Line, "%v", err)
			} else {
				c.NodeName = s
			}
		}
	}
	if n, path, ok := d.required(m, "public_address", " (the DNS name or address clients dial to reach this node)"); ok {
		if s, ok := d.hostname(n, path); ok {
			c.PublicAddress = s
			if a, err := netip.ParseAddr(s); err == nil {
				if t := ep.EndpointIPAddressType; a.Unmap().Is4() && !HasIPv4(t) || a.Is6() && !a.Is4In6() && !HasIPv6(t) {
					d.errorf(path, n.Line, "%s is %s, but endpoint_ip_address_type is %s: clients could not reach it", a, family(a.Unmap()), t)
				}
			}
		}
	}
	if HasIPv4(ep.TrafficIPAddressType) {
		if n, path, ok := d.required(m, "snat_address", " with IPv4 traffic: each node source-NATs client IPv4 to its own address, so that return traffic comes back to the node holding the session (it replaces target_network.snat_address, which every node of a pushed file shares)"); ok {
			if a, ok := d.addr(n, path, only4); ok {
				c.SNATAddress, at.snat = a, placed{path, n.Line}
			}
		}
	} else if n, path, ok := m.get("snat_address"); ok {
		d.errorf(path, n.Line, "IPv4 traffic is off (traffic_ip_address_type: %s): leave snat_address out", ep.TrafficIPAddressType)
	}
	if HasIPv6(ep.TrafficIPAddressType) {
		if n, path, ok := d.required(m, "snat_ipv6_address", fmt.Sprintf(" with IPv6 traffic (traffic_ip_address_type %s): each node source-NATs client IPv6 to its own address; routed IPv6, where clients keep their own addresses, is not supported across nodes", ep.TrafficIPAddressType)); ok {
			if a, ok := d.addr(n, path, only6); ok {
				c.SNATIPv6Address, at.snat6 = a, placed{path, n.Line}
			}
		}
	} else if n, path, ok := m.get("snat_ipv6_address"); ok {
		d.errorf(path, n.Line, "IPv6 traffic is off (traffic_ip_address_type: %s): leave snat_ipv6_address out", ep.TrafficIPAddressType)
	}
	if n, path, ok := m.get("lease_ttl_seconds"); ok {
		if v, ok := d.integer(n, path, minLeaseTTL, maxLeaseTTL); ok {
			c.LeaseTTL = time.Duration(v) * time.Second
		}
	}
	if n, path, ok := m.get("address_block_size"); ok {
		if v, ok := d.integer(n, path, minAddressBlock, maxAddressBlock); ok {
			switch size, block := poolSize(ep); {
			case v&(v-1) != 0:
				d.errorf(path, n.Line, "%d is not a power of two", v)
			case size > 0 && int(v) > size:
				d.errorf(path, n.Line, "%d is more than the %d addresses of %s", v, size, block)
			default:
				c.AddressBlockSize = int(v)
			}
		}
	}
	if n, path, ok := d.required(m, "etcd", " (how this node reaches the cluster's etcd: endpoints, and ca_file, cert_file and key_file for TLS)"); ok {
		d.clusterEtcd(n, path, m.keyLine("etcd"), &c.Etcd)
	}
	return at
}

// poolSize is the size of the address pool's index space, which blocks divide, and the key
// that bounds it; 0 when no client block is valid (its own problem is reported).
func poolSize(ep *Endpoint) (size int, block string) {
	if p := ep.ClientCIDRBlock; p.IsValid() {
		size, block = 1<<(32-p.Bits()), "client_cidr_block "+p.String()
	}
	if p := ep.ClientIPv6CIDRBlock; p.IsValid() {
		size6 := ippool.MaxSize6
		if host := 128 - p.Bits(); host < 16 {
			size6 = 1 << host
		}
		if size == 0 || size6 < size {
			size, block = size6, "client_ipv6_cidr_block "+p.String()
		}
	}
	return size, block
}

// CheckNodeName applies the rule of cluster.node_name to s: 1 to 63 of a-z, 0-9 and '-',
// starting and ending with a letter or digit.
func CheckNodeName(s string) error {
	if s == "" || len(s) > maxNodeName {
		return fmt.Errorf("%q: a node name is 1 to %d characters", s, maxNodeName)
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("%q: a node name is of a-z, 0-9 and '-' (%q is not)", s, c)
		}
	}
	if s[0] == '-' || s[len(s)-1] == '-' {
		return fmt.Errorf("%q: a node name starts and ends with a letter or digit", s)
	}
	return nil
}

func (d *decoder) clusterEtcd(n *yaml.Node, path string, line int, e *ClusterEtcd) {
	m, ok := d.mapping(n, path, line, "endpoints", "ca_file", "cert_file", "key_file", "prefix")
	if !ok {
		return
	}
	scheme := ""
	if n, path, ok := d.required(m, "endpoints", " (etcd's client URLs, such as https://10.0.0.1:2379)"); ok {
		e.Endpoints, scheme = d.etcdEndpoints(n, path)
	}
	tlsKey := func(key string) {
		n, kpath, ok := m.get(key)
		if !ok {
			return
		}
		if scheme == "http" {
			d.errorf(kpath, n.Line, "applies only to https endpoints; http ones are not encrypted")
			return
		}
		f, _ := d.fileRef(n, kpath)
		switch key {
		case "ca_file":
			e.CAFile = f
		case "cert_file":
			e.CertFile = f
		case "key_file":
			e.KeyFile = f
		}
	}
	tlsKey("ca_file")
	tlsKey("cert_file")
	tlsKey("key_file")
	_, _, hasCert := m.get("cert_file")
	_, _, hasKey := m.get("key_file")
	switch {
	case hasCert && !hasKey:
		d.errorf(join(path, "key_file"), m.keyLine("key_file"), "required with cert_file (the client certificate's key)")
	case hasKey && !hasCert:
		d.errorf(join(path, "cert_file"), m.keyLine("cert_file"), "required with key_file (the client certificate)")
	}
	if n, path, ok := m.get("prefix"); ok {
		if s, ok := d.str(n, path); ok {
			if err := checkEtcdPrefix(s); err != nil {
				d.errorf(path, n.Line, "%q %v", s, err)
			} else {
				e.Prefix = s
			}
		}
	}
}

// etcdEndpoints reads cluster.etcd.endpoints and returns the scheme they share ("" when
// none is valid).
func (d *decoder) etcdEndpoints(n *yaml.Node, path string) (out []string, scheme string) {
	items, ok := d.nonEmptyList(n, path)
	if !ok {
		return nil, ""
	}
	if len(items) > maxEtcdEndpoints {
		d.errorf(path, n.Line, "lists %d endpoints; at most %d", len(items), maxEtcdEndpoints)
		return nil, ""
	}
	first := map[string]string{}
	var schemeAt string
	for i, item := range items {
		ipath := index(path, i)
		s, ok := d.nonEmpty(item, ipath)
		if !ok {
			continue
		}
		u, err := checkEtcdURL(s)
		if err != nil {
			d.errorf(ipath, item.Line, "%q %v", s, err)
			continue
		}
		if prev, dup := first[u.Host]; dup {
			d.errorf(ipath, item.Line, "%s is already listed at %s", u.Host, prev)
			continue
		}
		first[u.Host] = ipath
		switch {
		case scheme == "":
			scheme, schemeAt = u.Scheme, ipath
		case u.Scheme != scheme:
			d.errorf(ipath, item.Line, "is %s, but %s is %s: the endpoints share one scheme (one TLS setting)", u.Scheme, schemeAt, scheme)
			continue
		}
		out = append(out, s)
	}
	return out, scheme
}

// checkEtcdURL checks an etcd client URL: http or https, a host and an explicit port, nothing
// else. The error completes a sentence that starts with the URL.
func checkEtcdURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return nil, errors.New("is not a URL like https://10.0.0.1:2379")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("is not an http:// or https:// URL (like https://10.0.0.1:2379)")
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || (u.Path != "" && u.Path != "/"):
		return nil, errors.New("has more than scheme://host:port (etcd's client URLs have no user, path or query)")
	case u.Hostname() == "":
		return nil, errors.New("has no host")
	case u.Port() == "":
		return nil, errors.New("has no port (etcd's client port is usually 2379)")
	}
	if p, err := strconv.Atoi(u.Port()); err != nil || p < 1 || p > 65535 {
		return nil, fmt.Errorf("has port %s, not 1..65535", u.Port())
	}
	host := u.Hostname()
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
			return nil, fmt.Errorf("names %s, which cannot be dialled", host)
		}
	} else if err := checkHostname(host); err != nil {
		return nil, fmt.Errorf("has a host that is not an IP address or DNS name: %v", err)
	}
	return u, nil
}

// checkEtcdPrefix checks cluster.etcd.prefix. The error completes a sentence that starts with
// the prefix.
func checkEtcdPrefix(s string) error {
	switch {
	case !strings.HasPrefix(s, "/"):
		return errors.New("does not start with '/' (like /cvpn)")
	case len(s) > maxPrefixLen:
		return fmt.Errorf("is longer than %d bytes", maxPrefixLen)
	case s == "/":
		return errors.New("is the root of etcd's keys; name a directory of its own (like /cvpn)")
	case strings.HasSuffix(s, "/"):
		return fmt.Errorf("ends with '/' (did you mean %q?)", strings.TrimRight(s, "/"))
	case strings.Contains(s, "//"):
		return errors.New("has an empty name between two '/'")
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/') {
			return fmt.Errorf("holds %q; a prefix is of letters, digits, '.', '_', '-' and '/'", c)
		}
	}
	for name := range strings.SplitSeq(s[1:], "/") {
		if name == "." || name == ".." {
			return fmt.Errorf("has the name %q, which path.Join would fold", name)
		}
	}
	return nil
}
