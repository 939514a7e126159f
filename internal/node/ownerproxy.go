package node

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dingmq/ding/channels/httpapi"
)

// ownerProxiedHeader marks an admin API request one node sent on to
// another (ownerProxy): the one it reaches answers it as it can, and
// sends it on no further.
const ownerProxiedHeader = "Ding-Proxied"

// ownerProxyMaxBody is the largest request body ownerProxy holds to send
// on: the admin API's bodies are a few times a message's largest body;
// a larger one is answered by this node alone (it holds no copy).
const ownerProxyMaxBody = 8 << 20

// ownerProxy lets an admin (dingctl, the console, a script) use any node
// of a cluster: a request about a user or a message of a partition this
// node does not serve is answered by the node that does. The request is
// first answered here as usual; when the answer says its partition is
// served elsewhere (httpapi.Elsewhere, before anything was written),
// that answer is dropped and the request, body and credentials
// unchanged, goes to the partition's owner, whose answer is the one the
// client gets. While the partition has no owner (a takeover in
// progress), or the owner does not answer, the client gets this node's
// UNAVAILABLE (retry). Directory changes go to the directory's owner
// through dirProxy first.
type ownerProxy struct {
	// owner returns the HTTP address of partition p's owner, "" when none
	// other than this node serves it now.
	owner func(ctx context.Context, p int) string
	// since (nil: none) returns what the announcement of partition p's
	// next move cancels (ownerMoves.current): a request sent on to its
	// owner ends then, as the old owner may be frozen and would hold it
	// until the client gave up.
	since func(p int) context.Context
	// ownerNow is owner asked past every cache: a move announced for the
	// node a request went to ends the request only if that node is no
	// longer the owner (boundToOwner). Set with since.
	ownerNow func(ctx context.Context, p int) string
	peer     *http.Client
	fwd      *forwarder         // the client's address and certificate, signed
	sent     prometheus.Counter // the requests sent on
}

func (o *ownerProxy) wrap(api http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(ownerProxiedHeader) != "" || !strings.HasPrefix(r.URL.Path, "/v1/") {
			api.ServeHTTP(w, r)
			return
		}
		var body []byte
		if r.Body != nil && r.Body != http.NoBody {
			b, err := io.ReadAll(io.LimitReader(r.Body, ownerProxyMaxBody+1))
			if err != nil || len(b) > ownerProxyMaxBody {
				// Too large to hold (or cut short): answered here alone,
				// from what was read and the rest.
				r.Body = struct {
					io.Reader
					io.Closer
				}{io.MultiReader(bytes.NewReader(b), r.Body), r.Body}
				api.ServeHTTP(w, r)
				return
			}
			body = b
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		dw := &divertWriter{w: w, partition: -1}
		api.ServeHTTP(dw, r)
		if dw.partition < 0 {
			return // answered here
		}
		var since context.Context
		if o.since != nil {
			since = o.since(dw.partition) // before the owner is looked up
		}
		base := o.owner(r.Context(), dw.partition)
		target, err := url.Parse(base)
		if base == "" || err != nil {
			dw.release() // nobody else serves it now: retry
			return
		}
		o.sent.Inc()
		proxy := &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(target)
				pr.Out.Header.Set(ownerProxiedHeader, "1")
				pr.Out.Body, pr.Out.ContentLength = nil, 0
				if len(body) > 0 {
					pr.Out.Body, pr.Out.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
				}
				o.fwd.assert(pr.Out, pr.In)
			},
			Transport: o.peer.Transport,
			ErrorHandler: func(http.ResponseWriter, *http.Request, error) {
				dw.release() // the owner did not answer: this node's UNAVAILABLE
			},
		}
		if since != nil {
			p := dw.partition
			ctx, cancel := boundToOwner(r.Context(), since, func() context.Context { return o.since(p) }, func(ctx context.Context) bool { return o.ownerNow(ctx, p) == base })
			defer cancel()
			r = r.WithContext(ctx)
		}
		proxy.ServeHTTP(w, r)
	})
}

// divertWriter holds an admin API answer back until its status is
// written: one naming another node's partition (an error with
// httpapi.ServedElsewhereHeader) is kept aside, to send the request on
// instead (partition ≥ 0), or to be released as it is; any other goes
// through at once.
type divertWriter struct {
	w         http.ResponseWriter
	header    http.Header
	status    int
	partition int // -1, or the partition served elsewhere once diverted
	held      bytes.Buffer
	passed    bool
}

func (d *divertWriter) Header() http.Header {
	if d.passed {
		return d.w.Header()
	}
	if d.header == nil {
		d.header = http.Header{}
	}
	return d.header
}

func (d *divertWriter) WriteHeader(code int) {
	if d.passed || d.status != 0 {
		return
	}
	d.status = code
	if p, err := strconv.Atoi(d.header.Get(httpapi.ServedElsewhereHeader)); err == nil && p >= 0 && code >= 400 {
		d.partition = p
		return
	}
	d.pass()
}

// pass sends the held headers and status on.
func (d *divertWriter) pass() {
	d.passed = true
	for k, vs := range d.header {
		d.w.Header()[k] = vs
	}
	d.w.WriteHeader(d.status)
}

func (d *divertWriter) Write(b []byte) (int, error) {
	if d.status == 0 {
		d.WriteHeader(http.StatusOK)
	}
	if d.passed {
		return d.w.Write(b)
	}
	return d.held.Write(b)
}

// release sends a diverted answer on as it is.
func (d *divertWriter) release() {
	d.pass()
	_, _ = d.w.Write(d.held.Bytes())
}

// Flush passes a flush on once the answer goes through.
func (d *divertWriter) Flush() {
	if f, ok := d.w.(http.Flusher); ok && d.passed {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the writer underneath.
func (d *divertWriter) Unwrap() http.ResponseWriter { return d.w }
