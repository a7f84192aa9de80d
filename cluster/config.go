package cluster

import (
	"context"
	"encoding/json"
	"errors"
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

// Push proposes pc to every live node and, when all of them accept it (each loads it with its
// own cluster section and checks it against what it runs, as a reload would), stores it as
// the cluster's endpoint file, which the nodes then apply. When any node refuses it, nothing
// is stored: the cluster keeps the file it runs, and a node that restarts later runs that one
// too. It returns the revision stored (0 when refused) and each live node's outcome, sorted
// by name. timeout bounds each phase.
func Push(ctx context.Context, cli *clientv3.Client, prefix string, pc PushedConfig, timeout time.Duration) (int64, []NodeOutcome, error) {
	if len(pc.Data) > MaxConfigLen {
		return 0, nil, fmt.Errorf("cluster: the endpoint file is %d bytes, more than the limit of %d", len(pc.Data), MaxConfigLen)
	}
	if prefix == "" {
		prefix = DefaultPrefix
	}
	k := keys{prefix}
	b, err := json.Marshal(pc)
	if err != nil {
		return 0, nil, err
	}
	put, err := cli.Put(ctx, k.candidate(), string(b))
	if err != nil {
		return 0, nil, fmt.Errorf("cluster: propose the endpoint file: %w", err)
	}
	cand := put.Header.Revision
	wctx, cancel := context.WithTimeout(ctx, timeout)
	checks, err := waitNodes(wctx, cli, k, func(a Alive) (bool, string) {
		switch {
		case a.CheckRevision >= cand && a.CheckError == "":
			return true, ""
		case a.CheckRevision >= cand:
			return true, a.CheckError
		}
		return false, ""
	})
	cancel()
	// withdraw deletes our candidate, not a newer push's.
	withdraw := func() {
		_, _ = cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(k.candidate()), "=", cand)).
			Then(clientv3.OpDelete(k.candidate())).
			Commit()
	}
	if err != nil {
		withdraw()
		return 0, checks, err
	}
	for _, o := range checks {
		if !o.Applied {
			withdraw()
			return 0, checks, nil
		}
	}
	// Store it only if no other push came in between (its candidate would be newer).
	tr, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(k.candidate()), "=", cand)).
		Then(clientv3.OpPut(k.config(), string(b)), clientv3.OpDelete(k.candidate())).
		Commit()
	if err != nil {
		return 0, checks, fmt.Errorf("cluster: store the endpoint file: %w", err)
	}
	if !tr.Succeeded {
		return 0, checks, errors.New("cluster: another push came in while the nodes checked this one; push again")
	}
	rev := tr.Header.Revision
	wctx, cancel = context.WithTimeout(ctx, timeout)
	defer cancel()
	applied, err := waitNodes(wctx, cli, k, func(a Alive) (bool, string) {
		switch {
		case a.ConfigRevision >= rev:
			return true, ""
		case a.ConfigRefused >= rev:
			return true, a.ConfigError
		}
		return false, ""
	})
	for i := range applied {
		applied[i].Applied = applied[i].Applied && applied[i].Err == ""
	}
	return rev, applied, err
}

// NodeOutcome is what one live node did with a pushed file.
type NodeOutcome struct {
	Node string
	// Applied: the node accepted (checked) or runs the file; else Err says why it refused it,
	// or that it has not answered.
	Applied bool
	Err     string
}

