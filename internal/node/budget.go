package node

import (
	"log/slog"
	"sync"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
)

// sharedBudget is the org's daily SMS and call budgets for a node with
// several partitions (engine.Config.Budget): each engine counts its own
// sends in its store, as with one partition, and this counts the org's,
// starting for each (channel, day) from what the stores hold when it is
// first asked about it. So the budget holds across partitions and across
// restarts. A send it granted whose batch then failed stays counted: the
// count may run over the sends made by those, never under.
type sharedBudget struct {
	stores func() []store.Store // the partitions' stores open now
	log    *slog.Logger

	mu   sync.Mutex
	used map[budgetKey]uint64 // guarded by mu
}

type budgetKey struct {
	ch  engine.Channel
	day string
}

var _ engine.Budget = (*sharedBudget)(nil)

// Take implements engine.Budget.
func (b *sharedBudget) Take(ch engine.Channel, day string, limit int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := budgetKey{ch, day}
	n, ok := b.used[k]
	if !ok {
		for _, st := range b.stores() {
			u, err := engine.BudgetUsed(st, ch, day)
			if err != nil {
				// Refused, not guessed: the next send asks again.
				b.log.Error("reading a partition's budget count failed; refusing the send", "channel", ch.String(), "err", err)
				return false
			}
			n += u
		}
		b.prune(day)
	}
	if n >= uint64(limit) {
		b.used[k] = n
		return false
	}
	b.used[k] = n + 1
	return true
}

// prune forgets the counts of days before the one before day (a send
// decided just before midnight may still ask for yesterday's).
func (b *sharedBudget) prune(day string) {
	t, err := time.Parse("20060102", day)
	if err != nil {
		return
	}
	keep := t.AddDate(0, 0, -1).Format("20060102")
	for k := range b.used {
		if k.day < keep {
			delete(b.used, k)
		}
	}
}
