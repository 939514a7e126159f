package httpapi

import (
	"net/http"
	"strconv"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/ratelimit"
)

func (a *API) postDing(r *http.Request) (int, any, error) {
	var req struct {
		From        string   `json:"from"`
		To          []string `json:"to"`
		Text        string   `json:"text"`
		Policy      string   `json:"policy"`
		PolicyName  string   `json:"policy_name"`
		Choices     []string `json:"choices"`
		Critical    bool     `json:"critical"`
		ClientMsgID string   `json:"client_msg_id"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	if !a.cfg.Directory.Active(req.From) {
		return 0, nil, errf(http.StatusUnprocessableEntity, "UNKNOWN_SENDER", "no such user %q", req.From)
	}
	if err := a.senderInScope(r, req.From); err != nil {
		return 0, nil, err
	}
	if err := a.targetsInScope(r, req.To); err != nil {
		return 0, nil, err
	}
	if err := a.cfg.Limits.Check(ratelimit.Ding, req.From); err != nil {
		return 0, nil, err
	}
	res, err := a.cfg.Engine.Ding(r.Context(), engine.DingRequest{
		From: req.From, To: req.To, Text: req.Text, Policy: req.Policy, PolicyName: req.PolicyName,
		Choices: req.Choices, Critical: req.Critical, ClientID: req.ClientMsgID,
	})
	if err != nil {
		return 0, nil, err
	}
	refused := res.Refused
	if refused == nil {
		refused = []engine.Refusal{}
	}
	status := http.StatusCreated
	if res.Duplicate {
		status = http.StatusOK
	}
	return status, map[string]any{"id": res.ID.String(), "created": res.Created.UTC(), "duplicate": res.Duplicate, "refused": refused}, nil
}

func dingID(r *http.Request) (engine.ID, error) {
	id, err := engine.ParseID(r.PathValue("id"))
	if err != nil {
		return id, errf(http.StatusBadRequest, "BAD_REQUEST", "malformed DING id")
	}
	return id, nil
}

func (a *API) getDing(r *http.Request) (int, any, error) {
	id, err := dingID(r)
	if err != nil {
		return 0, nil, err
	}
	ds, err := a.cfg.Engine.DingStatus(id)
	if err != nil {
		return 0, nil, err
	}
	if err := a.senderInScope(r, ds.From); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, ds, nil
}

func (a *API) cancelDing(r *http.Request) (int, any, error) {
	id, err := dingID(r)
	if err != nil {
		return 0, nil, err
	}
	if p := principalOf(r); p.dept != "" {
		ds, err := a.cfg.Engine.DingStatus(id)
		if err != nil {
			return 0, nil, err
		}
		if err := a.senderInScope(r, ds.From); err != nil {
			return 0, nil, err
		}
	}
	stopped, err := a.cfg.Engine.CancelDing(r.Context(), id)
	if err != nil {
		return 0, nil, err
	}
	ds, err := a.cfg.Engine.DingStatus(id)
	if err != nil {
		return 0, nil, err
	}
	// 200 either way, so that a retried cancel is no error; "stopped"
	// says what this request did, and a note says when it did nothing.
	out := cancelJSON{DingStatus: ds, Stopped: stopped}
	if stopped == 0 {
		out.Note = "nothing to cancel: every recipient had already ended (confirmed, read, refused, removed or cancelled before)"
	}
	return http.StatusOK, out, nil
}

// cancelJSON answers POST /v1/dings/{id}/cancel: the DING's status and
// how many recipients this request stopped.
type cancelJSON struct {
	*engine.DingStatus
	Stopped int    `json:"stopped"`
	Note    string `json:"note,omitempty"`
}

func (a *API) listDings(r *http.Request) (int, any, error) {
	q := r.URL.Query()
	var after engine.ID
	if s := q.Get("after"); s != "" {
		var err error
		if after, err = engine.ParseID(s); err != nil {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "malformed after id")
		}
	}
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "limit must be 1 to 1000")
		}
		limit = n
	}
	if p := principalOf(r); p.dept != "" {
		if q.Get("from") == "" {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "admin %q (role %s) lists the DINGs of one sender of department %s at a time: give from", p.name, p.role.Name, p.dept)
		}
		if err := a.senderInScope(r, q.Get("from")); err != nil {
			return 0, nil, err
		}
	}
	ds, err := a.cfg.Engine.Dings(q.Get("from"), after, limit)
	if err != nil {
		return 0, nil, err
	}
	if ds == nil {
		ds = []engine.DingSummary{}
	}
	return http.StatusOK, map[string]any{"dings": ds}, nil
}

func (a *API) putPolicy(r *http.Request) (int, any, error) {
	var req struct {
		Policy string `json:"policy"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	p, err := engine.ParsePolicy(req.Policy)
	if err != nil {
		return 0, nil, err
	}
	name := r.PathValue("name")
	if err := a.cfg.Engine.SetPolicy(r.Context(), name, p); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"name": name, "policy": p.String()}, nil
}

func (a *API) listPolicies(r *http.Request) (int, any, error) {
	ps, err := a.cfg.Engine.Policies()
	if err != nil {
		return 0, nil, err
	}
	out := map[string]string{}
	for name, p := range ps {
		out[name] = p.String()
	}
	// "builtin_default" is used when no policy named "default" is stored.
	return http.StatusOK, map[string]any{"policies": out, "builtin_default": engine.DefaultPolicy.String()}, nil
}
