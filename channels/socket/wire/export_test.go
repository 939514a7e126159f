package wire

import "github.com/dingmq/ding/engine"

// CachedMessage returns the message whose DELIVER tail is cached.
func CachedMessage() *engine.Message {
	if t := lastTail.Load(); t != nil {
		return t.msg
	}
	return nil
}
