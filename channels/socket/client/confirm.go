package client

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// Confirmed is a recorded confirmation of a DING (or of a must-confirm
// announcement).
type Confirmed struct {
	Answer  int       // 1-based choice; 0 for none
	Choice  string    // its text; "" for 0
	Channel string    // how: "inapp", "sms" (a reply) or "voice" (a keypress in a call)
	At      time.Time // when it was recorded
}

// ConfirmCheck is Confirm that says whether the confirmation counted. It
// returns nil once this confirmation is durable; if the DING had already
// been confirmed (from another device, by an SMS reply or in a call), this
// one changed nothing, its answer was ignored, and it returns the earlier
// confirmation, which stands. Errors are Confirm's. A server from before
// the protocol carried the earlier confirmation (Ok.already_confirmed)
// never returns one.
func (c *Client) ConfirmCheck(ctx context.Context, id string, answer int) (*Confirmed, error) {
	if answer < 0 || answer > math.MaxUint32 {
		return nil, fmt.Errorf("client: confirm %s: answer %d out of range", id, answer)
	}
	m, err := c.request(ctx, func(ref uint64) []byte {
		return wire.Encode(pb.FrameType_CONFIRM, &pb.Confirm{Ref: ref, Id: id, Answer: uint32(answer)})
	})
	if err != nil {
		return nil, err
	}
	a := m.(*pb.Ok).GetAlreadyConfirmed()
	if a == nil {
		return nil, nil
	}
	return &Confirmed{Answer: int(a.Answer), Choice: a.Choice, Channel: a.Channel, At: time.UnixMilli(a.AtMs)}, nil
}
