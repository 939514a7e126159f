package twilio

import (
	"context"
	"net/http"
	"net/url"
)

// sendTransport carries one Send's HTTP request. It exists because
// twilio-go's client builds every request with context.Background() and
// has no base-URL setting:
//
//   - it gives the request Send's context, so the caller's deadline and
//     cancellation (and Config.Timeout) end it;
//   - if api is set, it replaces the scheme and host of the request
//     (https://api.twilio.com) with api's, keeping path and query;
//   - it records the HTTP status answered, because twilio-go's error
//     carries the status written in the JSON body, which a proxy's or
//     gateway's error page does not have.
//
// One is made per Send and used from that goroutine only.
type sendTransport struct {
	ctx    context.Context
	api    *url.URL // nil means no rewrite
	base   http.RoundTripper
	status int // the last HTTP status answered; 0 if none
}

func (t *sendTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	// A RoundTripper must not modify the request it is given.
	r := req.Clone(t.ctx)
	if t.api != nil {
		r.URL.Scheme = t.api.Scheme
		r.URL.Host = t.api.Host
		r.Host = ""
	}
	resp, err := t.base.RoundTrip(r)
	if resp != nil {
		t.status = resp.StatusCode
	}
	return resp, err
}
