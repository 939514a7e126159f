package relay

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/dingmq/ding/engine"
)

// Relay between nodes (stage 5b of cluster/PARTITIONS.md): an origin's
// pump posts each batch to the node that owns the destination partition,
//
//	POST /cluster/relay?from=F&to=T
//	Authorization: Bearer <cluster secret>
//	Content-Type: application/x-ding-relay
//	<engine.EncodeRelayBatch, secret messages' keys sealed with the cluster secret>
//
// and that node's Handler applies it to its engine for T, which answers
// only once the batch is durable there (with a replicated store: held by
// T's standby too). The answer is JSON:
//
//	200 {"through": N}                         applied (or held already) through seq N
//	400 {"code": "bad_relay", ...}             a malformed frame or batch: not retried as is
//	401                                        no or a wrong cluster secret
//	409 {"code": "wrong_partition", "owner"}   this node does not own T (owner: who does, if known)
//	409 {"code": "gap", "through": N}          records before the batch are missing: resend from the oldest
//	413                                        the frame is over the limit
//	503 {"code": "unavailable", ...}           the engine refused for now (closing, disk full, a failed store)
//
// HTTPDest is the pump's side: a Dest that makes these requests and turns
// the answers back into the engine's errors (ErrWrongPartition,
// ErrRelayGap, ErrBadRelay), so the pump treats a partition on another
// node as it treats one in process.

// RelayPath is the route the Handler serves.
const RelayPath = "/cluster/relay"

// contentType names the frame's encoding.
const contentType = "application/x-ding-relay"

// DefaultMaxFrame is the largest frame the Handler reads when
// HandlerConfig.MaxFrame is zero: a batch of 256 records of the largest
// message bodies, with room to spare.
const DefaultMaxFrame = 128 << 20

// HandlerConfig says what a node's relay Handler applies batches to.
type HandlerConfig struct {
	// Secret is the cluster's shared secret; requests must carry it.
	// Required.
	Secret string
	// Sealer opens secret messages' keys (cluster.KeyCodec from the same
	// secret). Required.
	Sealer engine.KeySealer
	// Local returns the destination for partition to while this node
	// owns it (its engine), and false otherwise. Required.
	Local func(to uint32) (Dest, bool)
	// Owner names the node that owns partition to, if known: a 409
	// wrong_partition answer says it, for the logs. Optional.
	Owner func(to uint32) string
	// MaxFrame bounds a request body; zero means DefaultMaxFrame.
	MaxFrame int64
}

// answer is the JSON body of every answer but 401 and 413.
type answer struct {
	Through uint64 `json:"through,omitempty"`
	Code    string `json:"code,omitempty"`
	Error   string `json:"error,omitempty"`
	Owner   string `json:"owner,omitempty"`
}

// Handler serves RelayPath: it applies the batches other nodes' pumps
// post to the partitions this node owns.
func Handler(cfg HandlerConfig) (http.Handler, error) {
	if cfg.Secret == "" || cfg.Sealer == nil || cfg.Local == nil {
		return nil, errors.New("relay: a handler needs the cluster secret, its key sealer and the local partitions")
	}
	if cfg.MaxFrame == 0 {
		cfg.MaxFrame = DefaultMaxFrame
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "relay: POST only", http.StatusMethodNotAllowed)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(cfg.Secret)) != 1 {
			http.Error(w, "relay: bad or missing cluster secret", http.StatusUnauthorized)
			return
		}
		reply := func(status int, a answer) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			json.NewEncoder(w).Encode(a)
		}
		from, err1 := strconv.ParseUint(r.URL.Query().Get("from"), 10, 32)
		to, err2 := strconv.ParseUint(r.URL.Query().Get("to"), 10, 32)
		if err1 != nil || err2 != nil {
			reply(http.StatusBadRequest, answer{Code: "bad_relay", Error: "relay: from and to must name partitions"})
			return
		}
		dest, ok := cfg.Local(uint32(to))
		if !ok {
			a := answer{Code: "wrong_partition", Error: fmt.Sprintf("relay: this node does not own partition %d", to)}
			if cfg.Owner != nil {
				a.Owner = cfg.Owner(uint32(to))
			}
			reply(http.StatusConflict, a)
			return
		}
		data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, cfg.MaxFrame))
		if err != nil {
			if _, big := errors.AsType[*http.MaxBytesError](err); big {
				http.Error(w, "relay: frame over the limit", http.StatusRequestEntityTooLarge)
				return
			}
			reply(http.StatusBadRequest, answer{Code: "bad_relay", Error: "relay: reading the frame: " + err.Error()})
			return
		}
		b, err := engine.DecodeRelayBatch(data, cfg.Sealer)
		if err == nil && (uint64(b.From) != from || uint64(b.To) != to) {
			err = fmt.Errorf("%w: the frame is %d->%d, the request %d->%d", engine.ErrBadRelay, b.From, b.To, from, to)
		}
		if err != nil {
			reply(http.StatusBadRequest, answer{Code: "bad_relay", Error: err.Error()})
			return
		}
		through, err := dest.ApplyRelay(r.Context(), b)
		switch {
		case err == nil:
			reply(http.StatusOK, answer{Through: through})
		case errors.Is(err, engine.ErrRelayGap):
			reply(http.StatusConflict, answer{Code: "gap", Through: through, Error: err.Error()})
		case errors.Is(err, engine.ErrWrongPartition):
			reply(http.StatusConflict, answer{Code: "wrong_partition", Error: err.Error()})
		case errors.Is(err, engine.ErrBadRelay):
			reply(http.StatusBadRequest, answer{Code: "bad_relay", Error: err.Error()})
		default:
			reply(http.StatusServiceUnavailable, answer{Code: "unavailable", Error: err.Error()})
		}
	}), nil
}

