package cluster

import (
	"context"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cvpn/cvpn/ippool"
)

// blocks leases the address blocks of a pool from etcd for a node: blocks/<b> holds the node's
// name under the node's lease, so a block is another node's to take only once this node's
// lease is gone (revoked at Close, or expired after it died or lost etcd).
type blocks struct {
	n    *Node
	pool *ippool.Pool
	// leasing serialises leasing, so that concurrent allocations that found the pool full
	// lease one block, not one each. It is held across etcd requests.
	leasing sync.Mutex
	// mu guards owned and is never held across a request: losing the lease must revoke the
	// blocks at once, whatever etcd does.
	mu sync.Mutex
	// owned are the blocks granted in the pool, with the lease they are held under.
	owned map[int]clientv3.LeaseID
}

// AttachPool puts pool in block mode and leases its blocks from now on: one at once under each
// new lease, more whenever the granted ones are full; all of them are revoked in the pool when
// the lease is lost, before the engine's sessions are ended (OnLost callbacks registered after
// this one).
func (n *Node) AttachPool(pool *ippool.Pool) error {
	if err := pool.UseBlocks(n.cfg.BlockSize); err != nil {
		return fmt.Errorf("cluster: address_block_size: %w", err)
	}
	b := &blocks{n: n, pool: pool, owned: make(map[int]clientv3.LeaseID)}
	pool.SetGrow(b.grow)
	n.OnLease(func(ctx context.Context, id clientv3.LeaseID) {
		b.leasing.Lock()
		defer b.leasing.Unlock()
		if err := b.leaseOne(ctx, id); err != nil {
			n.log.Warn("no address block leased at join; the first client will lease one", "err", err)
		}
	})
	n.OnLost(b.lost)
	return nil
}

// grow leases one more block when no granted block has a free address; it reports whether the
// pool has room now. It runs on a handshake's goroutine with no pool lock held.
func (b *blocks) grow() bool {
	b.leasing.Lock()
	defer b.leasing.Unlock()
	if b.pool.GrantedFree() > 0 {
		return true // another handshake leased one meanwhile
	}
	if b.n.Admit() != nil {
		return false
	}
	id := b.n.leaseID()
	if id == 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(b.n.ctx, requestTimeout)
	defer cancel()
	if err := b.leaseOne(ctx, id); err != nil {
		b.n.log.Warn("cannot lease another address block", "err", err)
		return false
	}
	return true
}

// leaseOne leases a free block under lease id and grants it in the pool; b.mu is held. It
// starts looking at a place of its own (a hash of the node's name), so that nodes joining at
// once rarely race for the same block; a race lost is only a retry, as the put is conditional.
// b.leasing is held.
func (b *blocks) leaseOne(ctx context.Context, id clientv3.LeaseID) error {
	resp, err := b.n.cli.Get(ctx, b.n.keys.blocks(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return fmt.Errorf("cluster: list address blocks: %w", err)
	}
	taken := make(map[int]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if i, err := strconv.Atoi(strings.TrimPrefix(string(kv.Key), b.n.keys.blocks())); err == nil {
			taken[i] = true
		}
	}
	total := b.pool.NumBlocks()
	h := fnv.New32a()
	h.Write([]byte(b.n.cfg.Node))
	start := int(h.Sum32() % uint32(total))
	for k := 0; k < total; k++ {
		i := (start + k) % total
		if taken[i] || b.pool.BlockCapacity(i) == 0 {
			continue
		}
		b.mu.Lock()
		_, mine := b.owned[i]
		b.mu.Unlock()
		if mine {
			continue
		}
		key := b.n.keys.blocks() + strconv.Itoa(i)
		tr, err := b.n.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, b.n.cfg.Node, clientv3.WithLease(id))).
			Commit()
		if err != nil {
			return fmt.Errorf("cluster: lease address block %d: %w", i, err)
		}
		if !tr.Succeeded {
			continue // another node took it since the list
		}
		b.mu.Lock()
		if b.n.leaseID() != id {
			// The lease was lost while the put was on its way: the block is not ours.
			b.mu.Unlock()
			return fmt.Errorf("cluster: lease lost while leasing address block %d: %w", i, ErrUnavailable)
		}
		if err := b.pool.Grant(i); err != nil {
			b.mu.Unlock()
			// The pool refuses it (already granted here): give it back and try another.
			_, _ = b.n.cli.Delete(ctx, key)
			b.n.log.Warn("address block still in use here; trying another", "block", i, "err", err)
			continue
		}
		b.owned[i] = id
		n := len(b.owned)
		b.mu.Unlock()
		b.n.log.Info("leased an address block", "block", i, "blocks", n)
		go b.n.updateAlive(func(a *Alive) { a.Blocks = n })
		return nil
	}
	return fmt.Errorf("cluster: every address block is leased by a live node: %w", ippool.ErrExhausted)
}

// lost revokes every block in the pool: the lease they were held under may have expired.
func (b *blocks) lost() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range b.owned {
		b.pool.Revoke(i)
		delete(b.owned, i)
	}
}
