package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingmq/ding/bench"
	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
)

// party is one user with one device connected through the Go client,
// whose stream a goroutine of its own consumes: it records the secret
// messages received, when each BURN arrived, and the delivery latency of
// every message whose body starts with its send time.
type party struct {
	user string
	c    *client.Client
	done chan struct{} // closed when the consumer ends (after Close)

	mu       sync.Mutex
	received map[int][]string     // message ids received, by kind (0 plain, else the secret level); guarded by mu
	burnAt   map[string]time.Time // when the BURN of each id arrived; guarded by mu
	// readAt is the server's time of the first read of each message this
	// party sent, from the RECEIPT events (READ) about it: the time the
	// read's batch was committed at, from which dingd arms a secret
	// message's burn (deadline = read time in ms + burn delay). Guarded by mu.
	readAt map[string]time.Time
	delivs []delivery // guarded by mu
}

// delivery is one delivered message with a send time in its body.
type delivery struct {
	sent time.Time
	lat  time.Duration
	kind int
}

// dialParties connects users[i] with device "d", n at a time, and starts
// their consumers.
func dialParties(srv *bench.Server, users []string, parallel int) ([]*party, error) {
	ps := make([]*party, len(users))
	err := forEach(len(users), parallel, func(i int) error {
		c, err := client.Dial(context.Background(), client.Config{
			Addr: srv.Sock, Token: srv.Token(users[i], "d"), Device: "d", Buffer: 256,
		})
		if err != nil {
			return fmt.Errorf("dial %s: %w", users[i], err)
		}
		p := &party{user: users[i], c: c, done: make(chan struct{}),
			received: map[int][]string{}, burnAt: map[string]time.Time{}, readAt: map[string]time.Time{}}
		go p.consume()
		ps[i] = p
		return nil
	})
	if err != nil {
		closeParties(ps)
		return nil, err
	}
	return ps, nil
}

// dialUsers connects users prefix0 .. prefix<n-1>, 32 at a time, and
// starts their consumers.
func dialUsers(srv *bench.Server, prefix string, n int) ([]*party, error) {
	users := make([]string, n)
	for i := range users {
		users[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return dialParties(srv, users, 32)
}

// closeParties disconnects every party and waits for their consumers.
func closeParties(ps []*party) {
	for _, p := range ps {
		if p != nil {
			p.c.Close()
		}
	}
	for _, p := range ps {
		if p != nil {
			<-p.done
		}
	}
}

// consume reads the stream until the client closes, acking every 64
// entries.
func (p *party) consume() {
	defer close(p.done)
	n := 0
	for e := range p.c.Entries() {
		now := time.Now()
		switch {
		case e.Message != nil:
			m := e.Message
			kind := m.Level // 0 for a plain message
			p.mu.Lock()
			p.received[kind] = append(p.received[kind], m.ID)
			if len(m.Body) >= 8 {
				sent := time.Unix(0, int64(binary.BigEndian.Uint64(m.Body)))
				p.delivs = append(p.delivs, delivery{sent, now.Sub(sent), kind})
			}
			p.mu.Unlock()
		case e.Burn != nil:
			p.mu.Lock()
			p.burnAt[e.Burn.ID] = now
			p.mu.Unlock()
		case e.Receipt != nil && e.Receipt.State == pb.State_READ_STATE:
			p.mu.Lock()
			for _, id := range e.Receipt.IDs {
				if _, ok := p.readAt[id]; !ok {
					p.readAt[id] = e.Receipt.At
				}
			}
			p.mu.Unlock()
		}
		if n++; n%64 == 0 {
			p.c.Ack(e.Seq)
		}
	}
}

// ids returns the ids of the messages of a kind received so far.
func (p *party) ids(kind int) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.received[kind]...)
}

// count returns how many messages of a kind were received so far.
func (p *party) count(kind int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.received[kind])
}

// burned returns when the BURN of id arrived, if it did.
func (p *party) burned(id string) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.burnAt[id]
	return t, ok
}

// readTime returns the server's read time of id, a message this party
// sent, if a RECEIPT told it.
func (p *party) readTime(id string) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.readAt[id]
	return t, ok
}

// deliveries returns the deliveries recorded so far.
func (p *party) deliveries() []delivery {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]delivery(nil), p.delivs...)
}

// stamp writes t into the first 8 bytes of body.
func stamp(body []byte, t time.Time) { binary.BigEndian.PutUint64(body, uint64(t.UnixNano())) }

// poll calls cond every 10 ms until it returns true or timeout passes.
func poll(timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// forEach runs fn(i) for i in [0, n) on parallel goroutines and returns
// the first error.
func forEach(n, parallel int, fn func(i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range min(parallel, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || firstErr.Load() != nil {
					return
				}
				if err := fn(i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	err, _ := firstErr.Load().(error)
	return err
}