// HTTPDest is a Dest on another node: ApplyRelay posts the batch to the
// node that owns partition To (see Handler).
type HTTPDest struct {
	// To is the destination partition.
	To uint32
	// Owner returns the base URL (scheme://host:port) of the node that
	// owns To now; it is asked before every request, so a move of the
	// partition is followed. An error fails the step (the pump retries).
	Owner func(ctx context.Context, to uint32) (string, error)
	// Client makes the requests (TLS between nodes is its transport's);
	// nil means http.DefaultClient.
	Client *http.Client
	// Secret is the cluster's shared secret. Required.
	Secret string
	// Sealer seals secret messages' keys (cluster.KeyCodec). Required.
	Sealer engine.KeySealer
	// Timeout bounds one request; zero means 30 s.
	Timeout time.Duration
}

var _ Dest = (*HTTPDest)(nil)

// ApplyRelay implements Dest.
func (d *HTTPDest) ApplyRelay(ctx context.Context, b engine.RelayBatch) (uint64, error) {
	if b.To != d.To {
		return 0, fmt.Errorf("%w: a batch for partition %d given to the destination of %d", engine.ErrBadRelay, b.To, d.To)
	}
	frame, err := engine.EncodeRelayBatch(b, d.Sealer)
	if err != nil {
		return 0, err
	}
	base, err := d.Owner(ctx, d.To)
	if err != nil {
		return 0, fmt.Errorf("relay: the owner of partition %d: %w", d.To, err)
	}
	timeout := d.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	q := url.Values{"from": {strconv.FormatUint(uint64(b.From), 10)}, "to": {strconv.FormatUint(uint64(b.To), 10)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(base, "/")+RelayPath+"?"+q.Encode(), bytes.NewReader(frame))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+d.Secret)
	req.Header.Set("Content-Type", contentType)
	client := d.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("relay: posting to %s: %w", base, err)
	}
	defer resp.Body.Close()
	var a answer
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err == nil && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		err = json.Unmarshal(body, &a)
	}
	switch {
	case resp.StatusCode == http.StatusOK && err == nil:
		return a.Through, nil
	case a.Code == "gap":
		return a.Through, fmt.Errorf("%w: %s (at %s)", engine.ErrRelayGap, a.Error, base)
	case a.Code == "wrong_partition":
		return 0, fmt.Errorf("%w: %s (asked %s; owner %q)", engine.ErrWrongPartition, a.Error, base, a.Owner)
	case a.Code == "bad_relay":
		return 0, fmt.Errorf("%w: %s (at %s)", engine.ErrBadRelay, a.Error, base)
	case resp.StatusCode == http.StatusUnauthorized:
		return 0, fmt.Errorf("relay: %s refused the cluster secret", base)
	}
	return 0, engine.NewError(engine.CodeUnavailable, fmt.Sprintf("relay: %s answered %s: %s", base, resp.Status, strings.TrimSpace(a.Error)))
}
