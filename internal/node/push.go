package node

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/dingmq/ding/channels/push"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
)

// errPushNotReady is what the Pusher hears before the engine is open (a
// DING's push step that fires at start-up): a temporary failure, retried.
var errPushNotReady = errors.New("node: push: the engine is not open yet")

// pushDeps are the Pusher's neighbours, which are opened after it (the
// engine needs its notifiers at Open): set once they are, read without a
// lock.
type pushDeps struct {
	eng atomic.Pointer[engine.Engine]
	// set, with several partitions, finds a user's engine instead.
	set atomic.Pointer[partitionSet]
	hub atomic.Pointer[fanout.Hub]
	dir *fanout.Directory
}

// engineOf is user's engine: the node's, or that of user's partition.
func (d *pushDeps) engineOf(user string) (*engine.Engine, error) {
	if s := d.set.Load(); s != nil {
		return s.engineOf(user)
	}
	if e := d.eng.Load(); e != nil {
		return e, nil
	}
	return nil, errPushNotReady
}

var (
	_ push.Tokens   = (*pushDeps)(nil)
	_ push.Presence = (*pushDeps)(nil)
	_ push.Streams  = pushStreams{}
)

func (d *pushDeps) PushTokens(user string) ([]engine.PushToken, error) {
	e, err := d.engineOf(user)
	if err != nil {
		return nil, err
	}
	return e.PushTokens(user)
}

func (d *pushDeps) RemovePushToken(ctx context.Context, user, device, token string) (bool, error) {
	e, err := d.engineOf(user)
	if err != nil {
		return false, err
	}
	return e.RemovePushToken(ctx, user, device, token)
}

// PushTokenCount feeds ding_push_registered_tokens (the partitions
// served here, with several).
func (d *pushDeps) PushTokenCount() int64 {
	if s := d.set.Load(); s != nil {
		var n int64
		for _, e := range s.engines() {
			n += e.PushTokenCount()
		}
		return n
	}
	if e := d.eng.Load(); e != nil {
		return e.PushTokenCount()
	}
	return 0
}

func (d *pushDeps) Devices(user string) []string {
	if h := d.hub.Load(); h != nil {
		return h.Devices(user)
	}
	return nil
}

func (d *pushDeps) Head(user string) (uint64, error) {
	e, err := d.engineOf(user)
	if err != nil {
		return 0, err
	}
	return e.Head(user)
}

func (d *pushDeps) streamDevices(user string) ([]engine.DeviceCursor, error) {
	e, err := d.engineOf(user)
	if err != nil {
		return nil, err
	}
	return e.Devices(user)
}

// name is a user's display name in the directory ("" for none).
func (d *pushDeps) name(user string) string {
	if d.dir == nil {
		return ""
	}
	c, err := d.dir.Contact(user)
	if err != nil {
		return ""
	}
	return c.Name
}

// pushStreams adapts pushDeps to push.Streams (whose Devices is the
// engine's, not the hub's).
type pushStreams struct{ d *pushDeps }

func (s pushStreams) Head(user string) (uint64, error) { return s.d.Head(user) }
func (s pushStreams) Devices(user string) ([]engine.DeviceCursor, error) {
	return s.d.streamDevices(user)
}
