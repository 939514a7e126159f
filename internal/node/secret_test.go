package node_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// These tests check the node's wiring of secret chats through the admin
// API, /metrics and the engine; the protocol side is channels/socket's.

// metricValue scrapes n's /metrics and returns the value of one series,
// written as exposed (e.g. `ding_secret_burns_total{level="2",reason="read"}`),
// or -1 if it is not there.
func metricValue(t *testing.T, n *node.Node, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + n.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", series, err)
			}
			return f
		}
	}
	return -1
}

// secretChat opens a chat through the API and returns its id.
func (d *dingNode) secretChat(t *testing.T, from, to string, level int, burnAfterS int) string {
	t.Helper()
	code, out, _ := d.api(t, "POST", "/v1/secret-chats", map[string]any{"from": from, "to": to, "level": level, "burn_after_s": burnAfterS})
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/secret-chats: %d %v", code, out)
	}
	return out["id"].(string)
}

// secretSend sends text in a chat through the API and returns the id.
func (d *dingNode) secretSend(t *testing.T, from, chat, text string) string {
	t.Helper()
	code, out, _ := d.api(t, "POST", "/v1/messages", map[string]any{"from": from, "chat": chat, "text": text})
	if code != http.StatusOK || out["chat"] != chat {
		t.Fatalf("send in chat %s: %d %v", chat, code, out)
	}
	return out["id"].(string)
}

// The node wires secret chats end to end: a chat opened and used through
// the admin API, its metadata and live counts, a forward refused, and
// offboarding a participant burns their live messages (the gauge drops to
// zero, the offboarding burn counter rises on /metrics).
func TestSecretChatThroughTheNode(t *testing.T) {
	d := startDingNode(t, nil)
	n := d.n
	nodetest.AddUsers(t, n, "cy")
	code, ch, _ := d.api(t, "POST", "/v1/secret-chats", map[string]any{"from": "ana", "to": "bo", "level": 2})
	if code != http.StatusCreated || ch["level"] != 2.0 || ch["burn_after_s"] != 30.0 || ch["creator"] != "ana" {
		t.Fatalf("create: %d %v", code, ch)
	}
	members := ch["members"].([]any)
	for i, want := range []string{"ana", "bo"} {
		m := members[i].(map[string]any)
		if m["user"] != want || !strings.HasPrefix(m["pseudonym"].(string), "anon-") {
			t.Fatalf("member %d: %v", i, m)
		}
	}
	chat := ch["id"].(string)
	const secretText = "the door code is 4711"
	m1 := d.secretSend(t, "ana", chat, secretText)
	d.secretSend(t, "bo", chat, "noted")
	if got := n.Engine().LiveSecrets(); got != 2 {
		t.Fatalf("LiveSecrets = %d, want 2", got)
	}
	if v := metricValue(t, n, "ding_secret_messages"); v != 2 {
		t.Fatalf("ding_secret_messages = %v, want 2", v)
	}
	if v := metricValue(t, n, `ding_secret_chats_created_total{level="2"}`); v != 1 {
		t.Fatalf("chats created = %v, want 1", v)
	}
	code, list, _ := d.api(t, "GET", "/v1/users/bo/secret-chats", nil)
	if code != 200 || len(list["chats"].([]any)) != 1 {
		t.Fatalf("bo's chats: %d %v", code, list)
	}
	if c := list["chats"].([]any)[0].(map[string]any); c["id"] != chat || c["live_messages"] != 2.0 {
		t.Fatalf("bo's chat: %v", c)
	}

	// A secret message is neither forwarded nor quoted, nor re-DINGed.
	for _, field := range []string{"forward_of", "quote_of"} {
		code, out, _ := d.api(t, "POST", "/v1/messages", map[string]any{"from": "bo", "to": []string{"cy"}, "text": "look", field: m1})
		if code != http.StatusConflict || errCode(out) != "NO_FORWARD" || !strings.Contains(out["error"].(map[string]any)["detail"].(string), "cannot be forwarded") {
			t.Fatalf("%s of a secret message: %d %v", field, code, out)
		}
	}
	if v := metricValue(t, n, `ding_secret_refusals_total{reason="forward"}`); v != 2 {
		t.Fatalf("refusals = %v, want 2", v)
	}
	if code, out, _ := d.api(t, "POST", "/v1/announcements/"+m1+"/reding", map[string]any{"policy": "inapp"}); code != http.StatusConflict || errCode(out) != "NO_FORWARD" {
		t.Fatalf("re-DING of a secret message: %d %v", code, out)
	}
	if h, _ := n.Engine().Head("cy"); h != 0 {
		t.Fatalf("a refused forward reached cy (head %d)", h)
	}

	// Admin views: metadata, never the body.
	for _, path := range []string{"/v1/messages/" + m1 + "/receipts", "/v1/messages/" + m1 + "/stats?lists=1",
		"/v1/secret-chats/" + chat, "/v1/users/ana/secret-chats", "/v1/users/bo/devices"} {
		code, out, _ := d.api(t, "GET", path, nil)
		if code != http.StatusOK || strings.Contains(fmt.Sprint(out), "4711") {
			t.Fatalf("GET %s: %d %v", path, code, out)
		}
	}
	if _, rc, _ := d.api(t, "GET", "/v1/messages/"+m1+"/receipts", nil); rc["chat"] != chat || rc["from"] != "ana" {
		t.Fatalf("receipts of a secret message: %v", rc)
	}

	// Offboarding bo burns both messages (each involves bo).
	before := metricValue(t, n, `ding_secret_burns_total{level="2",reason="offboarding"}`)
	if code, out, _ := d.api(t, "DELETE", "/v1/users/bo", nil); code != http.StatusOK {
		t.Fatalf("offboard bo: %d %v", code, out)
	}
	if got := n.Engine().LiveSecrets(); got != 0 {
		t.Fatalf("LiveSecrets after offboarding = %d, want 0", got)
	}
	if after := metricValue(t, n, `ding_secret_burns_total{level="2",reason="offboarding"}`); after != before+2 {
		t.Fatalf("offboarding burns %v -> %v, want +2", before, after)
	}
	if v := metricValue(t, n, "ding_secret_messages"); v != 0 {
		t.Fatalf("ding_secret_messages = %v after offboarding", v)
	}
	if _, err := n.Engine().Message(mustID(t, m1)); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("burned message: %v", err)
	}
	if code, c, _ := d.api(t, "GET", "/v1/secret-chats/"+chat, nil); code != 200 || c["live_messages"] != 0.0 {
		t.Fatalf("chat after offboarding: %d %v", code, c)
	}
	// The chat is dead: ana cannot write to a removed user in it.
	if code, out, _ := d.api(t, "POST", "/v1/messages", map[string]any{"from": "ana", "chat": chat, "text": "still there?"}); code != http.StatusUnprocessableEntity || errCode(out) != "UNKNOWN_RECIPIENT" {
		t.Fatalf("send to a removed participant: %d %v", code, out)
	}
	// Offboarding again burns nothing more and succeeds.
	if code, _, _ := d.api(t, "DELETE", "/v1/users/bo", nil); code != http.StatusOK {
		t.Fatalf("second offboarding: %d", code)
	}
}

func errCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

// node.Config's BurnAfter and SecretUnreadTTL reach the engine: a read
// message burns BurnAfter after the read, an unread level-2 message
// SecretUnreadTTL after it was sent.
func TestSecretBurnSettings(t *testing.T) {
	d := startDingNode(t, func(c *node.Config) {
		c.BurnAfter = 10 * time.Second
		c.SecretUnreadTTL = time.Hour
	})
	n := d.n
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	chat := d.secretChat(t, "ana", "bo", 2, 0)
	if _, c, _ := d.api(t, "GET", "/v1/secret-chats/"+chat, nil); c["burn_after_s"] != 10.0 {
		t.Fatalf("chat: %v", c)
	}
	read := d.secretSend(t, "ana", chat, "read me")
	d.secretSend(t, "ana", chat, "never read")
	if err := n.Engine().Read(ctx, "bo", mustID(t, read)); err != nil {
		t.Fatal(err)
	}
	d.clock.Advance(9 * time.Second)
	if got := n.Engine().LiveSecrets(); got != 2 {
		t.Fatalf("LiveSecrets = %d before the burn delay passed", got)
	}
	d.clock.Advance(time.Second)
	nodetest.WaitFor(t, "the read message to burn", 5*time.Second, func() bool { return n.Engine().LiveSecrets() == 1 })
	if v := metricValue(t, n, `ding_secret_burns_total{level="2",reason="read"}`); v != 1 {
		t.Fatalf("read burns = %v", v)
	}
	d.clock.Advance(time.Hour)
	nodetest.WaitFor(t, "the unread message to expire", 5*time.Second, func() bool { return n.Engine().LiveSecrets() == 0 })
	if v := metricValue(t, n, `ding_secret_burns_total{level="2",reason="unread_expiry"}`); v != 1 {
		t.Fatalf("unread expiries = %v", v)
	}
	// A level-3 chat may choose a delay up to BurnAfter, not beyond.
	if code, out, _ := d.api(t, "POST", "/v1/secret-chats", map[string]any{"from": "ana", "to": "bo", "level": 3, "burn_after_s": 11}); code != http.StatusBadRequest || errCode(out) != "BAD_CHAT" {
		t.Fatalf("level 3 with 11s over a 10s maximum: %d %v", code, out)
	}
}

// The keys of level-1 and level-2 messages are in DATA/secret.keys, not
// in the store, and survive a restart: the message is readable after it.
func TestSecretKeysSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	n := nodetest.Start(t, node.Config{DataDir: dir})
	nodetest.AddUsers(t, n, "ana", "bo")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch, err := n.Engine().CreateChat(ctx, engine.ChatRequest{From: "ana", To: "bo", Level: engine.Level1})
	if err != nil {
		t.Fatal(err)
	}
	res, err := n.Engine().Submit(ctx, engine.Submission{From: "ana", Chat: ch.ID, Kind: engine.KindText, Body: []byte("kept across restarts")})
	if err != nil {
		t.Fatal(err)
	}
	nodetest.Stop(t, n)
	if fi, err := os.Stat(filepath.Join(dir, node.SecretKeysFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("keyring file: %v %v", fi, err)
	}
	n = nodetest.Start(t, node.Config{DataDir: dir})
	es, err := n.Engine().Range("bo", 1, 10)
	if err != nil {
		t.Fatal(err)
	}
	var body string
	for _, e := range es {
		if e.Kind == engine.EntryMessage && e.Message.ID == res.ID {
			body = string(e.Message.Body)
		}
	}
	if body != "kept across restarts" {
		t.Fatalf("after a restart, bo's stream has %q", body)
	}
	if got := n.Engine().LiveSecrets(); got != 1 {
		t.Fatalf("LiveSecrets after a restart = %d, want 1", got)
	}
}
