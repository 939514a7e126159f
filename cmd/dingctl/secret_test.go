package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/internal/fakeclock"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

func TestSecretCommands(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	nodetest.AddUsers(t, n, "ana", "bo", "cy")
	out, err := ctl(t, n, "secret", "create", "--from", "ana", "--to", "bo", "--level", "1")
	if err != nil {
		t.Fatal(err)
	}
	chat := strings.TrimSpace(out)
	if len(chat) != 26 || strings.Contains(out[:len(out)-1], "\n") {
		t.Fatalf("secret create printed %q, want one id line", out)
	}
	out, err = ctl(t, n, "secret", "create", "--from", "bo", "--to", "cy", "--level", "3", "--burn-after", "10s", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var c3 struct {
		ID         string
		Level      int
		BurnAfterS int `json:"burn_after_s"`
		Members    []struct{ User, Pseudonym string }
	}
	if err := json.Unmarshal([]byte(out), &c3); err != nil || c3.Level != 3 || c3.BurnAfterS != 10 || len(c3.Members) != 2 ||
		c3.Members[0].User != "bo" || !strings.HasPrefix(c3.Members[1].Pseudonym, "anon-") {
		t.Fatalf("secret create --json printed %s (%v)", out, err)
	}

	out, err = ctl(t, n, "send", "--chat", chat, "--from", "ana", "for", "your", "eyes", "only")
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.TrimSpace(out)
	if len(msg) != 26 {
		t.Fatalf("send --chat printed %q", out)
	}
	out, err = ctl(t, n, "secret", "list", "--user", "bo")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		User  string
		Chats []struct {
			ID   string
			Live int `json:"live_messages"`
		}
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || list.User != "bo" || len(list.Chats) != 2 ||
		list.Chats[0].ID != chat || list.Chats[0].Live != 1 || list.Chats[1].ID != c3.ID || list.Chats[1].Live != 0 {
		t.Fatalf("secret list printed %s (%v)", out, err)
	}
	out, err = ctl(t, n, "secret", "show", chat)
	if err != nil || !strings.Contains(out, `"live_messages": 1`) || !strings.Contains(out, `"user": "ana"`) || strings.Contains(out, "eyes") {
		t.Fatalf("secret show printed %s (%v)", out, err)
	}
	out, err = ctl(t, n, "receipts", msg)
	if err != nil || !strings.Contains(out, `"chat": "`+chat+`"`) || strings.Contains(out, "eyes") {
		t.Fatalf("receipts of a secret message: %s (%v)", out, err)
	}

	// Forwards and quotes: of an ordinary message fine, of a secret one refused.
	out, err = ctl(t, n, "send", "--from", "ana", "--to", "bo", "plain")
	if err != nil {
		t.Fatal(err)
	}
	plain := strings.TrimSpace(out)
	if _, err := ctl(t, n, "send", "--from", "bo", "--to", "cy", "--forward-of", plain, "fyi"); err != nil {
		t.Fatalf("forward of a plain message: %v", err)
	}
	if _, err := ctl(t, n, "send", "--from", "ana", "--to", "cy", "--quote-of", plain, "re"); err != nil {
		t.Fatalf("quote of a plain message: %v", err)
	}

	checkErrors(t, n, []ctlErr{
		{[]string{"send", "--from", "bo", "--to", "cy", "--forward-of", msg, "look"}, "NO_FORWARD: secret messages cannot be forwarded or quoted", 1},
		{[]string{"send", "--from", "ana", "--to", "cy", "--quote-of", msg, "look"}, "NO_FORWARD", 1},
		{[]string{"send", "--from", "cy", "--chat", chat, "hi"}, "NOT_MEMBER", 1},
		{[]string{"send", "--from", "ana", "--chat", chat, "--to", "bo", "hi"}, "either --to or --chat", 2},
		{[]string{"secret", "create", "--from", "ana", "--to", "zed", "--level", "1"}, "UNKNOWN_USER", 1},
		{[]string{"secret", "create", "--from", "ana", "--to", "bo", "--level", "4"}, "BAD_CHAT", 1},
		{[]string{"secret", "create", "--from", "ana", "--to", "ana", "--level", "1"}, "BAD_CHAT", 1},
		{[]string{"secret", "create", "--from", "ana", "--to", "bo", "--level", "1", "--burn-after", "10s"}, "BAD_CHAT", 1},
		{[]string{"secret", "create", "--from", "ana", "--to", "bo", "--level", "3", "--burn-after", "1500ms"}, "whole seconds", 2},
		{[]string{"secret", "create", "--from", "ana", "--to", "bo"}, "--level", 2},
		{[]string{"secret", "list"}, "--user", 2},
		{[]string{"secret", "list", "--user", "zed"}, "NOT_FOUND", 1},
		{[]string{"secret", "show", "nope"}, "BAD_REQUEST", 1},
		{[]string{"secret", "show"}, "exactly one chat id", 2},
		{[]string{"secret"}, "want create, list or show", 2},
		{[]string{"secret", "burn"}, "unknown subcommand", 2},
	})
	if got := n.Engine().LiveSecrets(); got != 1 {
		t.Fatalf("LiveSecrets = %d, want 1", got)
	}
}

// listen shows a secret message with its flags and pseudonyms, and its
// burn as an object of its own kind carrying the id only.
func TestListenShowsSecretMessagesAndBurns(t *testing.T) {
	clk := fakeclock.New(time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC))
	n := nodetest.Start(t, node.Config{Clock: clk})
	nodetest.AddUsers(t, n, "ana", "bo")
	out, err := ctl(t, n, "secret", "create", "--from", "ana", "--to", "bo", "--level", "2")
	if err != nil {
		t.Fatal(err)
	}
	chat := strings.TrimSpace(out)
	out, err = ctl(t, n, "send", "--chat", chat, "--from", "ana", "burn", "after", "reading")
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.TrimSpace(out)
	out, err = ctl(t, n, "listen", "--user", "bo", "--device", "phone", "--read", "--count", "2", "--timeout", "5s")
	if err != nil {
		t.Fatalf("bo's listen: %q %v", out, err)
	}
	lines := jsonLines(t, out)
	created, m := lines[0], lines[len(lines)-1]
	if created["type"] != "secret_event" || created["event"] != "created" || created["chat"] != chat {
		t.Fatalf("first entry: %v", created)
	}
	if m["type"] != "message" || m["id"] != msg || m["body"] != "burn after reading" || m["chat"] != chat ||
		m["no_copy"] != true || m["no_forward"] != true || m["watermark"] != created["you"] || m["from"] != created["peer"] {
		t.Fatalf("secret message: %v", m)
	}
	clk.Advance(30 * time.Second)
	nodetest.WaitFor(t, "the message to burn", 5*time.Second, func() bool { return n.Engine().LiveSecrets() == 0 })
	// ana's stream: the chat, bo's receipts under his pseudonym, the burn.
	out, err = ctl(t, n, "listen", "--user", "ana", "--device", "laptop", "--timeout", "1s")
	if err != nil {
		t.Fatal(err)
	}
	var burn map[string]any
	for _, l := range jsonLines(t, out) {
		switch l["type"] {
		case "burn":
			burn = l
		case "receipt":
			if l["user"] != m["watermark"] {
				t.Errorf("ana's receipt names %v, want bo's pseudonym %v", l["user"], m["watermark"])
			}
		}
	}
	if burn == nil || burn["id"] != msg || len(burn) != 3 {
		t.Fatalf("ana's burn event: %v (listen printed %s)", burn, out)
	}
	// A device of bo's that was offline resumes from the start: it gets
	// burns, never the message.
	out, err = ctl(t, n, "listen", "--user", "bo", "--device", "laptop", "--cursor", "0", "--timeout", "1s")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "burn after reading") || strings.Count(out, `"type":"burn"`) != 2 {
		t.Fatalf("bo's offline device got %s", out)
	}
}

func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var res []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not JSON: %q", l)
		}
		res = append(res, m)
	}
	return res
}
