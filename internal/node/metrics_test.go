package node_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/twilio/twiliotest"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// The monitoring files these tests keep honest, relative to this package.
const (
	catalogueFile = "../../deploy/METRICS.md"
	alertsFile    = "../../deploy/prometheus/alerts.yml"
	alertTests    = "../../deploy/prometheus/alerts_test.yml"
	promConfig    = "../../deploy/prometheus/prometheus.yml"
	dashboardFile = "../../deploy/grafana/ding.json"
)

// TestMetricsScrape runs a node through a message, a read, a DING that
// escalates to SMS through the fake Twilio and is confirmed by SMS reply,
// a DING read in the app, a refused DING, webhooks (one forged), an
// announcement, socket errors and a secret chat (a refused forward, an
// offboarding burn), then scrapes /metrics and checks it
// against promtool's linter and against deploy/METRICS.md both ways: every
// catalogued metric is exposed with the documented type, labels and label
// values, and every ding_* family exposed is catalogued. The dashboard and
// the alert rules may only use metrics that exist.
func TestMetricsScrape(t *testing.T) {
	scrape := exerciseAndScrape(t)
	fams, err := parseExposition(scrape)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	cat, err := parseCatalogue(catalogueFile)
	if err != nil {
		t.Fatal(err)
	}

	for _, m := range cat {
		f, ok := fams[m.name]
		if m.clusterOnly {
			if ok {
				t.Errorf("%s is cluster-only in %s (line %d) but a single node serves it", m.name, catalogueFile, m.line)
			}
			continue // TestClusterMetricsScrape checks it
		}
		if m.clusterPartitionsOnly {
			if ok {
				t.Errorf("%s is for a cluster of partitions only in %s (line %d) but a single node serves it", m.name, catalogueFile, m.line)
			}
			continue // TestClusterTokenOfAUserJustCreatedElsewhere checks it
		}
		if m.partitionsOnly {
			if ok {
				t.Errorf("%s is partitions-only in %s (line %d) but a node of one partition serves it", m.name, catalogueFile, m.line)
			}
			continue // TestPartitionsMetrics checks it
		}
		if !ok {
			t.Errorf("%s is in %s (line %d) but not in /metrics%s", m.name, catalogueFile, m.line, wiringHint(m.name))
			continue
		}
		if f.typ != m.typ {
			t.Errorf("%s: catalogue says %s, /metrics says %s", m.name, m.typ, f.typ)
		}
		if got, want := sortedKeys(f.labels), sortedKeys(m.labels); !slices.Equal(got, want) {
			t.Errorf("%s: labels in /metrics %v, in the catalogue %v", m.name, got, want)
		}
		for l, allowed := range m.labels {
			if allowed == nil {
				continue // documented in prose: bounded but not enumerated
			}
			for v := range f.labels[l] {
				if !slices.Contains(allowed, v) {
					t.Errorf("%s{%s=%q}: value not in the catalogue's set %v", m.name, l, v, allowed)
				}
			}
		}
	}
	for name := range fams {
		if strings.HasPrefix(name, "ding_") && !slices.ContainsFunc(cat, func(m catEntry) bool { return m.name == name }) {
			t.Errorf("/metrics exposes %s, which %s does not describe", name, catalogueFile)
		}
	}

	// The dashboard and the rules name only metrics that exist.
	for _, file := range []string{dashboardFile, alertsFile} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range metricRefs(string(b)) {
			if slices.ContainsFunc(cat, func(m catEntry) bool {
				return (m.clusterOnly || m.partitionsOnly || m.clusterPartitionsOnly) && strings.HasPrefix(name, m.name)
			}) {
				continue // a cluster member's (TestClusterMetricsScrape) or a node of partitions' (TestPartitionsMetrics)
			}
			if _, ok := fams[familyOf(name, fams)]; !ok {
				t.Errorf("%s uses %s, which /metrics does not expose", file, name)
			}
		}
	}

	t.Run("promtool check metrics", func(t *testing.T) {
		cmd := exec.Command(promtoolPath(t), "check", "metrics")
		cmd.Stdin = bytes.NewReader(scrape)
		out, err := cmd.CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	})
}

