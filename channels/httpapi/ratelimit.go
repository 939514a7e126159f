package httpapi

import (
	"net/http"

	"github.com/dingmq/ding/internal/ratelimit"
)

// Rate limits (Config.Limits; package internal/ratelimit). An answer over
// a limit is 429 RATE_LIMITED with Retry-After (whole seconds) and
// "retry": true, through the one table of channels/codes:
//
//   - a source address that failed to authenticate too often (any 401
//     from it counts, and the socket port's failed HELLOs) gets 429 for
//     every /v1 request, its token not even looked at, until its lockout
//     ends;
//   - each admin's /v1 requests, after authentication, whatever the
//     route or its answer (ratelimit.AdminRequest), and its client token
//     mints (POST /v1/tokens, ratelimit.TokenMint);
//   - each user's messages (POST /v1/messages, keyed by "from"; the same
//     bucket as the user's SUBMITs on the socket) and DINGs (POST
//     /v1/dings).

// sourceLocked refuses a request from an address locked out for its
// failed authentications.
func (a *API) sourceLocked(r *http.Request) *apiError {
	if err := a.cfg.Limits.Check(ratelimit.Auth, ratelimit.Source(r.RemoteAddr)); err != nil {
		return a.answer("", err)
	}
	return nil
}

// authFailed counts a 401 against the request's source address.
func (a *API) authFailed(r *http.Request, ae *apiError) {
	if ae.status == http.StatusUnauthorized {
		a.cfg.Limits.AuthFailed(ratelimit.Source(r.RemoteAddr))
	}
}

// limit takes one of what for key, or answers why not.
func (a *API) limit(what ratelimit.What, key string) *apiError {
	if err := a.cfg.Limits.Check(what, key); err != nil {
		return a.answer("", err)
	}
	return nil
}
