// Package twilio sends Ding's SMS and voice escalations through Twilio and
// serves the webhooks Twilio calls back. It is the only package that
// imports github.com/twilio/twilio-go.
//
// A Notifier implements engine.Notifier. An SMS carries the DING's text and
// a reply hint ("Reply 1 or OK to confirm.", or "Reply 1 for attend, 2 for
// decline." for a menu). A call speaks the text inside a <Gather> that
// takes one keypress. Send returns the Twilio SID as the reference that
// later status callbacks name.
//
// Send's errors follow engine.Notifier: engine.ErrNotConfigured without
// credentials; an error wrapping engine.ErrRejected when Twilio answered a
// 4xx other than 408 and 429 (or the request could not be valid, such as a
// number that is not E.164), which a retry would not change; any other
// error (5xx, 408, 429, timeout, broken connection, unreadable answer)
// means the outcome is unknown and the engine may retry.
//
// Webhooks, served by Handler under these absolute paths (form POSTs,
// each checked against X-Twilio-Signature before anything is reported):
//
//	POST /twilio/sms/status    MessageSid, MessageStatus, ErrorCode -> Reports.ProviderStatus
//	POST /twilio/voice/status  CallSid, CallStatus                  -> Reports.ProviderStatus
//	POST /twilio/voice/gather  CallSid, Digits                      -> Reports.ProviderDigits, answers TwiML
//	POST /twilio/sms/inbound   From, Body                           -> Reports.InboundSMS, answers <Response/>
//
// The first three are set on each message or call by Send, as
// PublicURL+path. The inbound one is configured on the Twilio number
// ("A message comes in": PublicURL/twilio/sms/inbound, HTTP POST).
// Signatures are checked against PublicURL + the request's path and query,
// so a reverse proxy in front must pass the path as Twilio requested it
// (PublicURL may not have a path of its own).
//
// Usage:
//
//	n, err := twilio.New(twilio.Config{
//		AccountSID: sid, AuthToken: token,
//		From:       "+15005550006",
//		PublicURL:  "https://ding.example.com",
//		Registerer: reg,
//	})
//	if err != nil { ... }
//	// n is the engine's engine.Notifier; the engine implements Reports.
//	mux.Handle("/twilio/", n.Handler(eng))
//
// Tests use package twiliotest, a fake Twilio on loopback, through
// Config.APIURL.
package twilio
