package node

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/dingmq/ding/channels/httpapi"
)

// A request one cluster node sends on to another (the stand-in's proxy,
// dirProxy, ownerProxy, authorizeStandIn's question) reaches the second
// from the first node's address, and without the client's TLS
// connection. Left at that, the second node would count a client's
// failed authentications against the first node (whose address, locked
// out, then refuses every admin sending through it), write the first
// node's address in the audit log, and refuse an admin who
// authenticates with a client certificate (mTLS), which never reaches
// it.
//
// So the first node says what it saw of its client in forwardedHeader:
// the client's address and the certificate chain its own TLS handshake
// verified (if any), for this method and path, at this time, signed with
// a key derived from the cluster secret, which only members hold. The
// second node's HTTP port (forwarder.accept, around everything it
// serves) checks the signature and the time, verifies the chain again
// against its own client CA (--tls-client-ca, as it is now, at this
// time: a CA one member still trusts and this one no longer does is
// refused here), and then serves the request as if from that client:
// its address for the lockouts, the rate limits and the audit, its
// certificate for authentication (httpapi.WithForwardedClient), not the
// TLS connection's, which is the first node's. A request whose assertion does not check is refused
// (401), never served as the first node's own. A chain of hops carries
// the first client along: the next node asserts what the accepted
// assertion said.
//
// Limits: the assertion is bound to the method, the path and query and
// the minute, not to the body or to the node it is sent to, so whoever
// reads the traffic between members may replay it within the minute;
// such a reader also reads the cluster secret, which member-to-member
// routes send as their bearer token (run members over HTTPS,
// --cluster-ca). That the client holds the certificate's key only the
// first node's handshake proved: a member (it holds the secret) could
// assert any certificate it has seen. The members' clocks must agree
// within forwardedMaxAge (leases do not need them to: they expire in
// Redis); a member whose clock is off logs why it refuses.

// forwardedHeader carries a forwarding node's signed assertion.
const forwardedHeader = "Ding-Forwarded"

// forwardedMaxAge is how far an assertion's time may be from the
// receiving node's clock: a request is sent on as soon as it is signed;
// members' clocks, kept by NTP, agree much better than this.
const forwardedMaxAge = time.Minute

// forwardedMaxLen bounds the header a node reads: a certificate of a few
// KiB, base64, and the rest.
const forwardedMaxLen = 32 << 10

// forwarded is the signed assertion.
type forwarded struct {
	V      int      `json:"v"`               // 1
	At     int64    `json:"at"`              // Unix milliseconds when signed
	Method string   `json:"method"`          // the request sent on
	Path   string   `json:"path"`            // its path and query, as sent
	From   string   `json:"from"`            // the client's address (host:port)
	Chain  [][]byte `json:"chain,omitempty"` // DER of the chain the first node verified, leaf first
}

// forwarder signs and checks assertions with one cluster's key.
type forwarder struct {
	key []byte
	now func() time.Time
	log *slog.Logger
}

// newForwarder derives the assertions' key from the cluster secret; nil
// without one (a node outside a cluster sends nothing on and accepts no
// assertion).
func newForwarder(secret string, log *slog.Logger) *forwarder {
	if secret == "" {
		return nil
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("ding forwarded request v1"))
	return &forwarder{key: m.Sum(nil), now: time.Now, log: log}
}

// sentPath is what an assertion names of a request: its path and query.
func sentPath(r *http.Request) string {
	if r.URL.RawQuery == "" {
		return r.URL.EscapedPath()
	}
	return r.URL.EscapedPath() + "?" + r.URL.RawQuery
}

// assert sets, on out (the request sent on, its URL final), the
// assertion of in's client: in's address and verified client
// certificate, which for a request this node accepted as forwarded are
// those its own assertion named.
func (f *forwarder) assert(out, in *http.Request) {
	if f == nil {
		return
	}
	a := forwarded{V: 1, At: f.now().UnixMilli(), Method: out.Method, Path: sentPath(out), From: in.RemoteAddr}
	for _, c := range httpapi.ClientChain(in) {
		a.Chain = append(a.Chain, c.Raw)
	}
	payload, _ := json.Marshal(a)
	out.Header.Set(forwardedHeader, base64.RawURLEncoding.EncodeToString(payload)+"."+base64.RawURLEncoding.EncodeToString(f.sign(payload)))
}

