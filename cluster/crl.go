package cluster

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The cluster's client CRL: one PEM value under crl, what `cvpn client revoke` (or a node
// whose own CRL file got a newer list) last stored. This package only carries the bytes: it
// does not parse them. Every node checks a CRL it reads here against its own client root CAs
// before it writes it to its CRL file (endpoint/clustercrl.go), so whoever can write to etcd
// can at worst replay an older list or one that does not verify, which the nodes refuse; they
// cannot forge a revocation or lift one.

// MaxCRLLen bounds the CRL stored in etcd. A revoked certificate costs about 40 bytes of DER
// (serial, date, sequence), so 1 MiB of PEM holds some 20,000 revocations, more than a client
// VPN's CRL carries in its lifetime; it stays under etcd's default request limit (1.5 MiB),
// and it bounds what each node reads, parses and verifies on every change.
const MaxCRLLen = 1 << 20

// errCRLTooLarge is the error of a CRL over MaxCRLLen.
func errCRLTooLarge(n int) error {
	return fmt.Errorf("cluster: the CRL is %d bytes, more than the limit of %d", n, MaxCRLLen)
}

// PutCRL stores pem as the cluster's CRL and returns its revision. It replaces whatever is
// stored: callers that must not overwrite a newer list use PutCRLIf.
func PutCRL(ctx context.Context, cli *clientv3.Client, prefix string, pem []byte) (rev int64, err error) {
	if len(pem) > MaxCRLLen {
		return 0, errCRLTooLarge(len(pem))
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := cli.Put(ctx, keys{orDefault(prefix)}.crl(), string(pem))
	if err != nil {
		return 0, fmt.Errorf("cluster: store the CRL: %w", err)
	}
	return resp.Header.Revision, nil
}

// PutCRLIf stores pem as the cluster's CRL only when the stored one is still the one at
// revision prev (0: none is stored), so that a node which decided its list is newer than the
// stored one cannot overwrite one stored meanwhile. ok is false (and rev 0) when another was.
func PutCRLIf(ctx context.Context, cli *clientv3.Client, prefix string, pem []byte, prev int64) (rev int64, ok bool, err error) {
	if len(pem) > MaxCRLLen {
		return 0, false, errCRLTooLarge(len(pem))
	}
	key := keys{orDefault(prefix)}.crl()
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	tr, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", prev)).
		Then(clientv3.OpPut(key, string(pem))).
		Commit()
	if err != nil {
		return 0, false, fmt.Errorf("cluster: store the CRL: %w", err)
	}
	if !tr.Succeeded {
		return 0, false, nil
	}
	return tr.Header.Revision, true, nil
}

// CRL returns the cluster's CRL and its revision; ok is false when none is stored. A stored
// value over MaxCRLLen (written by something other than PutCRL) is an error.
func CRL(ctx context.Context, cli *clientv3.Client, prefix string) (pem []byte, rev int64, ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := cli.Get(ctx, keys{orDefault(prefix)}.crl())
	if err != nil {
		return nil, 0, false, fmt.Errorf("cluster: read the CRL: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, false, nil
	}
	kv := resp.Kvs[0]
	if len(kv.Value) > MaxCRLLen {
		return nil, kv.ModRevision, false, fmt.Errorf("cluster: the stored CRL (revision %d): %w", kv.ModRevision, errCRLTooLarge(len(kv.Value)))
	}
	return kv.Value, kv.ModRevision, true, nil
}

// CRL returns the cluster's CRL as CRL does, through the node's client.
func (n *Node) CRL(ctx context.Context) (pem []byte, rev int64, ok bool, err error) {
	return CRL(ctx, n.cli, n.cfg.Prefix)
}

// PutCRLIf stores pem as PutCRLIf does, through the node's client.
func (n *Node) PutCRLIf(ctx context.Context, pem []byte, prev int64) (rev int64, ok bool, err error) {
	return PutCRLIf(ctx, n.cli, n.cfg.Prefix, pem, prev)
}

// WatchCRL calls f with each CRL stored after revision after, in order, until ctx ends: first
// with the one stored now (when it is newer than after), then with each new one. Values over
// MaxCRLLen are logged and skipped, deletions ignored. A watch broken by etcd (unreachable,
// compacted) is started again after catching up with the newest stored CRL, so f may miss
// intermediate versions but always ends up with the newest. f runs on WatchCRL's goroutine.
func (n *Node) WatchCRL(ctx context.Context, after int64, f func(pem []byte, rev int64)) {
	deliver := func(pem []byte, rev int64) {
		if rev <= after {
			return
		}
		after = rev
		if len(pem) > MaxCRLLen {
			n.log.Warn("ignoring the cluster's CRL", "revision", rev, "err", errCRLTooLarge(len(pem)))
			return
		}
		f(pem, rev)
	}
	for ctx.Err() == nil {
		// Catch up with the newest stored CRL (at start, and when a compacted watch cannot
		// replay), then watch from the revision read.
		watched := int64(0)
		resp, err := n.cli.Get(ctx, n.keys.crl())
		if err != nil {
			n.log.Warn("reading the cluster's CRL", "err", err)
		} else {
			if len(resp.Kvs) == 1 {
				deliver(resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
			}
			watched = resp.Header.Revision
		}
		if watched > 0 {
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			for wr := range n.cli.Watch(wctx, n.keys.crl(), clientv3.WithRev(watched+1)) {
				if err := wr.Err(); err != nil {
					n.log.Warn("watching the cluster's CRL", "err", err)
					break
				}
				for _, ev := range wr.Events {
					if ev.Type == clientv3.EventTypePut {
						deliver(ev.Kv.Value, ev.Kv.ModRevision)
					}
				}
			}
			cancel()
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// orDefault is prefix, or DefaultPrefix when it is empty.
func orDefault(prefix string) string {
	if prefix == "" {
		return DefaultPrefix
	}
	return prefix
}
