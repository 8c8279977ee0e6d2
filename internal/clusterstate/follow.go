// Package clusterstate keeps a gateway's copy of the cluster's shared
// state in step with etcd: the revocation state (locks and revocations,
// ca.Shared), and any other table a gateway follows (bans, the published
// CA keys). Each table is read in full, then watched from the revision of
// that read; after a reconnect or a compaction it is read in full again.
// Nothing polls.
package clusterstate

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/bastion-ssh/bastion/internal/cluster"
)

// opTimeout bounds each etcd request this package makes.
const opTimeout = 3 * time.Second

// Backoff between attempts to read a table while etcd does not answer.
const (
	retryMin = 200 * time.Millisecond
	retryMax = 2 * time.Second
)

// Table is one subtree of etcd a gateway follows.
type Table interface {
	// Reset gives every key of the table after a full read (at start,
	// after a reconnect, after a compaction).
	Reset(ctx context.Context, kvs []*mvccpb.KeyValue) error
	// Event gives one change seen by the watch.
	Event(ctx context.Context, ev *clientv3.Event) error
}

// Follow keeps t in step with the keys under prefix (a full key, e.g.
// c.Key("locks")+"/") until ctx ends. before, when set, runs before each
// full read (the revocation state publishes its outbox there), and synced
// after each successful Reset. It returns when ctx ends.
func Follow(ctx context.Context, c *cluster.Cluster, prefix string, t Table, log *slog.Logger, before func(context.Context) error, synced func()) {
	backoff := retryMin
	wait := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, retryMax)
		return true
	}
	for ctx.Err() == nil {
		if before != nil {
			if err := before(ctx); err != nil {
				log.Debug("cluster state: not ready to read", "prefix", prefix, "err", err)
				if !wait() {
					return
				}
				continue
			}
		}
		gctx, cancel := context.WithTimeout(ctx, opTimeout)
		resp, err := c.Client().Get(gctx, prefix, clientv3.WithPrefix())
		cancel()
		if err != nil {
			log.Debug("cluster state: full read failed", "prefix", prefix, "err", err)
			if !wait() {
				return
			}
			continue
		}
		if err := t.Reset(ctx, resp.Kvs); err != nil {
			log.Error("cluster state: applying a full read failed", "prefix", prefix, "err", err)
			if !wait() {
				return
			}
			continue
		}
		backoff = retryMin
		if synced != nil {
			synced()
		}
		watch(ctx, c, prefix, resp.Header.Revision+1, t, log)
		if !wait() {
			return
		}
	}
}

// watch follows prefix from rev until the watch fails (lost leader,
// compaction, closed client) or ctx ends.
func watch(ctx context.Context, c *cluster.Cluster, prefix string, rev int64, t Table, log *slog.Logger) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range c.Client().Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithPrevKV()) {
		if err := resp.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				log.Info("cluster state: watch fell behind a compaction; reading in full", "prefix", prefix)
			} else {
				log.Warn("cluster state: watch ended; reading in full once etcd answers", "prefix", prefix, "err", err)
			}
			return
		}
		for _, ev := range resp.Events {
			if err := t.Event(ctx, ev); err != nil {
				log.Error("cluster state: applying a change failed; reading in full", "prefix", prefix, "key", string(ev.Kv.Key), "err", err)
				return
			}
		}
	}
}
