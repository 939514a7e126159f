package client

import (
	"context"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// PushToken is this device's push registration (PROTOCOL.md §14).
type PushToken struct {
	Provider string // "apns" or "fcm"
	Token    string // APNs: the device token in hex; FCM: the registration token
	Topic    string // APNs: the app's bundle id
	Sandbox  bool   // APNs: the development environment
	// NoPreview keeps message text off this device's notifications;
	// Mute stops message notifications on it (DINGs still come).
	NoPreview, Mute bool
}

// RegisterPush registers (or replaces) this device's push token and
// returns once it is durable. Errors from the server are *Error with code
// BAD_REQUEST (its Detail says what is wrong with the token) or
// UNAVAILABLE (retry later).
func (c *Client) RegisterPush(ctx context.Context, t PushToken) error {
	_, err := c.request(ctx, func(ref uint64) []byte {
		return wire.Encode(pb.FrameType_PUSH_REGISTER, &pb.PushRegister{Ref: ref, Provider: t.Provider, Token: t.Token,
			Topic: t.Topic, Sandbox: t.Sandbox, NoPreview: t.NoPreview, Mute: t.Mute})
	})
	return err
}

// RemovePush deletes this device's push registration.
func (c *Client) RemovePush(ctx context.Context) error {
	_, err := c.request(ctx, func(ref uint64) []byte {
		return wire.Encode(pb.FrameType_PUSH_REGISTER, &pb.PushRegister{Ref: ref, Remove: true})
	})
	return err
}

// PushOpened reports that the user opened the push notification of DING
// id (the DING's ledger records push_opened). It confirms nothing.
func (c *Client) PushOpened(ctx context.Context, id string) error {
	_, err := c.request(ctx, func(ref uint64) []byte {
		return wire.Encode(pb.FrameType_PUSH_OPENED, &pb.PushOpened{Ref: ref, Id: id})
	})
	return err
}
