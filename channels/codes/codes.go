// Package codes is the one place where Ding's error codes (engine.Code)
// become answers on the edges: a socket protocol code (and whether it ends
// the connection) and an HTTP status with the admin API's code name.
//
//	a := codes.Of(err)
//	conn.sendError(a.Socket, ref, a.Detail, a.Fatal)          // socket
//	writeJSONError(w, a.HTTPStatus, a.HTTPCode, a.Detail)       // HTTP
//
// The detail comes from engine.Describe: for the request's own errors, the
// error's text without package prefixes (it names only what the request
// sent); for internal ones (a store failure, an aborted batch), a fixed
// text, so internal error text never reaches a client.
package codes

import (
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/ratelimit"
)

// Answer is what an edge tells a client about an error.
type Answer struct {
	Code       engine.Code
	Retry      bool   // the same request may be sent again (after RetryAfter)
	Detail     string // safe to show the client
	Socket     pb.Code
	Fatal      bool // the socket connection ends with it
	HTTPStatus int
	HTTPCode   string        // the admin API's code name
	RetryAfter time.Duration // for QUOTA_EXCEEDED, if known, and RATE_LIMITED
	Reason     string        // for QUOTA_EXCEEDED: which quota
}

type row struct {
	socket   pb.Code
	fatal    bool
	status   int
	httpCode string // "" means the code's own name
}

// table maps every code to its answers. A code missing here answers as
// INTERNAL (TestEveryCodeIsMapped guards the engine's and the directory's).
var table = map[engine.Code]row{
	engine.CodeBadRequest:       {pb.Code_BAD_REQUEST, false, http.StatusBadRequest, ""},
	engine.CodeTooLarge:         {pb.Code_MESSAGE_TOO_LARGE, false, http.StatusRequestEntityTooLarge, ""},
	engine.CodeUnknownRecipient: {pb.Code_UNKNOWN_RECIPIENT, false, http.StatusUnprocessableEntity, ""},
	engine.CodeNotRecipient:     {pb.Code_NOT_RECIPIENT, false, http.StatusForbidden, ""},
	engine.CodeNotFound:         {pb.Code_NOT_FOUND, false, http.StatusNotFound, ""},
	engine.CodeBadAck:           {pb.Code_BAD_ACK, true, http.StatusBadRequest, ""},
	engine.CodeNotDing:          {pb.Code_NOT_DING, false, http.StatusConflict, ""},
	engine.CodeBadAnswer:        {pb.Code_BAD_ANSWER, false, http.StatusBadRequest, "BAD_REQUEST"},
	engine.CodeBadPolicy:        {pb.Code_BAD_REQUEST, false, http.StatusBadRequest, ""},
	engine.CodeQuota:            {pb.Code_BAD_REQUEST, false, http.StatusTooManyRequests, ""},
	engine.CodeNoForward:        {pb.Code_NO_FORWARD, false, http.StatusConflict, ""},
	engine.CodeNotMember:        {pb.Code_NOT_MEMBER, false, http.StatusForbidden, ""},
	engine.CodeBadChat:          {pb.Code_BAD_CHAT, false, http.StatusBadRequest, ""},
	engine.CodeForbidden:        {pb.Code_FORBIDDEN, false, http.StatusForbidden, ""},
	engine.CodeUserRemoved:      {pb.Code_USER_REMOVED, true, http.StatusGone, ""},
	engine.CodeRateLimited:      {pb.Code_RATE_LIMITED, false, http.StatusTooManyRequests, ""},
	engine.CodeUnavailable:      {pb.Code_UNAVAILABLE, false, http.StatusServiceUnavailable, ""},
	engine.CodeAborted:          {pb.Code_ABORTED, false, http.StatusServiceUnavailable, ""},
	engine.CodeInternal:         {pb.Code_INTERNAL, false, http.StatusInternalServerError, ""},

	fanout.CodeUnknownUser:        {pb.Code_UNKNOWN_RECIPIENT, false, http.StatusUnprocessableEntity, ""},
	fanout.CodeUnknownDepartment:  {pb.Code_BAD_REQUEST, false, http.StatusUnprocessableEntity, ""},
	fanout.CodeUnknownGroup:       {pb.Code_BAD_REQUEST, false, http.StatusUnprocessableEntity, ""},
	fanout.CodeDepartmentCycle:    {pb.Code_BAD_REQUEST, false, http.StatusConflict, ""},
	fanout.CodeDepartmentNotEmpty: {pb.Code_BAD_REQUEST, false, http.StatusConflict, ""},
	fanout.CodeBadImport:          {pb.Code_BAD_REQUEST, false, http.StatusBadRequest, ""},
	fanout.CodeUserExists:         {pb.Code_BAD_REQUEST, false, http.StatusConflict, ""},
	fanout.CodeAdminExists:        {pb.Code_BAD_REQUEST, false, http.StatusConflict, ""},
	fanout.CodeUnknownAdmin:       {pb.Code_NOT_FOUND, false, http.StatusNotFound, ""},
	fanout.CodeLastOwner:          {pb.Code_BAD_REQUEST, false, http.StatusConflict, ""},
}

// HTTPCodes returns every code name the table gives the admin API (the
// API's OpenAPI document lists them; a test checks it), sorted.
func HTTPCodes() []string {
	var out []string
	for code, r := range table {
		name := r.httpCode
		if name == "" {
			name = string(code)
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Of returns what to tell a client about err.
func Of(err error) Answer {
	code, retry, detail := engine.Describe(err)
	r, ok := table[code]
	if !ok {
		code, retry, detail = engine.Describe(errors.New("unmapped code " + string(code)))
		r = table[engine.CodeInternal]
	}
	a := Answer{Code: code, Retry: retry, Detail: detail, Socket: r.socket, Fatal: r.fatal, HTTPStatus: r.status, HTTPCode: r.httpCode}
	if a.HTTPCode == "" {
		a.HTTPCode = string(code)
	}
	var qe *engine.QuotaError
	if errors.As(err, &qe) {
		a.RetryAfter, a.Reason = qe.RetryAfter, qe.Reason
	}
	var rl *ratelimit.Error
	if errors.As(err, &rl) {
		a.RetryAfter, a.Detail = rl.RetryAfter, rl.Detail()
	}
	return a
}

// Internal reports whether a says the server failed, not the request (so
// the failure is worth logging, with the error itself).
func (a Answer) Internal() bool { return a.Code.Internal() }
