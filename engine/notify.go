package engine

import (
	"context"
	"fmt"
)

// Channel is a way of reaching a person during an escalation.
type Channel uint8

const (
	// ChannelInApp is the recipient's stream: every device of the user.
	ChannelInApp Channel = 1
	// ChannelSMS is a text message to the recipient's phone.
	ChannelSMS Channel = 2
	// ChannelVoice is a phone call that speaks the message and gathers a
	// keypress.
	ChannelVoice Channel = 3
	// ChannelEmail is an e-mail to the address the directory has for the
	// recipient at the time of the send, whose links confirm the DING.
	ChannelEmail Channel = 4
	// ChannelPush is a push notification (APNs, FCM) to every device of
	// the recipient that registered a push token (push.go).
	ChannelPush Channel = 5
)

func (c Channel) String() string {
	switch c {
	case ChannelInApp:
		return "inapp"
	case ChannelSMS:
		return "sms"
	case ChannelVoice:
		return "voice"
	case ChannelEmail:
		return "email"
	case ChannelPush:
		return "push"
	}
	return "unknown"
}

// ParseChannel parses "inapp", "push", "sms", "voice" or "email".
func ParseChannel(s string) (Channel, error) {
	switch s {
	case "inapp", "app":
		return ChannelInApp, nil
	case "sms":
		return ChannelSMS, nil
	case "voice", "call":
		return ChannelVoice, nil
	case "email", "mail":
		return ChannelEmail, nil
	case "push":
		return ChannelPush, nil
	}
	return 0, fmt.Errorf("%w: unknown channel %q (want inapp, push, sms, voice or email)", ErrBadPolicy, s)
}

// Outbound is one external send of an escalation step: an SMS, a call or
// an e-mail.
type Outbound struct {
	Ding      ID      // the DING's id (also its message's id)
	Recipient int     // the recipient's index in the DING
	Attempt   int     // 1 for the first send of this step, 2 for its first retry, ...
	Channel   Channel // ChannelSMS, ChannelVoice, ChannelEmail or ChannelPush
	To        string  // E.164 phone number, for ChannelEmail an e-mail address, for ChannelPush the user. Never log it.
	Text      string  // what to send or speak. Never log it.
	// Sender is the display name of the DING's sender (its user id if the
	// directory has no name); Text starts with it too.
	Sender string
	// Choices is the DING's response menu; the recipient answers with the
	// choice's number (1-based). Empty means "1 confirms".
	Choices []string
	// Critical is the DING's critical flag (a push asks for a critical
	// alert where the platform allows it).
	Critical bool
}

// Notifier sends SMS and calls (package channels/twilio implements it),
// or e-mails (package channels/email). Notifiers routes each channel to
// its own.
//
// Send is called concurrently from the engine's dispatch workers, with a
// context that carries the send's deadline. It returns the provider's
// reference for the message or call (for Twilio, its SID), which later
// status reports name (see Engine.ProviderStatus).
//
// Errors, and what the engine does with them:
//   - ErrNotConfigured: the channel has no provider. Recorded in the
//     ledger; the escalation goes on with its next step. Not retried.
//   - an error wrapping ErrRejected: the provider certainly did not accept
//     the request, and sending it again would fail the same way (an
//     invalid number, a 4xx answer). Recorded as failed; not retried.
//   - any other error: the outcome is unknown (a timeout, a 5xx answer, a
//     broken connection): the provider may or may not have accepted it.
//     The engine retries with backoff, accepting a possible duplicate.
//
// An error may also implement ProviderDetailer, to say in the DING's
// ledger what the provider answered.
type Notifier interface {
	Send(ctx context.Context, o Outbound) (ref string, err error)
}

// ProviderDetailer is implemented by a Notifier error that can say, in a
// few words fit for the DING's sender to read, what the provider answered
// (for e-mail, the SMTP reply code: "smtp 451"). It must never contain an
// address, a phone number or a message text.
type ProviderDetailer interface {
	ProviderDetail() string
}

// Notifiers is a Notifier that hands each send to the Notifier of its
// channel; a channel with none answers ErrNotConfigured.
type Notifiers map[Channel]Notifier

// Send implements Notifier.
func (ns Notifiers) Send(ctx context.Context, o Outbound) (string, error) {
	n := ns[o.Channel]
	if n == nil {
		return "", fmt.Errorf("engine: send %s: %w", o.Channel, ErrNotConfigured)
	}
	return n.Send(ctx, o)
}

var _ Notifier = Notifiers(nil)

var (
	// ErrNotConfigured is returned by a Notifier for a channel it cannot
	// send on (no provider credentials).
	ErrNotConfigured = NewError(CodeInternal, "engine: channel not configured")
	// ErrRejected is wrapped by a Notifier error when the provider certainly
	// did not accept the request and a retry would fail the same way.
	ErrRejected = NewError(CodeInternal, "engine: rejected by provider")
	// ErrBadPolicy is returned (wrapped, with the reason) for an escalation
	// policy that cannot be parsed or used.
	ErrBadPolicy = NewError(CodeBadPolicy, "engine: bad escalation policy")
)

// ProviderEvent is what a provider reports about an SMS or a call it was
// given, mapped from its own vocabulary by the channel (package
// channels/twilio maps Twilio's status callbacks).
type ProviderEvent uint8

const (
	ProviderSMSQueued     ProviderEvent = iota + 1 // accepted, waiting to go out
	ProviderSMSSent                                // handed to the carrier
	ProviderSMSDelivered                           // the carrier confirmed delivery
	ProviderSMSFailed                              // failed or undelivered
	ProviderCallInitiated                          // dialling
	ProviderCallRinging                            // ringing
	ProviderCallAnswered                           // in progress
	ProviderCallCompleted                          // ended after an answer
	ProviderCallBusy                               // busy
	ProviderCallNoAnswer                           // not answered
	ProviderCallFailed                             // could not be placed, or cancelled
)
