package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/dingmq/ding/channels/twilio"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
)

// Twilio's callbacks in a cluster of partitions: Twilio posts a status,
// a keypress or an inbound SMS to the org's public URL, which reaches
// one node, while the DING it concerns lives in a partition that may be
// served by another. The node asks the partitions it serves first; when
// none knows the call, message or phone (engine.ErrNotFound), it asks
// the other nodes over the cluster's HTTP (POST /cluster/reports, with
// the cluster secret), each of which asks only its own partitions. The
// signature was checked by the node Twilio reached.

// reportsPath is the route a node answers other nodes' reports on.
const reportsPath = "POST /cluster/reports"

// report is one of Twilio's callbacks, between nodes.
type report struct {
	Kind   string               `json:"kind"` // status, digits, inbound
	Ref    string               `json:"ref,omitempty"`
	Event  engine.ProviderEvent `json:"event,omitempty"`
	Detail string               `json:"detail,omitempty"`
	Digits string               `json:"digits,omitempty"`
	From   string               `json:"from,omitempty"`
	Body   string               `json:"body,omitempty"`
}

func (r report) apply(ctx context.Context, to twilio.Reports) error {
	switch r.Kind {
	case "status":
		return to.ProviderStatus(ctx, r.Ref, r.Event, r.Detail)
	case "digits":
		return to.ProviderDigits(ctx, r.Ref, r.Digits)
	case "inbound":
		return to.InboundSMS(ctx, r.From, r.Body)
	}
	return fmt.Errorf("%w: kind %q", errBadReport, r.Kind)
}

// errBadReport is a report of no known kind.
var errBadReport = errors.New("node: bad report")

// clusterReports is twilio.Reports for a cluster node of partitions: its
// own partitions first, then the other nodes'.
type clusterReports struct {
	local  twilio.Reports
	peers  func() []string // the other nodes' HTTP base URLs
	client *http.Client
	secret string
}

func (c *clusterReports) ProviderStatus(ctx context.Context, ref string, ev engine.ProviderEvent, detail string) error {
	return c.send(ctx, report{Kind: "status", Ref: ref, Event: ev, Detail: detail})
}

func (c *clusterReports) ProviderDigits(ctx context.Context, ref, digits string) error {
	return c.send(ctx, report{Kind: "digits", Ref: ref, Digits: digits})
}

func (c *clusterReports) InboundSMS(ctx context.Context, from, body string) error {
	return c.send(ctx, report{Kind: "inbound", From: from, Body: body})
}

func (c *clusterReports) send(ctx context.Context, r report) error {
	err := r.apply(ctx, c.local)
	if !errors.Is(err, engine.ErrNotFound) {
		return err
	}
	b, _ := json.Marshal(r)
	for _, base := range c.peers() {
		found, perr := c.ask(ctx, base, b)
		if perr != nil {
			err = perr // a node that could not answer: Twilio retries a 500
			continue
		}
		if found {
			return nil
		}
	}
	return err
}

// ask posts b to the node at base: found reports that one of its
// partitions knew it (and applied it).
func (c *clusterReports) ask(ctx context.Context, base string, b []byte) (found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(base, "/")+"/cluster/reports", bytes.NewReader(b))
	if err != nil {
		return false, err
	}
	req.Header.Set("Authorization", "Bearer "+c.secret)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return false, fmt.Errorf("node: asking another node about a Twilio callback: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	switch resp.StatusCode {
	case http.StatusNoContent:
		return true, nil
	case http.StatusNotFound:
		return false, nil
	}
	return false, fmt.Errorf("node: another node answered a Twilio callback with %s", resp.Status)
}

// reportsHandler serves POST /cluster/reports: the report applied to the
// partitions this node serves (local), 204 when one knew it, 404 when
// none did.
func reportsHandler(secret string, local func() twilio.Reports) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !cluster.Authorized(r, secret) {
			http.Error(w, "cluster: bad or missing cluster secret", http.StatusUnauthorized)
			return
		}
		var rep report
		if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&rep); err != nil {
			http.Error(w, "cluster: a report is a JSON object", http.StatusBadRequest)
			return
		}
		to := local()
		if to == nil {
			http.Error(w, "cluster: starting", http.StatusServiceUnavailable)
			return
		}
		switch err := rep.apply(r.Context(), to); {
		case err == nil:
			w.WriteHeader(http.StatusNoContent)
		case errors.Is(err, engine.ErrNotFound):
			http.Error(w, "cluster: not known here", http.StatusNotFound)
		case errors.Is(err, errBadReport):
			http.Error(w, err.Error(), http.StatusBadRequest)
		default:
			http.Error(w, "cluster: applying the report failed", http.StatusInternalServerError)
		}
	})
}
