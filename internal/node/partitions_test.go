package node_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// With Partitions: 4, these users land on partitions ana 2, bo 0, cy 3,
// eve 1 (checked by wantPartitions with the placement's formula).
const testPartitions = 4

func wantPartitions(t *testing.T, n *node.Node, want map[string]int) {
	t.Helper()
	for u, p := range want {
		formula := int(uint32(fanout.PartitionOf(u)) * testPartitions / fanout.Partitions)
		if got := n.PartitionOf(u); got != p || formula != p {
			t.Fatalf("%s is on partition %d (formula %d), the test wants %d", u, got, formula, p)
		}
	}
}

func startPartitioned(t *testing.T, dir string) (*dingNode, node.Config) {
	t.Helper()
	cfg := node.Config{DataDir: dir, SocketAddr: nodetest.FreeAddr(t), HTTPAddr: nodetest.FreeAddr(t), Partitions: testPartitions}
	n := nodetest.Start(t, cfg)
	wantPartitions(t, n, map[string]int{"ana": 2, "bo": 0, "cy": 3, "eve": 1})
	return &dingNode{n: n, cfg: cfg}, cfg
}

// nextReceipt waits for c's next receipt of id in state st (acking what
// it reads).
func nextReceipt(t *testing.T, c *client.Client, id string, st pb.State) {
	t.Helper()
	for {
		select {
		case e, ok := <-c.Entries():
			if !ok {
				t.Fatalf("connection ended: %v", c.Err())
			}
			c.Ack(e.Seq)
			if r := e.Receipt; r != nil && r.State == st && slices.Contains(r.IDs, id) {
				return
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no %v receipt of %s within 20s", st, id)
		}
	}
}

func receiptStates(t *testing.T, c *client.Client, id string) map[string]pb.State {
	t.Helper()
	rs, err := c.Receipts(context.Background(), id)
	if err != nil {
		t.Fatalf("receipts of %s: %v", id, err)
	}
	out := map[string]pb.State{}
	for _, r := range rs {
		out[r.User] = r.State
	}
	return out
}

// A 1:1 message between partitions reaches a connected client, and the
// sender sees it sent, delivered and read; a group message reaches users
// on three other partitions, those connecting later too; an announcement's
// counts are right at its home.
func TestPartitionsDeliverAcrossPartitions(t *testing.T) {
	d, _ := startPartitioned(t, t.TempDir())
	n := d.n
	nodetest.AddUsers(t, n, "ana", "bo", "cy", "eve")
	ctx := context.Background()
	ana := nodetest.Dial(t, n, "ana", "phone", nil)
	bo := nodetest.Dial(t, n, "bo", "phone", nil)

	// eve is not connected: her receipt reads sent once partition 1
	// holds the message.
	res, err := ana.Send(ctx, []string{"eve"}, []byte("for eve"))
	if err != nil {
		t.Fatal(err)
	}
	nodetest.WaitFor(t, "eve's receipt sent at the origin", 10*time.Second, func() bool {
		return receiptStates(t, ana, res.ID)["eve"] == pb.State_SENT
	})

	res, err = ana.Send(ctx, []string{"bo"}, []byte("hello across"))
	if err != nil {
		t.Fatal(err)
	}
	if home, ok := engine.HomeOf(mustID(t, res.ID)); !ok || home != 2 {
		t.Fatalf("message id's home %d %v, want ana's partition 2", home, ok)
	}
	m := firstDeliver(t, bo, res.ID)
	if m == nil || string(m.Body) != "hello across" || m.From != "ana" {
		t.Fatalf("bo got %+v", m)
	}
	nextReceipt(t, ana, res.ID, pb.State_DELIVERED)
	if err := bo.Read(ctx, res.ID); err != nil {
		t.Fatal(err)
	}
	nextReceipt(t, ana, res.ID, pb.State_READ_STATE)
	if st := receiptStates(t, ana, res.ID)["bo"]; st != pb.State_READ_STATE {
		t.Fatalf("bo's receipt at the origin: %v", st)
	}

	// A group of users on partitions 0, 1 and 3, sent from partition 2.
	if code, out, _ := d.api(t, "PUT", "/v1/groups/team", map[string]any{"name": "Team", "members": []string{"bo", "cy", "eve"}}); code != 200 && code != 201 {
		t.Fatalf("create group: %d %v", code, out)
	}
	code, out, _ := d.api(t, "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"group:team"}, "text": "standup"})
	if code != http.StatusOK && code != http.StatusCreated {
		t.Fatalf("group send: %d %v", code, out)
	}
	gid := out["id"].(string)
	if firstDeliver(t, bo, gid) == nil {
		t.Fatal("bo did not get the group message")
	}
	for _, u := range []string{"cy", "eve"} {
		if firstDeliver(t, nodetest.Dial(t, n, u, "phone", nil), gid) == nil {
			t.Fatalf("%s, connecting later, did not get the group message", u)
		}
	}
	nodetest.WaitFor(t, "the group's receipts at the origin", 10*time.Second, func() bool {
		rs := receiptStates(t, ana, gid)
		return len(rs) == 3 && rs["bo"] == pb.State_DELIVERED && rs["cy"] == pb.State_DELIVERED && rs["eve"] == pb.State_DELIVERED
	})

	// An announcement to all from cy (partition 3): its stats live there.
	code, out, _ = d.api(t, "POST", "/v1/announcements", map[string]any{"from": "cy", "to": "all", "text": "Office closed Friday", "confirm": true})
	if code != http.StatusCreated {
		t.Fatalf("announce: %d %v", code, out)
	}
	aid := out["id"].(string)
	if home, _ := engine.HomeOf(mustID(t, aid)); home != 3 {
		t.Fatalf("announcement's home %d, want 3", home)
	}
	if firstDeliver(t, bo, aid) == nil {
		t.Fatal("bo did not get the announcement")
	}
	if err := bo.Confirm(ctx, aid, 0); err != nil {
		t.Fatal(err)
	}
	nodetest.WaitFor(t, "the announcement's counts at its home", 10*time.Second, func() bool {
		s := stats(t, d, aid)
		return s["total"] == float64(4) && s["delivered"] == float64(1) && s["read"] == float64(1) && s["confirmed"] == float64(1)
	})
	if s := stats(t, d, aid); len(s["unconfirmed"].([]any)) != 3 {
		t.Fatalf("unconfirmed: %v", s["unconfirmed"])
	}
}

// A DING from ana (partition 2) to bo (partition 0), read by bo on his
// partition, stops its escalation at its home before the SMS step.
func TestPartitionsDingReadStopsEscalation(t *testing.T) {
	d := startDingNode(t, func(c *node.Config) { c.Partitions = testPartitions })
	wantPartitions(t, d.n, map[string]int{"ana": 2, "bo": 0})
	bo := nodetest.Dial(t, d.n, "bo", "phone", nil)
	id := d.ding(t, map[string]any{"to": []string{"bo"}, "text": "standup moved", "policy": "inapp,sms@5m until=read"})
	if firstDeliver(t, bo, id) == nil {
		t.Fatal("bo did not get the DING")
	}
	if err := bo.Read(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	d.waitEvent(t, id, 0, "read")
	home := d.n.Engines()[2]
	d.clock.Advance(10 * time.Minute)
	nodetest.WaitFor(t, "no escalation step pending at the home", 5*time.Second, func() bool { return home.PendingSteps() == 0 })
	if n := d.twilio.Count("sms"); n != 0 {
		t.Fatalf("%d SMS sent after bo read the DING", n)
	}
	if st, _, _ := d.recipient(t, id, 0); st != engine.StatusRead {
		t.Fatalf("bo's status %s, want read", st)
	}
}

// An SMS reply reaches the DING's home although neither the phone nor the
// provider's reference names a partition; the SMS status callback too.
func TestPartitionsSMSReplyFindsTheHome(t *testing.T) {
	d := startDingNode(t, func(c *node.Config) { c.Partitions = testPartitions })
	ctx := context.Background()
	id := d.ding(t, map[string]any{"to": []string{"bo"}, "text": "Deploy is stuck", "policy": "sms"})
	sms := d.waitRequests(t, "sms", 1)[0]
	if code, _, err := d.twilio.SMSStatus(ctx, sms.SID, "delivered", ""); err != nil || code != 200 {
		t.Fatalf("sms status webhook: %d %v", code, err)
	}
	d.waitEvent(t, id, 0, "sms_delivered")
	if code, _, err := d.twilio.Reply(ctx, d.public+"/twilio/sms/inbound", boPhone, fromNum, "1"); err != nil || code != 200 {
		t.Fatalf("reply: %d %v", code, err)
	}
	if st, _, raw := d.recipient(t, id, 0); st != engine.StatusConfirmed || raw["reached_by"] != "sms" {
		t.Fatalf("bo = %v", raw)
	}
}

// Offboarding a user of another partition than the DING's home stops the
// DING there, closes their connections and refuses them afterwards; a
// restart finds nothing left to apply.
func TestPartitionsOffboardAcrossPartitions(t *testing.T) {
	d := startDingNode(t, func(c *node.Config) { c.Partitions = testPartitions })
	phone := nodetest.Dial(t, d.n, "bo", "phone", nil)
	id := d.ding(t, map[string]any{"to": []string{"bo"}, "text": "on call?", "policy": "inapp,sms@5m"})
	if firstDeliver(t, phone, id) == nil {
		t.Fatal("bo did not get the DING")
	}
	// His phone's delivery travels back to the DING's home through the
	// relay; let it arrive before he is removed, so that the ledger's
	// last event is the removal (else it may come after).
	nodetest.WaitFor(t, "bo's delivery at the DING's home", 10*time.Second, func() bool {
		_, evs, _ := d.recipient(t, id, 0)
		return slices.Contains(evs, "delivered")
	})
	code, out, _ := d.api(t, "DELETE", "/v1/users/bo", nil)
	if code != http.StatusOK || out["status"] != "removed" {
		t.Fatalf("DELETE /v1/users/bo: %d %v", code, out)
	}
	select {
	case <-phone.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a removed user's connection was still open")
	}
	var ce *client.Error
	if !errors.As(phone.Err(), &ce) || ce.Code != pb.Code_USER_REMOVED {
		t.Fatalf("connection ended with %v, want USER_REMOVED", phone.Err())
	}
	if st, evs, _ := d.recipient(t, id, 0); st != engine.StatusRemoved || evs[len(evs)-1] != "removed" {
		t.Fatalf("bo's DING at its home: %s %v", st, evs)
	}
	for i, e := range d.n.Engines() {
		if ft, err := e.ForgottenThrough(); err != nil || ft == 0 {
			t.Fatalf("partition %d forgot through %d (%v)", i, ft, err)
		}
	}
	if code, out, _ := d.api(t, "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "hi"}); code != http.StatusUnprocessableEntity {
		t.Fatalf("send to a removed user: %d %v", code, out)
	}
	d.clock.Advance(time.Hour)
	nodetest.WaitFor(t, "no escalation step pending", 5*time.Second, func() bool { return d.n.Engines()[2].PendingSteps() == 0 })
	if n := d.twilio.Count("sms"); n != 0 {
		t.Fatalf("%d SMS sent to a removed user", n)
	}
	// A retry is harmless.
	if code, out, _ := d.api(t, "DELETE", "/v1/users/bo", nil); code != http.StatusOK {
		t.Fatalf("DELETE again: %d %v", code, out)
	}
}

// Messages still in an outbox when the node stops arrive after it
// starts again: the pump drains what a restart left.
func TestPartitionsOutboxSurvivesRestart(t *testing.T) {
	d, cfg := startPartitioned(t, t.TempDir())
	nodetest.AddUsers(t, d.n, "ana", "bo")
	ana := nodetest.Dial(t, d.n, "ana", "phone", nil)
	// Partition 0 (bo's) is shut down first, so nothing can be applied
	// there: the records stay in ana's outbox.
	bo0 := d.n.Engines()[0]
	if err := bo0.Close(); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, text := range []string{"one", "two", "three"} {
		res, err := ana.Send(context.Background(), []string{"bo"}, []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.ID)
	}
	b, err := d.n.Engines()[2].Outbox(0, 0, 10)
	if err != nil || len(b.Records) != 3 {
		t.Fatalf("outbox for partition 0: %d records, %v", len(b.Records), err)
	}
	ana.Close()
	nodetest.Stop(t, d.n)

	d.n = nodetest.Start(t, cfg)
	bo := nodetest.Dial(t, d.n, "bo", "phone", nil)
	for i, id := range ids {
		m := firstDeliver(t, bo, id)
		if m == nil || string(m.Body) != []string{"one", "two", "three"}[i] {
			t.Fatalf("after the restart bo got %+v for %s", m, id)
		}
	}
	nodetest.WaitFor(t, "an empty outbox", 10*time.Second, func() bool {
		b, err := d.n.Engines()[2].Outbox(0, 0, 10)
		return err == nil && len(b.Records) == 0
	})
	if h, err := d.n.Engines()[0].Head("bo"); err != nil || h != 3 {
		t.Fatalf("bo's head %d (%v), want 3: each message once", h, err)
	}
}

// Placement must never change under stored data: a start with another
// count, or with one on a single-partition data dir, or the reverse, is
// refused, and backups are refused with a message naming --partitions.
func TestPartitionsCountIsFixed(t *testing.T) {
	dir := t.TempDir()
	d, cfg := startPartitioned(t, dir)
	code, out, _ := d.api(t, "POST", "/v1/backup", map[string]any{"dir": "b1"})
	if e, _ := out["error"].(map[string]any); code != http.StatusNotImplemented || !strings.Contains(e["detail"].(string), "--partitions") {
		t.Fatalf("backup: %d %v", code, out)
	}
	if code, out, _ := d.api(t, "POST", "/v1/backup/verify", map[string]any{"dir": "b1"}); code != http.StatusNotImplemented || errCode(out) != "UNSUPPORTED" {
		t.Fatalf("backup verify: %d %v", code, out)
	}
	// The refusal comes after authentication, as every admin route's.
	if resp, err := http.Post("http://"+d.n.HTTPAddr()+"/v1/backup", "application/json", strings.NewReader(`{"dir":"b1"}`)); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("backup without a token: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	nodetest.Stop(t, d.n)
	if b, err := os.ReadFile(filepath.Join(dir, node.PartitionsFile)); err != nil || string(b) != "4\n" {
		t.Fatalf("%s: %q %v", node.PartitionsFile, b, err)
	}
	for _, c := range []struct {
		name string
		p    int
		want string
	}{
		{"another count", 8, "holds 4 partitions"},
		{"none", 0, "start it with --partitions 4"},
		{"too many", 65, "want 1 to 64"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := cfg
			cfg.Partitions = c.p
			cfg.Logger = nil
			if _, err := node.Start(cfg); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("start: %v, want %q", err, c.want)
			}
		})
	}
	single := nodetest.Start(t, node.Config{})
	nodetest.Stop(t, single)
	_, err := node.Start(node.Config{DataDir: single.DataDir(), SocketAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Partitions: 2})
	if err == nil || !strings.Contains(err.Error(), "single partition") {
		t.Fatalf("--partitions on a single-partition data dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(single.DataDir(), node.PartitionsFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the refused start wrote %s: %v", node.PartitionsFile, err)
	}
}

// /readyz answers 503, naming the partition, once any partition's store
// failed a write; the other partitions keep serving.
func TestPartitionsReadyzSaysWhichStoreFailed(t *testing.T) {
	var fail atomic.Bool
	cfg := node.Config{DataDir: t.TempDir(), SocketAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Partitions: testPartitions,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	node.WrapPartitionStore(&cfg, func(i int, st store.Store) store.Store {
		if i == 0 {
			return failingStore{st, &fail}
		}
		return st
	})
	n, err := node.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := n.Shutdown(ctx); err == nil || !strings.Contains(err.Error(), "disk on fire") {
			t.Errorf("shutdown after the failed write: %v, want the store's error", err)
		}
	})
	d := &dingNode{n: n}
	nodetest.AddUsers(t, n, "ana", "bo", "cy")
	readyz := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + n.HTTPAddr() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := readyz(); code != 200 {
		t.Fatalf("readyz before: %d %q", code, body)
	}
	fail.Store(true)
	if code, out, _ := d.api(t, "POST", "/v1/messages", map[string]any{"from": "bo", "to": []string{"ana"}, "text": "hi"}); code < 500 {
		t.Fatalf("a send on partition 0's failing store: %d %v", code, out)
	}
	if code, body := readyz(); code != 503 || !strings.Contains(body, "partition 0's store failed a write") {
		t.Fatalf("readyz after a failed write: %d %q, want 503 naming partition 0", code, body)
	}
	// ana (2) and cy (3) still talk.
	if code, out, _ := d.api(t, "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"cy"}, "text": "still here"}); code != http.StatusOK {
		t.Fatalf("a send between healthy partitions: %d %v", code, out)
	}
}

// Secret chats work within a partition and between two, each partition
// keeping its keys in its own keyring (across partitions the key travels
// with the relay, engine/relay_secret.go); offboarding a participant burns
// the chat's live messages.
func TestPartitionsSecretChats(t *testing.T) {
	d, _ := startPartitioned(t, t.TempDir())
	n := d.n
	nodetest.AddUsers(t, n, "ana", "bo", "cy", "dee")
	wantPartitions(t, n, map[string]int{"dee": 3})
	code, across, _ := d.api(t, "POST", "/v1/secret-chats", map[string]any{"from": "ana", "to": "bo", "level": 2})
	if code != http.StatusCreated {
		t.Fatalf("a secret chat between partitions 2 and 0: %d %v", code, across)
	}
	bo := nodetest.Dial(t, n, "bo", "phone", nil)
	sid := d.secretSend(t, "ana", across["id"].(string), "across the partitions")
	if m := firstDeliver(t, bo, sid); m == nil || string(m.Body) != "across the partitions" {
		t.Fatalf("bo, on partition 0, got %+v", m)
	}
	code, ch, _ := d.api(t, "POST", "/v1/secret-chats", map[string]any{"from": "cy", "to": "dee", "level": 2})
	if code != http.StatusCreated {
		t.Fatalf("a secret chat within partition 3: %d %v", code, ch)
	}
	chat := ch["id"].(string)
	dee := nodetest.Dial(t, n, "dee", "phone", nil)
	id := d.secretSend(t, "cy", chat, "the door code is 4711")
	if m := firstDeliver(t, dee, id); m == nil || string(m.Body) != "the door code is 4711" {
		t.Fatalf("dee got %+v", m)
	}
	if got := n.Engines()[3].LiveSecrets(); got != 1 {
		t.Fatalf("LiveSecrets on partition 3 = %d, want 1", got)
	}
	if code, out, _ := d.api(t, "DELETE", "/v1/users/cy", nil); code != http.StatusOK {
		t.Fatalf("offboard cy: %d %v", code, out)
	}
	if got := n.Engines()[3].LiveSecrets(); got != 0 {
		t.Fatalf("LiveSecrets on partition 3 after offboarding cy = %d, want 0", got)
	}
}

// /metrics sums the stores and labels each engine's series with its
// partition.
func TestPartitionsMetrics(t *testing.T) {
	d, _ := startPartitioned(t, t.TempDir())
	nodetest.AddUsers(t, d.n, "ana", "bo")
	if code, out, _ := d.api(t, "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "hi"}); code != http.StatusOK {
		t.Fatalf("send: %d %v", code, out)
	}
	nodetest.WaitFor(t, "the relay counted", 10*time.Second, func() bool {
		return metricValue(t, d.n, `ding_relay_records_total{from="2",to="0"}`) == 1
	})
	if v := metricValue(t, d.n, "ding_store_used_bytes"); v <= 0 {
		t.Fatalf("ding_store_used_bytes = %v", v)
	}
	resp, err := http.Get("http://" + d.n.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`partition="0"`, `partition="3"`, `partition="dir"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics has no series with %s", want)
		}
	}
	// deploy/METRICS.md: every ding_* family is catalogued, and the
	// partitions-only ones as they are served (those of errors appear
	// once one happens).
	fams, err := parseExposition(b)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := parseCatalogue(catalogueFile)
	if err != nil {
		t.Fatal(err)
	}
	for name := range fams {
		if strings.HasPrefix(name, "ding_") && !slices.ContainsFunc(cat, func(m catEntry) bool { return m.name == name }) {
			t.Errorf("/metrics exposes %s, which %s does not describe", name, catalogueFile)
		}
	}
	n := 0
	for _, m := range cat {
		if !m.partitionsOnly {
			continue
		}
		n++
		f, ok := fams[m.name]
		if !ok {
			if m.name == "ding_relay_records_total" || m.name == "ding_relay_backlog_records" {
				t.Errorf("%s is in %s (line %d) but not in /metrics", m.name, catalogueFile, m.line)
			}
			continue
		}
		if f.typ != m.typ {
			t.Errorf("%s: catalogue says %s, /metrics says %s", m.name, m.typ, f.typ)
		}
		if got, want := sortedKeys(f.labels), sortedKeys(m.labels); !slices.Equal(got, want) {
			t.Errorf("%s: labels in /metrics %v, in the catalogue %v", m.name, got, want)
		}
	}
	if n != 6 {
		t.Fatalf("%d partitions-only metrics in the catalogue, want 6: the parsing is broken", n)
	}
}

// An offboarding one partition cannot apply (it is read-only: a full
// disk) is answered with the error, stands in the directory, and is
// applied there in the background once the partition takes writes again.
func TestPartitionsOffboardRetriedInTheBackground(t *testing.T) {
	d := startDingNode(t, func(c *node.Config) { c.Partitions = testPartitions })
	nodetest.AddUsers(t, d.n, "eve")
	eve := d.n.Engines()[1]
	eve.SetReadOnly(errors.New("test: the disk is full"))
	code, out, _ := d.api(t, "DELETE", "/v1/users/bo", nil)
	if code != http.StatusServiceUnavailable {
		t.Fatalf("DELETE /v1/users/bo with partition 1 read-only: %d %v", code, out)
	}
	if d.n.Directory().Active("bo") {
		t.Fatal("bo is still active after the refused offboarding")
	}
	if ft, _ := eve.ForgottenThrough(); ft != 0 {
		t.Fatalf("read-only partition 1 forgot through %d", ft)
	}
	eve.SetReadOnly(nil)
	nodetest.WaitFor(t, "partition 1 to apply the removal", 10*time.Second, func() bool {
		ft, err := eve.ForgottenThrough()
		return err == nil && ft > 0
	})
}

// GET /v1/stats adds up every partition's rollups: each message is
// counted once, at its home, and its reads where they were relayed back.
func TestPartitionsAdminStatsAddUp(t *testing.T) {
	d, _ := startPartitioned(t, t.TempDir())
	nodetest.AddUsers(t, d.n, "ana", "bo", "cy")
	bo := nodetest.Dial(t, d.n, "bo", "phone", nil)
	var ids []string
	for _, m := range []struct{ from, to string }{{"ana", "bo"}, {"cy", "bo"}, {"bo", "bo"}} {
		code, out, _ := d.api(t, "POST", "/v1/messages", map[string]any{"from": m.from, "to": []string{m.to}, "text": "hi"})
		if code != http.StatusOK {
			t.Fatalf("send: %d %v", code, out)
		}
		ids = append(ids, out["id"].(string))
	}
	// Any order: ana's and cy's messages are relayed from their
	// partitions, so bo's own may land in his stream before them.
	deliversAll(t, bo, ids...)
	if err := bo.Read(context.Background(), ids...); err != nil {
		t.Fatal(err)
	}
	var total map[string]any
	nodetest.WaitFor(t, "three reads counted", 10*time.Second, func() bool {
		code, out, _ := d.api(t, "GET", "/v1/stats", nil)
		if code != http.StatusOK {
			t.Fatalf("stats: %d %v", code, out)
		}
		total = out["total"].(map[string]any)["counts"].(map[string]any)
		return total["messages_read"] == float64(3)
	})
	if total["messages_sent"] != float64(3) || total["messages_delivered"] != float64(3) {
		t.Fatalf("totals: %v", total)
	}
}

// An announcement from the admins (no sender) has a home too, where its
// counts are kept, and reaches every partition.
func TestPartitionsAdminAnnouncement(t *testing.T) {
	d, _ := startPartitioned(t, t.TempDir())
	nodetest.AddUsers(t, d.n, "ana", "bo", "cy", "eve")
	code, out, _ := d.api(t, "POST", "/v1/announcements", map[string]any{"to": "all", "text": "fire drill at 3"})
	if code != http.StatusCreated {
		t.Fatalf("announce: %d %v", code, out)
	}
	id := out["id"].(string)
	for _, u := range []string{"ana", "bo", "cy", "eve"} {
		c := nodetest.Dial(t, d.n, u, "phone", nil)
		if firstDeliver(t, c, id) == nil {
			t.Fatalf("%s did not get the announcement", u)
		}
	}
	nodetest.WaitFor(t, "4 deliveries counted at the home", 10*time.Second, func() bool {
		s := stats(t, d, id)
		return s["total"] == float64(4) && s["delivered"] == float64(4)
	})
}

// Without Partitions (or with 1) the data dir is as it always was: one
// store, no record of a partition count, no partition or directory
// stores.
func TestOnePartitionLeavesTheDataDirAsBefore(t *testing.T) {
	for _, p := range []int{0, 1} {
		n := nodetest.Start(t, node.Config{Partitions: p})
		nodetest.AddUsers(t, n, "ana")
		nodetest.Stop(t, n)
		if n.Engine() == nil || n.Engines() != nil {
			t.Fatalf("partitions %d: Engine %v, Engines %v", p, n.Engine(), n.Engines())
		}
		if _, err := os.Stat(filepath.Join(n.DataDir(), "store")); err != nil {
			t.Fatalf("partitions %d: %v", p, err)
		}
		for _, name := range []string{node.PartitionsFile, "p", "dir"} {
			if _, err := os.Stat(filepath.Join(n.DataDir(), name)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("partitions %d: the data dir has %s (%v)", p, name, err)
			}
		}
	}
}

// An SMS reply confirms the DING sent to the phone last, as on one
// partition, also when an older DING pending for the same phone lives on
// a lower-numbered partition: eve (partition 1) DINGs bo first, ana
// (partition 2) a second later; bo's "1" confirms ana's, and eve's stays
// pending.
func TestPartitionsSMSReplyGoesToTheNewestDing(t *testing.T) {
	d := startDingNode(t, func(c *node.Config) { c.Partitions = testPartitions })
	wantPartitions(t, d.n, map[string]int{"ana": 2, "bo": 0, "eve": 1})
	if code, out, _ := d.api(t, "POST", "/v1/users", map[string]any{"id": "eve", "name": "Eve"}); code != http.StatusOK && code != http.StatusCreated {
		t.Fatalf("add eve: %d %v", code, out)
	}
	ctx := context.Background()
	code, out, _ := d.api(t, "POST", "/v1/dings", map[string]any{"from": "eve", "to": []string{"bo"}, "text": "older", "policy": "sms"})
	if code != http.StatusCreated {
		t.Fatalf("eve's DING: %d %v", code, out)
	}
	older := out["id"].(string)
	d.waitRequests(t, "sms", 1)
	d.clock.Advance(time.Second)
	newer := d.ding(t, map[string]any{"to": []string{"bo"}, "text": "newer", "policy": "sms"})
	d.waitRequests(t, "sms", 2)
	if code, _, err := d.twilio.Reply(ctx, d.public+"/twilio/sms/inbound", boPhone, fromNum, "1"); err != nil || code != 200 {
		t.Fatalf("reply: %d %v", code, err)
	}
	if st, _, raw := d.recipient(t, newer, 0); st != engine.StatusConfirmed || raw["reached_by"] != "sms" {
		t.Fatalf("the newer DING's bo = %v, want confirmed by SMS", raw)
	}
	if st, _, _ := d.recipient(t, older, 0); st != engine.StatusPending {
		t.Fatalf("the older DING's bo is %s, want still pending", st)
	}
}

// The org's SMS budget holds for the node, not per partition: with a
// budget of 2 a day, DINGs to bo from senders on three partitions send
// two SMS and the third is refused for the budget, also after a restart
// (the count comes back from the partitions' stores).
func TestPartitionsShareTheSMSBudget(t *testing.T) {
	d := startDingNode(t, func(c *node.Config) {
		c.Partitions = testPartitions
		c.Quotas = engine.Quotas{RecipientInterval: -1, SMSPerDay: 2}
	})
	wantPartitions(t, d.n, map[string]int{"ana": 2, "bo": 0, "cy": 3, "eve": 1})
	for _, u := range []string{"eve", "cy"} {
		if code, out, _ := d.api(t, "POST", "/v1/users", map[string]any{"id": u, "name": u}); code != http.StatusCreated {
			t.Fatalf("add %s: %d %v", u, code, out)
		}
	}
	dingFrom := func(from string) string {
		t.Helper()
		code, out, _ := d.api(t, "POST", "/v1/dings", map[string]any{"from": from, "to": []string{"bo"}, "text": "from " + from, "policy": "sms"})
		if code != http.StatusCreated {
			t.Fatalf("%s's DING: %d %v", from, code, out)
		}
		return out["id"].(string)
	}
	refused := func(id string) {
		t.Helper()
		d.waitEvent(t, id, 0, "quota_refused")
		_, _, raw := d.recipient(t, id, 0)
		for _, ev := range raw["events"].([]any) {
			if e := ev.(map[string]any); e["event"] == "quota_refused" && e["detail"] == engine.ReasonSMSBudget {
				return
			}
		}
		t.Fatalf("bo = %v, want the SMS step refused for the budget", raw)
	}
	dingFrom("eve")
	d.waitRequests(t, "sms", 1)
	dingFrom("ana")
	d.waitRequests(t, "sms", 2)
	refused(dingFrom("cy"))
	nodetest.Stop(t, d.n)
	d.start(t)
	refused(dingFrom("eve"))
	if n := d.twilio.Count("sms"); n != 2 {
		t.Fatalf("%d SMS sent with a budget of 2", n)
	}
}

// A partition can stop and start being served while the node runs
// (stage 5a: a cluster node serves a partition while its member owns
// it): detached, its users' connections are cut (UNAVAILABLE, so their
// clients keep reconnecting), new ones are refused,
// messages to them from other partitions are acknowledged and wait in
// their origins' outboxes, and its metrics leave /metrics; attached
// again from its store, its users connect and get what waited, and its
// metrics come back.
func TestPartitionsDetachAndAttach(t *testing.T) {
	d, _ := startPartitioned(t, t.TempDir())
	n := d.n
	nodetest.AddUsers(t, n, "ana", "bo")
	ctx := context.Background()
	ana := nodetest.Dial(t, n, "ana", "phone", nil)
	bo := nodetest.Dial(t, n, "bo", "phone", nil)
	gone := engine.NewError(engine.CodeUnavailable, "this partition moved")
	if err := node.DetachPartition(n, 0, gone); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Dial(ctx, client.Config{Addr: n.SocketAddr(), Token: nodetest.Token(t, n, "bo", "tablet"), Device: "tablet"}); err == nil {
		t.Fatal("bo connected while his partition is not served")
	} else if ce, ok := errors.AsType[*client.Error](err); !ok || ce.Code != pb.Code_UNAVAILABLE {
		t.Fatalf("a HELLO for a partition not served: %v, want UNAVAILABLE (retryable)", err)
	}
	// In cluster mode another node owns it: NOT_OWNER names it, and the
	// client goes there (here its Dial refuses, to stay on loopback).
	node.SetNotServed(n, func(user string, p uint32) error {
		return &fanout.NotOwnerError{User: user, Partition: fanout.Partition(p), Owner: "owner.invalid:7070"}
	})
	var dialed []string
	_, err := client.Dial(ctx, client.Config{Addr: n.SocketAddr(), Token: nodetest.Token(t, n, "bo", "tablet"), Device: "tablet",
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dialed = append(dialed, addr)
			if addr != n.SocketAddr() {
				return nil, errors.New("test: not dialling the redirect")
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}})
	if err == nil || !slices.Contains(dialed, "owner.invalid:7070") {
		t.Fatalf("a HELLO for a partition another node owns: dialled %v, %v; want a redirect to owner.invalid:7070", dialed, err)
	}
	node.SetNotServed(n, nil)
	res, err := ana.Send(ctx, []string{"bo"}, []byte("while away"))
	if err != nil {
		t.Fatalf("a send to a user of a detached partition: %v", err)
	}
	nodetest.WaitFor(t, "the relay refusing the detached partition", 10*time.Second, func() bool {
		return metricValue(t, n, `ding_relay_apply_errors_total{from="2",reason="wrong_partition",to="0"}`) >= 1
	})
	if n.Engines()[0] != nil {
		t.Fatal("Engines()[0] is set for a detached partition")
	}
	if v := metricValue(t, n, `ding_relay_backlog_records{from="2",to="0"}`); v != 1 {
		t.Fatalf("backlog from 2 to 0 = %v, want the one message", v)
	}
	scrape := func() string {
		resp, err := http.Get("http://" + n.HTTPAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if s := scrape(); strings.Contains(s, `ding_commit_batches_total{partition="0"}`) || !strings.Contains(s, `partition="2"`) {
		t.Fatal("/metrics still shows partition 0's engine, or not partition 2's")
	}

	if err := node.AttachPartition(n, 0); err != nil {
		t.Fatal(err)
	}
	// bo's phone was cut off (UNAVAILABLE: retryable) and has kept
	// reconnecting: it is back, and gets what waited.
	if m := firstDeliver(t, bo, res.ID); m == nil || string(m.Body) != "while away" {
		t.Fatalf("bo got %+v after his partition came back", m)
	}
	if c := bo.Stats().Connects; c < 2 {
		t.Fatalf("bo's phone connected %d times: it was never cut off", c)
	}
	nodetest.WaitFor(t, "partition 0's metrics back", 10*time.Second, func() bool {
		return strings.Contains(scrape(), `partition="0"`)
	})
	if err := node.AttachPartition(n, 0); err == nil {
		t.Fatal("partition 0 attached twice")
	}
}

// Two nodes serve the four partitions, two each, and relay between them
// over HTTP (stage 5b's transport through the node): ana (partition 2,
// node A) sends to bo (partition 0, node B); bo's phone on B gets it, and
// ana's phone on A sees it delivered and read. bo cannot connect to A.
// (The directory is not shared yet, stage 5c: the test gives both nodes
// the same users.)
func TestPartitionsAcrossTwoNodes(t *testing.T) {
	ctx := context.Background()
	httpA, httpB := nodetest.FreeAddr(t), nodetest.FreeAddr(t)
	owner := func(_ context.Context, p uint32) (string, error) {
		if p < 2 {
			return "http://" + httpB, nil
		}
		return "http://" + httpA, nil
	}
	const secret = "two-nodes-cluster-secret"
	cfgA := node.Config{DataDir: t.TempDir(), SocketAddr: nodetest.FreeAddr(t), HTTPAddr: httpA, Partitions: testPartitions}
	node.WithPeers(&cfgA, []int{2, 3}, owner, secret)
	cfgB := node.Config{DataDir: t.TempDir(), SocketAddr: nodetest.FreeAddr(t), HTTPAddr: httpB, Partitions: testPartitions}
	node.WithPeers(&cfgB, []int{0, 1}, owner, secret)
	a, b := nodetest.Start(t, cfgA), nodetest.Start(t, cfgB)
	wantPartitions(t, a, map[string]int{"ana": 2, "bo": 0})
	for _, n := range []*node.Node{a, b} {
		nodetest.AddUsers(t, n, "ana", "bo")
	}
	if e := a.Engines(); e[0] != nil || e[2] == nil {
		t.Fatalf("node A serves %v, want partitions 2 and 3", e)
	}
	ana := nodetest.Dial(t, a, "ana", "phone", nil)
	bo := nodetest.Dial(t, b, "bo", "phone", nil)
	res, err := ana.Send(ctx, []string{"bo"}, []byte("across nodes"))
	if err != nil {
		t.Fatal(err)
	}
	if m := firstDeliver(t, bo, res.ID); m == nil || string(m.Body) != "across nodes" || m.From != "ana" {
		t.Fatalf("bo got %+v", m)
	}
	nextReceipt(t, ana, res.ID, pb.State_DELIVERED)
	if err := bo.Read(ctx, res.ID); err != nil {
		t.Fatal(err)
	}
	nextReceipt(t, ana, res.ID, pb.State_READ_STATE)
	if v := metricValue(t, a, `ding_relay_records_total{from="2",to="0"}`); v != 1 {
		t.Fatalf("A relayed %v records from 2 to 0, want 1", v)
	}
	if _, err := client.Dial(ctx, client.Config{Addr: a.SocketAddr(), Token: nodetest.Token(t, a, "bo", "tablet"), Device: "tablet"}); err == nil {
		t.Fatal("bo connected to a node that does not serve his partition")
	}
}
