// Package push sends push notifications through APNs and FCM: a DING's
// push step, and a notification of new messages for registered devices
// that hold no connection. It is the only package that imports
// github.com/sideshow/apns2 (APNs over HTTP/2 with token-based auth, a
// .p8 key) and golang.org/x/oauth2/jwt (the FCM HTTP v1 API's
// service-account grant; the v1 request itself is a small client here,
// fcm.go says why not firebase.google.com/go).
//
// A Pusher is two things:
//
//   - an engine.Notifier for engine.ChannelPush (routed to it by
//     engine.Notifiers): Send reaches every device of the recipient that
//     registered a token, connected or not, with a time-sensitive (iOS;
//     critical for a critical DING) or high-priority (Android) payload
//     whose category and data carry the DING's choices as notification
//     actions (ActionID). The app answers an action with the normal
//     confirm (the socket's Confirm frame), and may report the
//     notification opened (push_opened in the ledger).
//   - an engine.Sink wrapper (Sink): after the hub has the entries, each
//     new message to a user (not their own, not a DING) is noted, and a
//     worker notifies the user's registered devices that are not muted
//     and have not acknowledged it, when they hold no connection (or
//     held one and did not acknowledge within Config.Grace): at once if
//     the device had no
//     notification in the last Config.Coalesce, else one notification
//     when the window ends for everything that came in it ("3 new
//     messages"). The badge is the unread count (the stream's head less
//     the furthest cursor). By default a notification has no text: "New
//     message from NAME", and for a secret chat's message only "New
//     secret message", with no sender; Config.Preview adds a plain text
//     message's first 178 bytes (a device may opt out, NoPreview).
//
// Requests are retried on 5xx, 429 and no answer, up to Config.Attempts,
// with doubling backoff and jitter, or the provider's Retry-After; a 4xx
// is final. A token the provider says is dead (APNs 410, BadDeviceToken,
// DeviceTokenNotForTopic; FCM UNREGISTERED, or INVALID_ARGUMENT about
// the token) is removed from the engine (Tokens.RemovePushToken) and
// counted. Errors are *SendError, whose text never holds a token or a
// message; credentials are read once by New and never logged.
//
// Usage:
//
//	p, err := push.New(push.Config{
//		APNsKeyFile: "AuthKey_ABC.p8", APNsKeyID: "ABC", APNsTeamID: "TEAM",
//		FCMCredentialsFile: "sa.json", Registerer: reg,
//	}, push.Deps{Tokens: eng, Presence: hub, Streams: eng, Name: displayName})
//	defer p.Close()
//	eng.SetSink(p.Sink(publisher))
//	notifier := engine.Notifiers{engine.ChannelPush: p, ...}
//
// Tests use package pushtest, a fake APNs and a fake FCM on loopback.
package push