// waitNodes waits until done says every live node answered, or ctx ends, and returns each
// live node's answer sorted by name: Applied when it answered without an error.
func waitNodes(ctx context.Context, cli *clientv3.Client, k keys, done func(Alive) (bool, string)) ([]NodeOutcome, error) {
	for {
		resp, err := cli.Get(ctx, k.alives(), clientv3.WithPrefix())
		if err != nil {
			return nil, fmt.Errorf("cluster: list live nodes: %w", err)
		}
		var out []NodeOutcome
		waiting := 0
		for _, kv := range resp.Kvs {
			var a Alive
			if json.Unmarshal(kv.Value, &a) != nil {
				continue
			}
			o := NodeOutcome{Node: string(kv.Key[len(k.alives()):])}
			answered, why := done(a)
			switch {
			case !answered:
				o.Err = "has not answered"
				waiting++
			case why != "":
				o.Err = why
			default:
				o.Applied = true
			}
			out = append(out, o)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
		if waiting == 0 {
			if len(out) == 0 {
				return nil, errors.New("cluster: no live node")
			}
			return out, nil
		}
		select {
		case <-ctx.Done():
			return out, nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Config returns the pushed endpoint file and its revision; ok is false when nothing was
// pushed yet.
func (n *Node) Config(ctx context.Context) (pc PushedConfig, rev int64, ok bool, err error) {
	return PushedFile(ctx, n.cli, n.cfg.Prefix)
}

// PushedFile returns the cluster's pushed endpoint file and its revision; ok is false when
// nothing was pushed yet.
func PushedFile(ctx context.Context, cli *clientv3.Client, prefix string) (pc PushedConfig, rev int64, ok bool, err error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := cli.Get(ctx, keys{prefix}.config())
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

// WatchConfig hears pushes until ctx ends: check is asked about each proposed file (its
// answer is published for Push), apply is given each stored one in order after revision
// after (its outcome is published too). It starts by catching up with the newest stored and
// proposed files, and so does a watch broken by etcd (unreachable, compacted) before it is
// started again: a file stored or proposed meanwhile is applied or checked, one replaced
// meanwhile is not.
func (n *Node) WatchConfig(ctx context.Context, after int64, check, apply func(PushedConfig, int64) error) {
	decode := func(value []byte) (PushedConfig, error) {
		var pc PushedConfig
		if err := json.Unmarshal(value, &pc); err != nil {
			return pc, fmt.Errorf("the pushed endpoint file is not readable: %w", err)
		}
		return pc, nil
	}
	stored := func(value []byte, rev int64) {
		pc, err := decode(value)
		if err == nil {
			err = apply(pc, rev)
		}
		after = rev
		if err != nil {
			n.ConfigRefused(rev, err)
			return
		}
		n.ConfigApplied(rev)
	}
	proposed := func(value []byte, rev int64) {
		pc, err := decode(value)
		if err == nil {
			err = check(pc, rev)
		}
		why := ""
		if err != nil {
			why = err.Error()
		}
		n.updateAlive(func(a *Alive) { a.CheckRevision, a.CheckError = rev, why })
	}
	watched := after
	// catchUp applies the newest stored file and checks the proposed one, if not seen yet,
	// and moves watched to the revision it read: a watch started at a compacted revision
	// fails, and one started far back replays every push since, each candidate checked again.
	catchUp := func() {
		gctx, gcancel := context.WithTimeout(ctx, requestTimeout)
		resp, err := n.cli.Get(gctx, n.keys.config(), clientv3.WithPrefix())
		gcancel()
		if err == nil {
			for _, kv := range resp.Kvs {
				switch string(kv.Key) {
				case n.keys.config():
					if kv.ModRevision > after {
						stored(kv.Value, kv.ModRevision)
					}
				case n.keys.candidate():
					if kv.ModRevision > watched {
						proposed(kv.Value, kv.ModRevision)
					}
				}
			}
			watched = max(watched, resp.Header.Revision)
		}
	}
	catchUp()
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		// One watch for both keys: config and config-candidate share the prefix.
		ch := n.cli.Watch(wctx, n.keys.config(), clientv3.WithPrefix(), clientv3.WithRev(watched+1))
		for resp := range ch {
			if err := resp.Err(); err != nil {
				n.log.Warn("watching the pushed endpoint file", "err", err)
				break
			}
			for _, ev := range resp.Events {
				watched = max(watched, ev.Kv.ModRevision)
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				switch string(ev.Kv.Key) {
				case n.keys.config():
					if ev.Kv.ModRevision > after {
						stored(ev.Kv.Value, ev.Kv.ModRevision)
					}
				case n.keys.candidate():
					proposed(ev.Kv.Value, ev.Kv.ModRevision)
				}
			}
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		catchUp()
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// Forget removes a node that is not alive from the member list; a live node is refused.
func Forget(ctx context.Context, cli *clientv3.Client, prefix, node string) error {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	k := keys{prefix}
	tr, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k.alive(node)), "=", 0)).
		Then(clientv3.OpDelete(k.member(node))).
		Commit()
	if err != nil {
		return fmt.Errorf("cluster: forget %s: %w", node, err)
	}
	if !tr.Succeeded {
		return fmt.Errorf("%w: %s is alive; stop it first", ErrNameInUse, node)
	}
	if tr.Responses[0].GetResponseDeleteRange().Deleted == 0 {
		return fmt.Errorf("cluster: no node %s", node)
	}
	return nil
}

// Members lists every node that joined the cluster and was not forgotten, sorted by name:
// the nodes a client profile lists.
func Members(ctx context.Context, cli *clientv3.Client, prefix string) ([]Member, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	k := keys{prefix}
	resp, err := cli.Get(ctx, k.members(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("cluster: list the nodes: %w", err)
	}
	var out []Member
	for _, kv := range resp.Kvs {
		var m Member
		if json.Unmarshal(kv.Value, &m) != nil || m.Name == "" {
			continue
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
