// Package email sends the e-mail steps of DING escalations through SMTP
// and serves the links in them that confirm the DING. It is the only
// package that imports github.com/wneessen/go-mail, a maintained SMTP
// client that does STARTTLS, implicit TLS, AUTH and MIME (quoted-printable
// bodies, encoded headers, multipart/alternative) right.
//
// A Notifier implements engine.Notifier for engine.ChannelEmail (routed
// to it by engine.Notifiers). An e-mail goes to the one recipient, from
// Config.From, with the subject "DING from SENDER: first line" and the
// DING's text, as plain text with an HTML alternative, and one link per
// choice (or one "Confirm" link). Send returns its Message-ID, which the
// ledger records with email_sent.
//
// Send's errors follow engine.Notifier and are *SendError, whose text
// never holds an address: engine.ErrNotConfigured without Config.Addr; a
// 5xx reply (or an address that is not one) is permanent and wraps
// engine.ErrRejected, so the engine records email_failed and does not
// retry; a 4xx reply, or no answer at all (connection refused, a timeout,
// a TLS failure), is temporary, and the engine records email_failed and
// retries with backoff. Bounces that arrive later are not read.
//
// # Links
//
// A link is PublicURL + "/email/confirm?t=" + a token that names the
// DING, the recipient's index in it, the answer and an expiry, signed
// with HMAC-SHA256 under a key of the server's (KeyFile in the data
// directory; layout in link.go). It carries no address, name or text, and
// the mail holds no key and no other recipient.
//
//	GET  /email/confirm?t=TOKEN   a page with one button (a form POST), or for Accept: application/json
//	                              {"ding","answer","choice","expires"}; nothing is recorded, so that a
//	                              mail scanner that fetches links confirms nothing
//	POST /email/confirm  t=TOKEN  confirms through Confirmer.ConfirmByLink, the engine's normal confirm
//	                              path, by channel email -> 200, page or {"ding","answer","choice","confirmed"}
//
// These are for the recipients of the mails, not for integrations; Routes
// lists them, and the admin API's OpenAPI document
// (channels/httpapi/openapi.json) describes them.
//
// Errors change nothing and are answered as a page, or as
// {"error":{"code","detail"}} for JSON: 403 LINK_FORGED (not signed by
// this key: altered, cut, made up), 410 LINK_EXPIRED, 410 LINK_USED (the
// recipient already confirmed, by this link or any other way: a link
// works once), 404 NOT_FOUND (the DING is gone), 400 BAD_REQUEST, 503
// UNAVAILABLE (try again).
//
// Usage:
//
//	key, err := email.LoadOrCreateKey(filepath.Join(dataDir, email.KeyFile))
//	n, err := email.New(email.Config{
//		Addr: "smtp.example.com:587", Username: "ding", Password: pw,
//		From: "Ding <ding@example.com>", PublicURL: "https://ding.example.com",
//		Key: key, Registerer: reg,
//	})
//	notifier := engine.Notifiers{engine.ChannelSMS: tw, engine.ChannelVoice: tw, engine.ChannelEmail: n}
//	mux.Handle("/email/", n.Handler(eng))
//
// Tests use package emailtest, a fake SMTP server on loopback.
package email
