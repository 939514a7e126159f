package twilio

import (
	"context"
	"errors"
	"log/slog"
	"mime"
	"net/http"
	"net/url"

	"github.com/twilio/twilio-go/client"

	"github.com/dingmq/ding/engine"
)

// Webhook paths, absolute; Send gives Twilio PublicURL + path.
const (
	pathSMSStatus  = "/twilio/sms/status"
	pathCallStatus = "/twilio/voice/status"
	pathGather     = "/twilio/voice/gather"
	pathInbound    = "/twilio/sms/inbound"
)

// Routes returns the patterns of the webhook endpoints Handler serves
// (the admin API's OpenAPI document lists them; a test checks it).
func Routes() []string {
	return []string{"POST " + pathSMSStatus, "POST " + pathCallStatus, "POST " + pathGather, "POST " + pathInbound}
}

// maxWebhookBody bounds a webhook's form; Twilio's are a few hundred bytes.
const maxWebhookBody = 64 << 10

// Reports is what the webhooks report to (the engine implements it). Its
// methods are called concurrently, one per webhook request, with the
// request's context, and only after the request's signature was checked.
//
// An error wrapping engine.ErrNotFound (an unknown SID, no pending DING
// for that phone) or engine.ErrBadAnswer (a reply or keypress that did not
// confirm; it is recorded) is answered 200, so that Twilio does not retry; any
// other error is answered 500 (Twilio retries status callbacks) and
// logged, so it must not contain a phone number or a message text.
type Reports interface {
	// ProviderStatus reports a status Twilio gave for the message or call
	// whose SID Send returned as ref. detail is Twilio's error code, if any.
	ProviderStatus(ctx context.Context, ref string, ev engine.ProviderEvent, detail string) error
	// ProviderDigits reports the keys pressed during the call ref.
	ProviderDigits(ctx context.Context, ref, digits string) error
	// InboundSMS reports a text received from the phone number from
	// (E.164) to From.
	InboundSMS(ctx context.Context, from, body string) error
}

// Handler returns the webhook endpoints (see the package doc), which
// report to r. Mount it under "/twilio/": its paths are absolute. Every
// request must be a form POST signed for PublicURL + its path with the
// AuthToken, or it is answered 403 and nothing is reported. Without
// credentials every request is answered 404.
func (n *Notifier) Handler(r Reports) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST "+pathSMSStatus, n.webhook("sms_status", func(w http.ResponseWriter, req *http.Request, f url.Values) string {
		return n.status(w, req, f, r, "sms_status", "MessageSid", "MessageStatus", smsEvents)
	}))
	mux.Handle("POST "+pathCallStatus, n.webhook("call_status", func(w http.ResponseWriter, req *http.Request, f url.Values) string {
		return n.status(w, req, f, r, "call_status", "CallSid", "CallStatus", callEvents)
	}))
	mux.Handle("POST "+pathGather, n.webhook("gather", func(w http.ResponseWriter, req *http.Request, f url.Values) string {
		return n.gather(w, req, f, r)
	}))
	mux.Handle("POST "+pathInbound, n.webhook("inbound_sms", func(w http.ResponseWriter, req *http.Request, f url.Values) string {
		return n.inbound(w, req, f, r)
	}))
	return mux
}

// webhook wraps an endpoint: it parses and authenticates the request,
// calls h with the form, and counts the result h returns.
func (n *Notifier) webhook(endpoint string, h func(http.ResponseWriter, *http.Request, url.Values) string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !n.Configured() {
			http.NotFound(w, r)
			return
		}
		result := n.authenticate(w, r)
		if result == "" {
			result = h(w, r, r.PostForm)
		}
		n.m.webhook(endpoint, result)
	})
}

// authenticate parses r's form and checks its signature. On failure it
// answers and returns the metric result; on success it returns "".
func (n *Notifier) authenticate(w http.ResponseWriter, r *http.Request) string {
	if ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || ct != "application/x-www-form-urlencoded" {
		http.Error(w, "want a form POST", http.StatusBadRequest)
		return "bad_request"
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxWebhookBody)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "malformed form", http.StatusBadRequest)
		return "bad_request"
	}
	sig := r.Header.Get("X-Twilio-Signature")
	if sig == "" {
		http.Error(w, "missing signature", http.StatusForbidden)
		return "forged"
	}
	// Twilio signs the URL it requested and the POST parameters (not the
	// query, which is part of the URL). Validate takes one value per name;
	// Twilio's webhooks repeat none.
	params := make(map[string]string, len(r.PostForm))
	for k, v := range r.PostForm {
		params[k] = v[0]
	}
	if !n.validator.Validate(n.public+r.URL.RequestURI(), params, sig) {
		http.Error(w, "bad signature", http.StatusForbidden)
		return "forged"
	}
	return ""
}

func newValidator(authToken string) client.RequestValidator {
	return client.NewRequestValidator(authToken)
}

