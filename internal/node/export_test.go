package node

import (
	"context"
	"time"

	"github.com/dingmq/ding/engine/store"
)

// WrapPartitionStore makes cfg's partition i run on wrap(i, its store),
// to inject store failures.
func WrapPartitionStore(cfg *Config, wrap func(i int, st store.Store) store.Store) {
	cfg.wrapPartition = wrap
}

// DetachPartition stops serving partition p (cluster mode's loss of its
// lease), closing its users' connections with why.
func DetachPartition(n *Node, p int, why error) error {
	return n.detachPartition(context.Background(), uint32(p), why)
}

// AttachPartition serves partition p again from its store.
func AttachPartition(n *Node, p int) error { return n.attachPartition(uint32(p), nil) }

// SetNotServed makes the node answer a user of a partition it does not
// serve with f's error (cluster mode names the owner).
func SetNotServed(n *Node, f func(user string, p uint32) error) {
	if f == nil {
		n.parts.notServed.Store(nil)
		return
	}
	n.parts.notServed.Store(&f)
}

// WithPeers makes cfg's node serve only the partitions attach lists and
// relay to the others through the node owner names (stage 5a).
func WithPeers(cfg *Config, attach []int, owner func(ctx context.Context, p uint32) (string, error), secret string) {
	cfg.peers = &partitionPeers{Attach: attach, Owner: owner, Secret: secret}
}

// SetBeforeAttach makes the node call f before it attaches a partition's
// runtime (a test holds an attach back with it).
func SetBeforeAttach(cfg *Config, f func(p uint32)) { cfg.beforeAttach = f }

// SetRelayBackoff sets the relay pump's backoff between a failed step
// and the next (relay.Config's MinBackoff and MaxBackoff).
func SetRelayBackoff(cfg *Config, min, max time.Duration) {
	cfg.relayBackoff = [2]time.Duration{min, max}
}

// SetRelayTimeout bounds a cluster node's relay requests to other nodes
// by d (0: relay.HTTPDest's default).
func SetRelayTimeout(cfg *Config, d time.Duration) { cfg.relayTimeout = d }

// SetBeforeDirApply makes a cluster node call f before its copy of the
// directory applies the owner's changes (a test holds the copy back).
func SetBeforeDirApply(cfg *Config, f func()) { cfg.beforeDirApply = f }

// SetDirKeepRecent makes the directory's owner keep only n bytes of its
// latest history for the other nodes' copies (16 MiB otherwise): a copy
// held back that long must take the owner's snapshot.
func SetDirKeepRecent(cfg *Config, n int) { cfg.dirKeepRecent = n }
