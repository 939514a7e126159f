package httpapi

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/dingmq/ding/engine"
)

// announceRoutes registers the announcement and statistics routes:
//
//	POST /v1/announcements              {"from","to":"all"|"dept:ID"|"group:ID"|[...],"text","confirm","client_msg_id"}
//	                                    -> 201 {"id","created","duplicate"} once it and its audience are durable
//	GET  /v1/announcements/{id}/stats   ?lists=1 (unread, unconfirmed) &format=csv (one row per recipient; &only=unread|unconfirmed)
//	                                    -> {"total","pending","sent","delivered","read","confirmed",...}: total =
//	                                    pending (not yet in their stream) + sent; the counts are cumulative
//	                                    (delivered includes read, read includes confirmed), as in receipts
//	GET  /v1/messages/{id}/stats        the same for any message (a group message: who has not read)
//	POST /v1/announcements/{id}/reding  {"policy"|"policy_name","unread":false,"from"} -> DINGs to the unconfirmed (or unread);
//	                                    each DING shows its recipients the original's audience as its "to"
//	                                    (["all"], ["dept:ID"]), never who else has not confirmed; GET
//	                                    /v1/dings/{id} lists them for the admins.
//	                                    409 NO_FORWARD for a secret message (its text would leave the chat)
func (a *API) announceRoutes() {
	a.admin("POST /v1/announcements", PermSend, a.announce)
	a.adminRaw("GET /v1/announcements/{id}/stats", PermStatus, a.stats)
	a.adminRaw("GET /v1/messages/{id}/stats", PermStatus, a.stats)
	a.admin("POST /v1/announcements/{id}/reding", PermSend, a.reding)
	a.admin("GET /v1/stats", PermStats, a.adminStats)
}

