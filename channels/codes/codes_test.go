package codes_test

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/codes"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/ratelimit"
)

func TestAnswers(t *testing.T) {
	id := "01M8ZZZZZZZZZZZZZZZZZZZZZZ"
	cases := []struct {
		name       string
		err        error
		socket     pb.Code
		fatal      bool
		status     int
		httpCode   string
		retry      bool
		detail     string // the whole detail, when checked
		notContain string
	}{
		{"unknown recipient names what the request sent", fmt.Errorf("%w: %q", engine.ErrUnknownRecipient, "zed"),
			pb.Code_UNKNOWN_RECIPIENT, false, http.StatusUnprocessableEntity, "UNKNOWN_RECIPIENT", false, `unknown recipient: "zed"`, ""},
		{"too large", fmt.Errorf("%w: 70000 bytes, limit 65536", engine.ErrTooLarge),
			pb.Code_MESSAGE_TOO_LARGE, false, http.StatusRequestEntityTooLarge, "MESSAGE_TOO_LARGE", false, "message too large: 70000 bytes, limit 65536", ""},
		{"bad ack ends the connection", engine.ErrBadAck, pb.Code_BAD_ACK, true, http.StatusBadRequest, "BAD_ACK", false, "", ""},
		{"aborted batch: retryable, fixed detail", engine.ErrAborted, pb.Code_ABORTED, false, http.StatusServiceUnavailable, "ABORTED", true, "", ""},
		{"store failure: unavailable, no internal text", fmt.Errorf("%w: commit: %w", engine.ErrFailed, errors.New("pebble: disk full at /data/000123.log")),
			pb.Code_UNAVAILABLE, false, http.StatusServiceUnavailable, "UNAVAILABLE", true, "", "pebble"},
		{"an uncoded error is internal with a fixed detail", fmt.Errorf("read rollup: %w", errors.New("EIO on table 7")),
			pb.Code_INTERNAL, false, http.StatusInternalServerError, "INTERNAL", true, "internal error; retry", "EIO"},
		{"a client code wrapped in an internal failure is internal", fmt.Errorf("read %s: %w", id, engine.ErrNotFound),
			pb.Code_NOT_FOUND, false, http.StatusNotFound, "NOT_FOUND", false, "", ""},
		{"bad answer keeps its HTTP name", engine.ErrBadAnswer, pb.Code_BAD_ANSWER, false, http.StatusBadRequest, "BAD_REQUEST", false, "", ""},
		{"directory: department cycle", fmt.Errorf("fanout: put department: %w", fanout.ErrDepartmentCycle),
			pb.Code_BAD_REQUEST, false, http.StatusConflict, "DEPARTMENT_CYCLE", false, "put department: department would be its own ancestor", ""},
		{"quota", &engine.QuotaError{Reason: engine.ReasonSenderDaily, Detail: "200 DINGs today", RetryAfter: time.Hour},
			pb.Code_BAD_REQUEST, false, http.StatusTooManyRequests, "QUOTA_EXCEEDED", true, "", ""},
		{"rate limited: retryable, says when", &ratelimit.Error{What: ratelimit.Submit, RetryAfter: 1500 * time.Millisecond},
			pb.Code_RATE_LIMITED, false, http.StatusTooManyRequests, "RATE_LIMITED", true, "too many messages from this user; retry in 2s", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := codes.Of(c.err)
			if a.Socket != c.socket || a.Fatal != c.fatal || a.HTTPStatus != c.status || a.HTTPCode != c.httpCode || a.Retry != c.retry {
				t.Fatalf("Of = %+v; want socket %v fatal %v status %d code %s retry %v", a, c.socket, c.fatal, c.status, c.httpCode, c.retry)
			}
			if c.detail != "" && a.Detail != c.detail {
				t.Fatalf("detail %q, want %q", a.Detail, c.detail)
			}
			if c.notContain != "" && strings.Contains(a.Detail, c.notContain) {
				t.Fatalf("detail %q leaks %q", a.Detail, c.notContain)
			}
			if strings.Contains(a.Detail, "engine:") || strings.Contains(a.Detail, "fanout:") || strings.Contains(a.Detail, "ratelimit:") {
				t.Fatalf("detail %q carries a package prefix", a.Detail)
			}
		})
	}
}

// TestAbortedReadHidesAnotherUsersID: the error of an op that aborted its
// batch (a message missing while its receipt exists) is internal, and its
// text, which names a message id, does not reach the client.
func TestAbortedReadHidesAnotherUsersID(t *testing.T) {
	id := "01M8ZZZZZZZZZZZZZZZZZZZZZZ"
	a := codes.Of(engine.Internal(fmt.Errorf("read %s: %w", id, engine.ErrNotFound)))
	if a.Socket != pb.Code_INTERNAL || strings.Contains(a.Detail, id) {
		t.Fatalf("Of = %+v", a)
	}
}

// TestEveryCodeIsMapped: every code the engine and the directory define
// has a row; an unmapped one would answer INTERNAL.
func TestEveryCodeIsMapped(t *testing.T) {
	for _, c := range []engine.Code{
		engine.CodeBadRequest, engine.CodeTooLarge, engine.CodeUnknownRecipient, engine.CodeNotRecipient, engine.CodeNotFound,
		engine.CodeBadAck, engine.CodeNotDing, engine.CodeBadAnswer, engine.CodeBadPolicy, engine.CodeQuota, engine.CodeNoForward,
		engine.CodeNotMember, engine.CodeBadChat, engine.CodeForbidden, engine.CodeUserRemoved, engine.CodeUnavailable,
		engine.CodeAborted, engine.CodeInternal, engine.CodeRateLimited,
		fanout.CodeUnknownUser, fanout.CodeUnknownDepartment, fanout.CodeUnknownGroup, fanout.CodeDepartmentCycle,
		fanout.CodeDepartmentNotEmpty, fanout.CodeBadImport, fanout.CodeUserExists,
		fanout.CodeAdminExists, fanout.CodeUnknownAdmin, fanout.CodeLastOwner,
	} {
		a := codes.Of(engine.NewError(c, "x"))
		if a.Code != c {
			t.Errorf("%s answers as %s: add it to the table", c, a.Code)
		}
	}
}