func (f *forwarder) sign(payload []byte) []byte {
	m := hmac.New(sha256.New, f.key)
	m.Write(payload)
	return m.Sum(nil)
}

var errForwarded = errors.New("node: the request's Ding-Forwarded assertion does not check")

// check returns the assertion r carries (vs, its header's values), if
// there is one, and its signature, method, path and time check. What
// only a member could have signed and still does not check (its clock a
// minute off this node's, another request's assertion) is logged;
// anything else is a client's, refused without a word in the log.
func (f *forwarder) check(r *http.Request, vs []string) (forwarded, error) {
	var a forwarded
	if len(vs) != 1 || len(vs[0]) > forwardedMaxLen {
		return a, errForwarded
	}
	p64, s64, ok := strings.Cut(vs[0], ".")
	payload, err1 := base64.RawURLEncoding.DecodeString(p64)
	sig, err2 := base64.RawURLEncoding.DecodeString(s64)
	if !ok || err1 != nil || err2 != nil || !hmac.Equal(sig, f.sign(payload)) || json.Unmarshal(payload, &a) != nil || a.V != 1 || a.From == "" {
		return a, errForwarded
	}
	if a.Method != r.Method || a.Path != sentPath(r) {
		f.log.Warn("refused a request another member sent on: its assertion names another request", "asserted", a.Method+" "+a.Path, "got", r.Method+" "+sentPath(r))
		return a, errForwarded
	}
	if age := f.now().Sub(time.UnixMilli(a.At)); age > forwardedMaxAge || age < -forwardedMaxAge {
		f.log.Warn("refused a request another member sent on: its time is too far from this node's clock (keep the members' clocks in sync)",
			"off_by", age.Round(time.Millisecond).String(), "allowed", forwardedMaxAge.String(), "from", r.RemoteAddr)
		return a, errForwarded
	}
	return a, nil
}

// verify verifies chain (DER, leaf first) for client authentication
// against roots, now, and returns it parsed.
func (f *forwarder) verify(chain [][]byte, roots func() *x509.CertPool) ([]*x509.Certificate, error) {
	var pool *x509.CertPool
	if roots != nil {
		pool = roots()
	}
	if pool == nil {
		return nil, errors.New("node: no client CA")
	}
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: f.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return certs, err
}

// accept wraps a node's HTTP handler: a request carrying an assertion is
// served as its client's (address, certificate), or refused if the
// assertion does not check or its certificate is not one clientCAs (the
// node's client CA now; nil: none) verifies; one without is served as it
// came.
func (f *forwarder) accept(next http.Handler, clientCAs func() *x509.CertPool) http.Handler {
	if f == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		vs, ok := r.Header[forwardedHeader]
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		a, err := f.check(r, vs)
		if err != nil {
			writeAPIErr(w, http.StatusUnauthorized, "UNAUTHENTICATED",
				"the request was sent on by a node whose assertion of its client does not check (another cluster secret, a clock a minute off, or a forgery)", "")
			return
		}
		var chain []*x509.Certificate
		if len(a.Chain) > 0 {
			if chain, err = f.verify(a.Chain, clientCAs); err != nil {
				writeAPIErr(w, http.StatusUnauthorized, "UNAUTHENTICATED",
					"the client certificate another node verified is not one this node's client CA verifies now (--tls-client-ca differs between the nodes, or the certificate expired)", "")
				return
			}
		}
		r = r.WithContext(httpapi.WithForwardedClient(r.Context(), chain))
		r.RemoteAddr = a.From
		r.Header.Del(forwardedHeader)
		next.ServeHTTP(w, r)
	})
}