func (a *API) announce(r *http.Request) (int, any, error) {
	var req struct {
		From        string          `json:"from"`
		To          json.RawMessage `json:"to"`
		Text        string          `json:"text"`
		Confirm     bool            `json:"confirm"`
		ClientMsgID string          `json:"client_msg_id"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	var to []string
	var one string
	if json.Unmarshal(req.To, &one) == nil {
		to = []string{one}
	} else if err := json.Unmarshal(req.To, &to); err != nil {
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", `to must be "all", "dept:ID", "group:ID" or a list of them`)
	}
	for _, t := range to {
		if t != "all" && !strings.HasPrefix(t, "dept:") && !strings.HasPrefix(t, "group:") {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST",
				`announcements go to groups of people: "all", "dept:ID" or "group:ID"; %q is none of them (to reach one user, send a message)`, t)
		}
	}
	if p := principalOf(r); p.dept != "" {
		// A department's announcement comes from one of its users: one
		// "from the admins" would be the whole company's.
		if req.From == "" {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "admin %q (role %s) announces as a user of department %s: give from", p.name, p.role.Name, p.dept)
		}
		if err := a.senderInScope(r, req.From); err != nil {
			return 0, nil, err
		}
		if err := a.targetsInScope(r, to); err != nil {
			return 0, nil, err
		}
	}
	if req.From == "" || (req.From == adminSender && !a.cfg.Directory.Active(adminSender)) {
		req.From = adminSender // an announcement from the admins, not a user
	} else if !a.cfg.Directory.Active(req.From) {
		return 0, nil, errf(http.StatusUnprocessableEntity, "UNKNOWN_SENDER", "no such user %q", req.From)
	}
	res, err := a.cfg.Engine.Announce(r.Context(), engine.Announcement{
		From: req.From, To: to, Text: req.Text, Confirm: req.Confirm, ClientID: req.ClientMsgID,
	})
	if err != nil {
		return 0, nil, err
	}
	status := http.StatusCreated
	if res.Duplicate {
		status = http.StatusOK
	}
	return status, map[string]any{"id": res.ID.String(), "created": res.Created.UTC(), "duplicate": res.Duplicate}, nil
}

func (a *API) stats(w http.ResponseWriter, r *http.Request) error {
	id, err := engine.ParseID(r.PathValue("id"))
	if err != nil {
		return errf(http.StatusBadRequest, "BAD_REQUEST", "malformed message id")
	}
	if err := a.messageInScope(r, id); err != nil {
		return err
	}
	q := r.URL.Query()
	if q.Get("format") != "csv" {
		st, err := a.cfg.Engine.Stats(id, q.Get("lists") == "1")
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "application/json")
		return json.NewEncoder(w).Encode(normalize(st))
	}
	only := q.Get("only")
	if only != "" && only != "unread" && only != "unconfirmed" {
		return errf(http.StatusBadRequest, "BAD_REQUEST", "only must be unread or unconfirmed")
	}
	rs, err := a.cfg.Engine.Receipts(id)
	if err != nil {
		return err
	}
	st, err := a.cfg.Engine.Stats(id, true) // for recipients still pending fanout
	if err != nil {
		return err
	}
	have := map[string]bool{}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", id.String()+".csv"))
	cw := csv.NewWriter(w)
	cw.Write([]string{"user", "state", "delivered", "read", "confirmed"})
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return apiTime(t).Format(time.RFC3339Nano)
	}
	for _, rc := range rs {
		have[rc.User] = true
		switch {
		case only == "unread" && rc.State >= engine.StateRead,
			only == "unconfirmed" && rc.State == engine.StateConfirmed:
			continue
		}
		cw.Write([]string{rc.User, rc.State.String(), ts(rc.Delivered), ts(rc.Read), ts(rc.Confirmed)})
	}
	for _, u := range st.Unread {
		if !have[u] { // not yet in their stream
			cw.Write([]string{u, "pending", "", "", ""})
		}
	}
	cw.Flush()
	return cw.Error()
}

func (a *API) reding(r *http.Request) (int, any, error) {
	var req struct {
		Policy     string `json:"policy"`
		PolicyName string `json:"policy_name"`
		Unread     bool   `json:"unread"`
		From       string `json:"from"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	id, err := engine.ParseID(r.PathValue("id"))
	if err != nil {
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "malformed message id")
	}
	m, err := a.cfg.Engine.Message(id)
	if err != nil {
		return 0, nil, err
	}
	if p := principalOf(r); p.dept != "" {
		if err := a.senderInScope(r, m.From); err != nil {
			return 0, nil, err
		}
		if err := a.targetsInScope(r, m.To); err != nil {
			return 0, nil, err
		}
		if req.From != "" {
			if err := a.senderInScope(r, req.From); err != nil {
				return 0, nil, err
			}
		}
	}
	if m.Chat != (engine.ID{}) {
		// A re-DING carries the message's text: a secret message's body
		// must never leave its chat (nor be readable by an admin).
		return 0, nil, fmt.Errorf("%w: a secret message cannot be re-DINGed", engine.ErrNoForward)
	}
	st, err := a.cfg.Engine.Stats(id, true)
	if err != nil {
		return 0, nil, err
	}
	who := st.Unconfirmed
	if req.Unread || !st.Confirm {
		who = st.Unread
	}
	if req.From == "" {
		req.From = m.From
	}
	// Its sender is not DINGed, in the audience or not; nor, for a
	// dept-admin, anyone who has left its subtree since.
	dept := principalOf(r).dept
	who = slices.DeleteFunc(slices.Clone(who), func(u string) bool {
		return u == req.From || (dept != "" && !a.cfg.Directory.UserWithin(u, dept))
	})
	out := map[string]any{"recipients": len(who), "dings": []string{}, "refused": []engine.Refusal{}}
	var ids []string
	var refused []engine.Refusal
	for chunk := range slices.Chunk(who, 1000) {
		// Each recipient's DING shows the original's audience ("all",
		// "dept:ID", or the message's own recipients), never chunk: the
		// list of who has not confirmed is the admins' to see, in the
		// DING's status, not every colleague's.
		res, err := a.cfg.Engine.Ding(r.Context(), engine.DingRequest{
			From: req.From, To: chunk, Audience: m.To, Text: string(m.Body), Policy: req.Policy, PolicyName: req.PolicyName,
		})
		if err != nil {
			if len(ids) == 0 {
				return 0, nil, err
			}
			out["error"] = err.Error() // some were sent: say which, and why the rest were not
			break
		}
		ids = append(ids, res.ID.String())
		refused = append(refused, res.Refused...)
	}
	if ids != nil {
		out["dings"] = ids
	}
	if refused != nil {
		out["refused"] = refused
	}
	return http.StatusOK, out, nil
}

// userDevices lists a user's devices: every device that has acknowledged
// part of the stream, with its cursor, and whether it is connected now.
func (a *API) userDevices(r *http.Request) (int, any, error) {
	id := r.PathValue("id")
	if err := a.userInScope(r, id); err != nil {
		return 0, nil, err
	}
	if _, ok := a.cfg.Directory.User(id); !ok {
		return 0, nil, errf(http.StatusNotFound, "NOT_FOUND", "no such user")
	}
	ds, err := a.cfg.Engine.Devices(id)
	if err != nil {
		return 0, nil, err
	}
	head, err := a.cfg.Engine.Head(id)
	if err != nil {
		return 0, nil, err
	}
	type dev struct {
		engine.DeviceCursor
		Online bool `json:"online"`
	}
	out := []dev{}
	seen := map[string]bool{}
	var online []string
	if a.cfg.Presence != nil {
		online = a.cfg.Presence.Devices(id)
	}
	for _, d := range ds {
		seen[d.Device] = true
		out = append(out, dev{d, slices.Contains(online, d.Device)})
	}
	for _, o := range online {
		if !seen[o] { // connected, nothing acknowledged yet
			out = append(out, dev{engine.DeviceCursor{Device: o}, true})
		}
	}
	return http.StatusOK, map[string]any{"user": id, "head": head, "devices": out}, nil
}
