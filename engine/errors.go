package engine

import (
	"errors"
	"strings"
)

// Errors.
//
// Every error a client can be told about carries a Code (it implements
// Coded): a stable name, and through it whether the request's own input
// was at fault (nothing was written) and whether retrying is safe. The
// sentinels below and in the feature files are *Error values compared
// with errors.Is; wrapping them with fmt.Errorf("%w: ...") adds the
// detail a client may see (the name it sent, a limit). Describe turns any
// error into what a client is told: its code, whether to retry, and a
// short detail; an error without a code, or one marked internal, is
// INTERNAL with a fixed detail, so internal text (a store's error, another
// user's message id) never reaches a client. The edges map codes to
// socket codes and HTTP statuses in one table (package channels/codes).

// Code names a kind of error, the same on every edge.
type Code string

// The engine's codes. Other packages add their own (package fanout's
// directory errors).
const (
	CodeBadRequest       Code = "BAD_REQUEST"       // the request is malformed: a name, a kind, no or too many recipients
	CodeTooLarge         Code = "MESSAGE_TOO_LARGE" // the body is over the limit
	CodeUnknownRecipient Code = "UNKNOWN_RECIPIENT" // a recipient does not exist or was removed
	CodeNotRecipient     Code = "NOT_RECIPIENT"     // the message is not the user's
	CodeNotFound         Code = "NOT_FOUND"         // no such message, DING, chat or reference
	CodeBadAck           Code = "BAD_ACK"           // an ack beyond the stream's head
	CodeNotDing          Code = "NOT_DING"          // a confirmation of a message that asks for none
	CodeBadAnswer        Code = "BAD_ANSWER"        // an answer that is not one of the choices
	CodeBadPolicy        Code = "BAD_POLICY"        // an escalation policy that does not parse or is not stored
	CodeQuota            Code = "QUOTA_EXCEEDED"    // a quota or quiet hours; retry after QuotaError.RetryAfter
	CodeNoForward        Code = "NO_FORWARD"        // a forward or quote of a secret message
	CodeNotMember        Code = "NOT_MEMBER"        // not a member of the secret chat
	CodeBadChat          Code = "BAD_CHAT"          // an invalid secret chat request
	CodeForbidden        Code = "FORBIDDEN"         // allowed to someone else only
	CodeUserRemoved      Code = "USER_REMOVED"      // the user was offboarded
	// CodeRateLimited is a request over an edge's abuse limit (package
	// internal/ratelimit), not the engine's: retry after the time given.
	CodeRateLimited Code = "RATE_LIMITED"

	// Not the request's fault. Retrying is safe (a submit's ClientID
	// deduplicates it).
	CodeUnavailable Code = "UNAVAILABLE" // the engine cannot accept writes now (closed, or its store failed)
	CodeAborted     Code = "ABORTED"     // the op shared a batch with ops that failed; it was not committed
	CodeInternal    Code = "INTERNAL"    // anything else: a store error, a corrupt record
)

// Retry reports whether a request that failed with c may be retried as it
// is (for QUOTA_EXCEEDED and RATE_LIMITED, after the time they give).
func (c Code) Retry() bool {
	switch c {
	case CodeUnavailable, CodeAborted, CodeInternal, CodeQuota, CodeRateLimited:
		return true
	}
	return false
}

// Internal reports whether c says the server failed, not the request.
func (c Code) Internal() bool {
	return c == CodeUnavailable || c == CodeAborted || c == CodeInternal
}

// Coded is implemented by errors that carry a Code.
type Coded interface {
	error
	ErrorCode() Code
}

// Error is an error with a Code. Its text is what Describe shows a client
// (without its package prefix), once wrapped with the request's detail.
type Error struct {
	code Code
	msg  string
}

// NewError returns an error with code and text msg. Sentinels are made
// with it once and compared with errors.Is.
func NewError(code Code, msg string) *Error { return &Error{code: code, msg: msg} }

func (e *Error) Error() string { return e.msg }

// ErrorCode implements Coded.
func (e *Error) ErrorCode() Code { return e.code }

// Describe returns what a client is told about err: its code, whether a
// retry is safe, and a short detail. An error without a Code, or one that
// must abort its batch (an internal failure wrapping a client error, such
// as a message missing while its receipt exists), is INTERNAL; the
// details of INTERNAL, UNAVAILABLE and ABORTED are fixed texts.
func Describe(err error) (code Code, retry bool, detail string) {
	code = CodeOf(err)
	switch code {
	case CodeInternal:
		return code, true, "internal error; retry"
	case CodeUnavailable:
		return code, true, "the server cannot accept writes now; retry later"
	case CodeAborted:
		return code, true, "not committed because other operations in its batch failed; retry"
	}
	return code, code.Retry(), clientDetail(err.Error())
}

// CodeOf returns err's code: INTERNAL for nil-coded errors and for errors
// marked to abort their batch.
func CodeOf(err error) Code {
	var a *abortError
	if errors.As(err, &a) {
		return CodeInternal
	}
	var c Coded
	if errors.As(err, &c) {
		return c.ErrorCode()
	}
	return CodeInternal
}

// clientError reports whether err is an op's own fault (a code that is not
// internal), detected before the op wrote anything to the batch. Any other
// error while building a batch (a store read failing) aborts the batch,
// since the op may have written part of its keys: the batch is rebuilt
// without it (package engine/internal/pipeline).
//
// An op returning a client error may have written what it means to keep
// (an SMS reply that did not confirm is still recorded in the ledger); it
// must not have written anything else.
func clientError(err error) bool { return !CodeOf(err).Internal() }

// clientDetail is an error's text without package prefixes ("engine: ",
// "fanout: "): what the request got wrong, in the words of its own input.
func clientDetail(s string) string {
	for _, p := range []string{"engine: ", "fanout: "} {
		s = strings.ReplaceAll(s, p, "")
	}
	return s
}

// abortError marks an error that must abort the batch even if it wraps a
// client error (a message missing while its receipt exists).
type abortError struct{ err error }

func abort(err error) error { return &abortError{err} }

func (a *abortError) Error() string { return a.err.Error() }
func (a *abortError) Unwrap() error { return a.err }

// Internal marks err as an internal failure even if it wraps a client
// error: Describe then answers INTERNAL, and an op returning it aborts its
// batch.
func Internal(err error) error { return abort(err) }
