package node

import "github.com/dingmq/ding/engine/store"

// WrapPartitionStore makes cfg's partition i run on wrap(i, its store),
// to inject store failures.
func WrapPartitionStore(cfg *Config, wrap func(i int, st store.Store) store.Store) {
	cfg.wrapPartition = wrap
}
