package httpapi

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dingmq/ding/engine"
)

// adminStats answers GET /v1/stats?from=YYYY-MM-DD&to=YYYY-MM-DD[&dept=a,b][&top=N]:
// per department, messages sent/delivered/read, DINGs sent and how their
// recipients' escalations ended, time to read and to confirm (median,
// p90), SMS and calls against the budget, announcements with their read
// ratios, and who most often leaves DINGs unanswered. Days are UTC; both
// ends are included; the default range is the last 30 days.
func (a *API) adminStats(r *http.Request) (int, any, error) {
	q := r.URL.Query()
	today := time.Now().UTC().Truncate(24 * time.Hour) // days, as asked for: "from" and "to" are 00:00Z
	to, from := today, today.AddDate(0, 0, -29)
	var err error
	if s := q.Get("to"); s != "" {
		if to, err = time.Parse(time.DateOnly, s); err != nil {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "to must be YYYY-MM-DD")
		}
		if q.Get("from") == "" {
			from = to.AddDate(0, 0, -29)
		}
	}
	if s := q.Get("from"); s != "" {
		if from, err = time.Parse(time.DateOnly, s); err != nil {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "from must be YYYY-MM-DD")
		}
	}
	if to.Before(from) || to.Sub(from) > 3*366*24*time.Hour {
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "the range must run forward and span at most 3 years")
	}
	sq := engine.StatsQuery{From: from, To: to}
	if s := q.Get("dept"); s != "" {
		sq.Departments = strings.Split(s, ",")
	}
	if s := q.Get("top"); s != "" {
		if sq.Top, err = strconv.Atoi(s); err != nil || sq.Top < 1 || sq.Top > 1000 {
			return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "top must be 1 to 1000")
		}
	}
	st, err := a.cfg.Engine.AdminStats(sq)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, st, nil
}
