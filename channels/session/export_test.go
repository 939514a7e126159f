package session

import "github.com/dingmq/ding/engine"

// CachedMessage returns the message whose DELIVER tail enc caches.
func (enc *Encoder) CachedMessage() *engine.Message {
	if t := enc.last.Load(); t != nil {
		return t.msg
	}
	return nil
}

// SeenMessage returns the last message enc encoded in place.
func (enc *Encoder) SeenMessage() *engine.Message { return enc.seen.Load() }