// TestAlertRules checks the Prometheus config and alert rules with
// promtool and runs the rules' unit tests (deploy/prometheus/alerts_test.yml);
// it checks the Grafana dashboard's shape, and that promtool parses each of
// its queries.
func TestAlertRules(t *testing.T) {
	queries, err := dashboardQueries(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	// The dashboard's queries, with Grafana's variables filled in, as
	// recording rules.
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	grafanaVars := strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m", "$instance", ".*")
	for i, q := range queries {
		fmt.Fprintf(&rules, "      - record: dashboard:query_%d\n        expr: %q\n", i, grafanaVars.Replace(q))
	}
	dashRules := filepath.Join(t.TempDir(), "dashboard_rules.yml")
	if err := os.WriteFile(dashRules, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"check rules", []string{"check", "rules", alertsFile}},
		{"check config", []string{"check", "config", promConfig}},
		{"test rules", []string{"test", "rules", alertTests}},
		{"dashboard queries", []string{"check", "rules", dashRules}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := exec.Command(promtoolPath(t), tc.args...).CombinedOutput()
			if err != nil {
				t.Errorf("promtool %s: %v\n%s", strings.Join(tc.args, " "), err, out)
			}
		})
	}
}

// dashboardQueries checks that the dashboard is importable with its data
// source as the ${DS_PROMETHEUS} input (unique panel ids, every panel and
// query on that data source) and returns its PromQL queries.
func dashboardQueries(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	type datasource struct{ Type, UID string }
	var d struct {
		Inputs []struct{ Name, Type, PluginID string } `json:"__inputs"`
		UID    string
		Title  string
		Panels []struct {
			ID         int
			Type       string
			Title      string
			Datasource *datasource
			Targets    []struct {
				Datasource *datasource
				Expr       string
			}
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(d.Inputs) != 1 || d.Inputs[0].Name != "DS_PROMETHEUS" || d.Inputs[0].PluginID != "prometheus" || d.UID == "" || d.Title == "" {
		return nil, fmt.Errorf("%s: want a uid, a title and one input DS_PROMETHEUS of plugin prometheus", path)
	}
	want := datasource{Type: "prometheus", UID: "${DS_PROMETHEUS}"}
	ids := map[int]bool{}
	var queries []string
	for _, p := range d.Panels {
		if ids[p.ID] {
			return nil, fmt.Errorf("%s: panel id %d used twice", path, p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || *p.Datasource != want || len(p.Targets) == 0 {
			return nil, fmt.Errorf("%s: panel %q: want data source %v and a query", path, p.Title, want)
		}
		for _, tg := range p.Targets {
			if tg.Datasource == nil || *tg.Datasource != want || tg.Expr == "" {
				return nil, fmt.Errorf("%s: panel %q: a query without data source %v or expression", path, p.Title, want)
			}
			queries = append(queries, tg.Expr)
		}
	}
	return queries, nil
}

// promtoolPath finds promtool in PATH or in the repository's bin/ (where
// `make test` puts it). Missing, it fails the test, unless
// DING_SKIP_PROMTOOL=1, when it skips the test, saying so.
func promtoolPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("promtool"); err == nil {
		return p
	}
	if p, err := filepath.Abs("../../bin/promtool"); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("DING_SKIP_PROMTOOL") == "1" {
		t.Skip("promtool not found; DING_SKIP_PROMTOOL=1: skipped the promtool checks")
	}
	t.Fatal("promtool not found in PATH or bin/: `make test` installs it (from Debian's prometheus package); " +
		"set DING_SKIP_PROMTOOL=1 to skip the promtool checks")
	return ""
}

// wiringHint explains the one catalogued family that a node only exposes
// once node.Start registers it.
func wiringHint(name string) string {
	if strings.HasPrefix(name, "ding_store_disk_") {
		return ": node.Start must call registerDiskMetrics(reg, cfg.DataDir) (internal/node/disk.go)"
	}
	return ""
}

// exerciseAndScrape drives a node so that every ding_* family has a series,
// and returns its /metrics.
func exerciseAndScrape(t *testing.T) []byte {
	d := startDingNode(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// An outbound webhook subscription: its backlog gauge and deliveries.
	hooked := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer hooked.Close()
	if code, out, _ := d.api(t, "POST", "/v1/webhooks", map[string]any{"url": hooked.URL, "events": []string{"*"}}); code != http.StatusCreated {
		t.Fatalf("POST /v1/webhooks: %d %v", code, out)
	}
	if _, err := d.n.Directory().PutUser(fanout.User{ID: "cy", Name: "Cy", QuietHours: "09:00-17:00"}); err != nil {
		t.Fatal(err)
	}
	ana := nodetest.Dial(t, d.n, "ana", "phone", nil)
	bo := nodetest.Dial(t, d.n, "bo", "phone", nil)

	// A message over the socket, delivered, acked and read; one over the API.
	res, err := ana.Send(ctx, []string{"bo"}, []byte("lunch?"))
	if err != nil {
		t.Fatal(err)
	}
	if m := firstDeliver(t, bo, res.ID); m == nil {
		t.FailNow()
	}
	if err := bo.Read(ctx, res.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := ana.Receipts(ctx, res.ID); err != nil {
		t.Fatal(err)
	}
	var ce *client.Error
	if _, err := ana.Send(ctx, []string{"zed"}, []byte("x")); !errors.As(err, &ce) || ce.Code != pb.Code_UNKNOWN_RECIPIENT {
		t.Fatalf("send to an unknown user: %v", err)
	}
	if code, out, _ := d.api(t, "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "and coffee"}); code != http.StatusCreated && code != http.StatusOK {
		t.Fatalf("POST /v1/messages: %d %v", code, out)
	}
	// A bad token fails the handshake.
	if c, err := client.Dial(ctx, client.Config{Addr: d.n.SocketAddr(), Token: "not-a-token", Device: "phone"}); err == nil {
		c.Close()
		t.Fatal("a bad token was accepted")
	}

	// A DING escalated to SMS a minute later (a timer fires), delivered,
	// and confirmed by an SMS reply.
	sms := d.ding(t, map[string]any{"to": []string{"bo"}, "text": "disk full on db1", "policy": "sms@1m"})
	d.clock.Advance(time.Minute)
	req := d.waitRequests(t, "sms", 1)[0]
	if code, _, err := d.twilio.SMSStatus(ctx, req.SID, "delivered", ""); err != nil || code != 200 {
		t.Fatalf("sms status webhook: %d %v", code, err)
	}
	d.waitEvent(t, sms, 0, "sms_delivered")
	if code, _, err := d.twilio.Reply(ctx, d.public+"/twilio/sms/inbound", boPhone, fromNum, "OK"); err != nil || code != 200 {
		t.Fatalf("sms reply: %d %v", code, err)
	}
	d.waitEvent(t, sms, 0, "confirmed")
	// A forged status callback.
	form := url.Values{"MessageSid": {req.SID}, "MessageStatus": {"failed"}, "AccountSid": {sid}}
	status := d.public + "/twilio/sms/status"
	if code, _, err := d.twilio.PostSigned(ctx, status, form, twiliotest.Sign("not-the-token", status, form)); err != nil || code != http.StatusForbidden {
		t.Fatalf("forged webhook: %d %v", code, err)
	}

	// A DING read in the app; one refused for quiet hours.
	app := d.ding(t, map[string]any{"to": []string{"bo"}, "text": "standup moved", "policy": "inapp,sms@5m until=read"})
	if m := firstDeliver(t, bo, app); m == nil {
		t.FailNow()
	}
	if err := bo.Read(ctx, app); err != nil {
		t.Fatal(err)
	}
	d.waitEvent(t, app, 0, "read")
	if code, out, _ := d.api(t, "POST", "/v1/dings", map[string]any{"from": "ana", "to": []string{"cy"}, "text": "now"}); code != http.StatusTooManyRequests {
		t.Fatalf("DING in quiet hours: %d %v", code, out)
	}

	// An announcement to everyone.
	code, out, _ := d.api(t, "POST", "/v1/announcements", map[string]any{"to": "all", "text": "office closed friday"})
	if code != http.StatusCreated {
		t.Fatalf("announce: %d %v", code, out)
	}
	if m := firstDeliver(t, ana, out["id"].(string)); m == nil {
		t.FailNow()
	}

	// A secret chat between two users with no device connected: a
	// message, a refused forward, and an offboarding that burns it.
	nodetest.AddUsers(t, d.n, "di", "ed")
	chat := d.secretChat(t, "di", "ed", 2, 0)
	secret := d.secretSend(t, "di", chat, "psst")
	if code, out, _ := d.api(t, "POST", "/v1/messages", map[string]any{"from": "ed", "to": []string{"ana"}, "text": "fwd", "forward_of": secret}); code != http.StatusConflict {
		t.Fatalf("forward of a secret message: %d %v", code, out)
	}
	if code, out, _ := d.api(t, "DELETE", "/v1/users/ed", nil); code != http.StatusOK {
		t.Fatalf("offboard ed: %d %v", code, out)
	}

	resp, err := http.Get("http://" + d.n.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return b
}

// family is one metric family of a scrape: its type and, per label, the
// values seen (histogram le and summary quantile left out).
type family struct {
	typ    string
	labels map[string]map[string]bool
}

// parseExposition reads the Prometheus text format, which the default
// promhttp handler serves (no content negotiation in a plain GET).
func parseExposition(b []byte) (map[string]*family, error) {
	fams := map[string]*family{}
	var cur *family
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "# TYPE "):
			f := strings.Fields(line)
			if len(f) != 4 {
				return nil, fmt.Errorf("bad TYPE line %q", line)
			}
			cur = &family{typ: f[3], labels: map[string]map[string]bool{}}
			fams[f[2]] = cur
		case line == "" || strings.HasPrefix(line, "#"):
		default:
			if cur == nil {
				return nil, fmt.Errorf("sample before any TYPE: %q", line)
			}
			lbls, err := sampleLabels(line)
			if err != nil {
				return nil, err
			}
			for k, v := range lbls {
				if k == "le" || k == "quantile" {
					continue
				}
				if cur.labels[k] == nil {
					cur.labels[k] = map[string]bool{}
				}
				cur.labels[k][v] = true
			}
		}
	}
	return fams, sc.Err()
}

// sampleLabels parses the {k="v",...} of a sample line.
func sampleLabels(line string) (map[string]string, error) {
	open := strings.IndexByte(line, '{')
	if open < 0 || open > strings.IndexByte(line, ' ') {
		return nil, nil
	}
	out := map[string]string{}
	s := line[open+1:]
	for {
		s = strings.TrimLeft(s, ",")
		if strings.HasPrefix(s, "}") {
			return out, nil
		}
		eq := strings.Index(s, `="`)
		if eq < 0 {
			return nil, fmt.Errorf("bad labels in %q", line)
		}
		k := s[:eq]
		s = s[eq+2:]
		var v strings.Builder
		for {
			if s == "" {
				return nil, fmt.Errorf("unterminated label value in %q", line)
			}
			c := s[0]
			s = s[1:]
			if c == '"' {
				break
			}
			if c == '\\' && s != "" {
				c, s = s[0], s[1:]
				if c == 'n' {
					c = '\n'
				}
			}
			v.WriteByte(c)
		}
		out[k] = v.String()
	}
}

// catEntry is one row of the catalogue: a metric, its type, and its
// labels with their value sets (nil: bounded, described in prose).
type catEntry struct {
	name, typ string
	labels    map[string][]string
	line      int
	// clusterOnly: listed under a "Cluster mode only" heading, served by
	// a cluster member, not by a single node: by the member that owns its
	// partition, or, notServing (the heading says "not serving"), by the
	// others; everyMember (the heading says "serving or not"), by every
	// member.
	clusterOnly, notServing, everyMember bool
	// partitionsOnly: listed under a "Partitions only" heading, served
	// by a node of several partitions only (TestPartitionsMetrics).
	partitionsOnly bool
	// clusterPartitionsOnly: listed under a "Cluster of partitions only"
	// heading, served by a cluster node of several partitions only.
	clusterPartitionsOnly bool
}

var (
	catName   = regexp.MustCompile("^`((?:ding|go|process)_[a-z0-9_]+)`$")
	labelName = regexp.MustCompile("^`([a-z_]+)`")
	valueSet  = regexp.MustCompile(`^\s*∈\s*\{([^}]*)\}\s*$`)
)

// parseCatalogue reads the catalogue's tables: rows
//
//	| `name` | type | labels | meaning |
//
// where labels is empty or "—", or ";"-separated clauses, each
// "`label` ∈ {a, b, c}" (a closed set, checked against the scrape) or
// "`label`: prose" (bounded, not enumerated).
func parseCatalogue(path string) ([]catEntry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []catEntry
	clusterOnly, notServing, everyMember, partitionsOnly, clusterParts := false, false, false, false, false
	for i, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "## ") {
			clusterOnly = strings.Contains(line, "Cluster mode only")
			notServing = clusterOnly && strings.Contains(line, "not serving")
			everyMember = clusterOnly && strings.Contains(line, "serving or not")
			partitionsOnly = strings.Contains(line, "Partitions only")
			clusterParts = strings.Contains(line, "Cluster of partitions only")
		}
		cells := strings.Split(line, "|")
		if len(cells) < 5 || !strings.HasPrefix(line, "|") {
			continue
		}
		m := catName.FindStringSubmatch(strings.TrimSpace(cells[1]))
		if m == nil {
			continue
		}
		e := catEntry{name: m[1], typ: strings.TrimSpace(cells[2]), labels: map[string][]string{}, line: i + 1, clusterOnly: clusterOnly, notServing: notServing, everyMember: everyMember, partitionsOnly: partitionsOnly, clusterPartitionsOnly: clusterParts}
		if ls := strings.TrimSpace(cells[3]); ls != "" && ls != "—" {
			for _, clause := range strings.Split(ls, ";") {
				clause = strings.TrimSpace(clause)
				lm := labelName.FindStringSubmatch(clause)
				if lm == nil {
					return nil, fmt.Errorf("%s:%d: label clause %q does not start with a `label`", path, i+1, clause)
				}
				rest := clause[len(lm[0]):]
				switch {
				case strings.HasPrefix(rest, ":"):
					e.labels[lm[1]] = nil
				case valueSet.MatchString(rest):
					var set []string
					for _, v := range strings.Split(valueSet.FindStringSubmatch(rest)[1], ",") {
						set = append(set, strings.TrimSpace(v))
					}
					e.labels[lm[1]] = set
				default:
					return nil, fmt.Errorf("%s:%d: label clause %q: want \"`l` ∈ {a, b}\" or \"`l`: prose\"", path, i+1, clause)
				}
			}
		}
		if slices.ContainsFunc(out, func(x catEntry) bool { return x.name == e.name }) {
			return nil, fmt.Errorf("%s:%d: %s listed twice", path, i+1, e.name)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no metric rows found", path)
	}
	return out, nil
}

var metricRef = regexp.MustCompile(`\b(?:ding|go|process)_[a-z0-9_]*[a-z0-9]`)

// metricRefs returns the metric names a dashboard or rule file uses.
func metricRefs(s string) []string {
	refs := metricRef.FindAllString(s, -1)
	slices.Sort(refs)
	return slices.Compact(refs)
}

// familyOf maps a series name to its family (a histogram's _bucket,
// _sum and _count, a summary's _sum and _count).
func familyOf(name string, fams map[string]*family) string {
	if _, ok := fams[name]; ok {
		return name
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok {
			if f, ok := fams[base]; ok && (f.typ == "histogram" || (f.typ == "summary" && suf != "_bucket")) {
				return base
			}
		}
	}
	return name
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