var smsEvents = map[string]engine.ProviderEvent{
	"queued":      engine.ProviderSMSQueued,
	"accepted":    engine.ProviderSMSQueued,
	"scheduled":   engine.ProviderSMSQueued,
	"sending":     engine.ProviderSMSQueued,
	"sent":        engine.ProviderSMSSent,
	"delivered":   engine.ProviderSMSDelivered,
	"undelivered": engine.ProviderSMSFailed,
	"failed":      engine.ProviderSMSFailed,
	"canceled":    engine.ProviderSMSFailed,
}

var callEvents = map[string]engine.ProviderEvent{
	"queued":      engine.ProviderCallInitiated,
	"initiated":   engine.ProviderCallInitiated,
	"ringing":     engine.ProviderCallRinging,
	"in-progress": engine.ProviderCallAnswered,
	"answered":    engine.ProviderCallAnswered,
	"completed":   engine.ProviderCallCompleted,
	"busy":        engine.ProviderCallBusy,
	"no-answer":   engine.ProviderCallNoAnswer,
	"failed":      engine.ProviderCallFailed,
	"canceled":    engine.ProviderCallFailed,
}

// status reports a status callback: sidField and statusField name the
// form fields, events maps Twilio's statuses to the engine's (others, such
// as received or read, are nothing the engine tracks and are answered 200).
func (n *Notifier) status(w http.ResponseWriter, r *http.Request, f url.Values, rep Reports, endpoint, sidField, statusField string, events map[string]engine.ProviderEvent) string {
	sid, status := f.Get(sidField), f.Get(statusField)
	if sid == "" || status == "" {
		http.Error(w, sidField+" and "+statusField+" are required", http.StatusBadRequest)
		return "bad_request"
	}
	ev, ok := events[status]
	if !ok {
		w.WriteHeader(http.StatusOK)
		return "ok"
	}
	err := rep.ProviderStatus(r.Context(), sid, ev, f.Get("ErrorCode"))
	return n.answer(w, r, endpoint, sid, err)
}

// gather answers with TwiML the callee hears. Whatever went wrong, it
// answers 200 with a neutral goodbye: Twilio does not retry a <Gather>
// action, and on a 500 it would speak an "application error" instead.
func (n *Notifier) gather(w http.ResponseWriter, r *http.Request, f url.Values, rep Reports) string {
	sid, digits := f.Get("CallSid"), f.Get("Digits")
	if sid == "" {
		http.Error(w, "CallSid is required", http.StatusBadRequest)
		return "bad_request"
	}
	if digits == "" {
		writeTwiml(w, http.StatusOK, noInputTwiml)
		return "ok"
	}
	err := rep.ProviderDigits(r.Context(), sid, digits)
	switch {
	case err == nil:
		writeTwiml(w, http.StatusOK, thanksTwiml)
		return "ok"
	case errors.Is(err, engine.ErrNotFound):
		writeTwiml(w, http.StatusOK, sorryTwiml)
		return "unknown"
	case errors.Is(err, engine.ErrBadAnswer):
		writeTwiml(w, http.StatusOK, sorryTwiml)
		return "not_understood"
	}
	n.logReportError(r, "gather", sid, err)
	writeTwiml(w, http.StatusOK, sorryTwiml)
	return "error"
}

func (n *Notifier) inbound(w http.ResponseWriter, r *http.Request, f url.Values, rep Reports) string {
	from := f.Get("From")
	if from == "" {
		http.Error(w, "From is required", http.StatusBadRequest)
		return "bad_request"
	}
	err := rep.InboundSMS(r.Context(), from, f.Get("Body"))
	switch {
	case err == nil:
		writeTwiml(w, http.StatusOK, emptyTwiml)
		return "ok"
	case errors.Is(err, engine.ErrNotFound):
		writeTwiml(w, http.StatusOK, emptyTwiml)
		return "unknown"
	case errors.Is(err, engine.ErrBadAnswer):
		writeTwiml(w, http.StatusOK, emptyTwiml) // recorded in the ledger; nothing to retry
		return "not_understood"
	}
	n.logReportError(r, "inbound_sms", f.Get("MessageSid"), err)
	http.Error(w, "internal error", http.StatusInternalServerError)
	return "error"
}

// answer answers a status callback after reporting it.
func (n *Notifier) answer(w http.ResponseWriter, r *http.Request, endpoint, sid string, err error) string {
	switch {
	case err == nil:
		w.WriteHeader(http.StatusOK)
		return "ok"
	case errors.Is(err, engine.ErrNotFound):
		w.WriteHeader(http.StatusOK)
		return "unknown"
	}
	n.logReportError(r, endpoint, sid, err)
	http.Error(w, "internal error", http.StatusInternalServerError)
	return "error"
}

// logReportError logs a failed report; sid is a Twilio SID, never a phone
// number, and Reports' errors do not carry numbers or texts.
func (n *Notifier) logReportError(r *http.Request, endpoint, sid string, err error) {
	n.log.LogAttrs(r.Context(), slog.LevelWarn, "twilio: webhook not reported",
		slog.String("endpoint", endpoint), slog.String("sid", sid), slog.Any("err", err))
}

func writeTwiml(w http.ResponseWriter, status int, twiml string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	w.Write([]byte(twiml))
}
