package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// PushedConfig is the endpoint file `cvpn cluster push` stored: every node runs it with its own
// cluster section spliced in (config.ParseWithCluster).
type PushedConfig struct {
	// Data is the file as pushed.
	Data []byte `json:"data"`
	// File is the path it was pushed from, and Dir the directory its relative paths are
	// resolved against on every node (the files it names must exist there on each node).
	File string `json:"file"`
	Dir  string `json:"dir"`
	// By and Time say who pushed it and when.
	By   string `json:"by,omitempty"`
	Time string `json:"time"`
}

// MaxConfigLen bounds a pushed file (etcd's requests are limited to 1.5 MiB by default).
const MaxConfigLen = 1 << 20

// Push stores pc as the cluster's endpoint file and returns its revision. It does not wait
// for the nodes: WaitApplied does.
func Push(ctx context.Context, cli *clientv3.Client, prefix string, pc PushedConfig) (int64, error) {
	if len(pc.Data) > MaxConfigLen {
		return 0, fmt.Errorf("cluster: the endpoint file is %d bytes, more than the limit of %d", len(pc.Data), MaxConfigLen)
	}
	if prefix == "" {
		prefix = DefaultPrefix
	}
	b, err := json.Marshal(pc)
	if err != nil {
		return 0, err
	}
	resp, err := cli.Put(ctx, keys{prefix}.config(), string(b))
	if err != nil {
		return 0, fmt.Errorf("cluster: store the endpoint file: %w", err)
	}
	return resp.Header.Revision, nil
}

// NodeOutcome is what one live node did with a pushed revision.
type NodeOutcome struct {
	Node string
	// Applied: the node runs the revision; else Err says why it refused it (or that it has
	// not answered).
	Applied bool
	Err     string
}

// WaitApplied waits until every live node applied or refused revision rev, or ctx ends, and
// returns each live node's outcome sorted by name; a node that has not answered when ctx ends
// is reported as such.
func WaitApplied(ctx context.Context, cli *clientv3.Client, prefix string, rev int64) ([]NodeOutcome, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	k := keys{prefix}
	for {
		resp, err := cli.Get(ctx, k.alives(), clientv3.WithPrefix())
		if err != nil {
			return nil, fmt.Errorf("cluster: list live nodes: %w", err)
		}
		var out []NodeOutcome
		waiting := 0
		for _, kv := range resp.Kvs {
			var a Alive
			name := string(kv.Key[len(k.alives()):])
			if json.Unmarshal(kv.Value, &a) != nil {
				continue
			}
			o := NodeOutcome{Node: name}
			switch {
			case a.ConfigRevision >= rev:
				o.Applied = true
			case a.ConfigRefused >= rev:
				o.Err = a.ConfigError
			default:
				o.Err = "has not answered yet"
				waiting++
			}
			out = append(out, o)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
		if waiting == 0 {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return out, nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Config returns the pushed endpoint file and its revision; ok is false when nothing was
// pushed yet.
func (n *Node) Config(ctx context.Context) (pc PushedConfig, rev int64, ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := n.cli.Get(ctx, n.keys.config())
	if err != nil {
		return pc, 0, false, fmt.Errorf("cluster: read the pushed endpoint file: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return pc, resp.Header.Revision, false, nil
	}
	kv := resp.Kvs[0]
	if err := json.Unmarshal(kv.Value, &pc); err != nil {
		return pc, kv.ModRevision, false, fmt.Errorf("cluster: the pushed endpoint file (revision %d) is not readable: %w", kv.ModRevision, err)
	}
	return pc, kv.ModRevision, true, nil
}

// ConfigApplied records that the node runs revision rev (0: its own file).
func (n *Node) ConfigApplied(rev int64) {
	n.updateAlive(func(a *Alive) { a.ConfigRevision, a.ConfigError, a.ConfigRefused = rev, "", 0 })
}

// ConfigRefused records that the node refused revision rev, and why.
func (n *Node) ConfigRefused(rev int64, why error) {
	n.updateAlive(func(a *Alive) { a.ConfigRefused, a.ConfigError = rev, why.Error() })
}

// WatchConfig calls apply with each endpoint file pushed after revision after, in order, until
// ctx ends; apply's result is published (ConfigApplied or ConfigRefused). A watch broken by
// etcd (unreachable, compacted) is started again from the newest file.
func (n *Node) WatchConfig(ctx context.Context, after int64, apply func(PushedConfig, int64) error) {
	handle := func(value []byte, rev int64) {
		var pc PushedConfig
		err := json.Unmarshal(value, &pc)
		if err == nil {
			err = apply(pc, rev)
		} else {
			err = fmt.Errorf("the pushed endpoint file is not readable: %w", err)
		}
		if err != nil {
			n.ConfigRefused(rev, err)
			return
		}
		after = rev
		n.ConfigApplied(rev)
	}
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		ch := n.cli.Watch(wctx, n.keys.config(), clientv3.WithRev(after+1))
		for resp := range ch {
			if err := resp.Err(); err != nil {
				n.log.Warn("watching the pushed endpoint file", "err", err)
				break
			}
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypePut && ev.Kv.ModRevision > after {
					handle(ev.Kv.Value, ev.Kv.ModRevision)
				}
			}
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		// Catch up with the newest file (a compacted watch cannot replay), then watch again.
		if pc, rev, ok, err := n.Config(ctx); err == nil && ok && rev > after {
			b, _ := json.Marshal(pc)
			handle(b, rev)
		} else if err == nil && rev > after && !ok {
			after = rev
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
