package httpapi_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// secretSetup starts a node with users ana, bo, cy and a removed user
// zoe, and a level-1 chat between ana and bo with one message from ana.
func secretSetup(t *testing.T) (a api, n *node.Node, chat, msg string) {
	a, n = setup(t)
	for _, u := range []string{"ana", "bo", "cy", "zoe"} {
		a.ok("POST", "/v1/users", map[string]string{"id": u}, 201)
	}
	a.ok("DELETE", "/v1/users/zoe", nil, 200)
	ch := a.ok("POST", "/v1/secret-chats", map[string]any{"from": "ana", "to": "bo", "level": 1}, 201)
	chat = ch["id"].(string)
	msg = a.ok("POST", "/v1/messages", map[string]any{"from": "ana", "chat": chat, "text": "psst"}, 200)["id"].(string)
	return a, n, chat, msg
}

func TestSecretChatAPI(t *testing.T) {
	a, n, chat, msg := secretSetup(t)
	got := a.ok("GET", "/v1/secret-chats/"+chat, nil, 200)
	if got["id"] != chat || got["level"] != 1.0 || got["creator"] != "ana" || got["live_messages"] != 1.0 || got["created"] == "" {
		t.Fatalf("GET chat: %v", got)
	}
	var pseudonyms []string
	for i, m := range got["members"].([]any) {
		m := m.(map[string]any)
		if m["user"] != []string{"ana", "bo"}[i] {
			t.Fatalf("members: %v", got["members"])
		}
		pseudonyms = append(pseudonyms, m["pseudonym"].(string))
	}
	if pseudonyms[0] == pseudonyms[1] || !strings.HasPrefix(pseudonyms[0], "anon-") {
		t.Fatalf("pseudonyms %v", pseudonyms)
	}
	// bo answers; the chat is in both lists with two live messages.
	reply := a.ok("POST", "/v1/messages", map[string]any{"from": "bo", "chat": chat, "text": "ok", "client_msg_id": "r1"}, 200)
	again := a.ok("POST", "/v1/messages", map[string]any{"from": "bo", "chat": chat, "text": "ok", "client_msg_id": "r1"}, 200)
	if again["id"] != reply["id"] || again["duplicate"] != true {
		t.Fatalf("retry in a chat: %v then %v", reply, again)
	}
	for _, u := range []string{"ana", "bo"} {
		l := a.ok("GET", "/v1/users/"+u+"/secret-chats", nil, 200)
		cs := l["chats"].([]any)
		if l["user"] != u || len(cs) != 1 || cs[0].(map[string]any)["live_messages"] != 2.0 {
			t.Fatalf("%s's chats: %v", u, l)
		}
	}
	if l := a.ok("GET", "/v1/users/cy/secret-chats", nil, 200); len(l["chats"].([]any)) != 0 {
		t.Fatalf("cy's chats: %v", l)
	}
	// A level-3 chat with a burn delay of its own.
	c3 := a.ok("POST", "/v1/secret-chats", map[string]any{"from": "cy", "to": "ana", "level": 3, "burn_after_s": 5}, 201)
	if c3["burn_after_s"] != 5.0 || c3["level"] != 3.0 {
		t.Fatalf("level-3 chat: %v", c3)
	}
	// Forwarding and quoting an ordinary message still work.
	plain := a.ok("POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "hi"}, 200)["id"].(string)
	a.ok("POST", "/v1/messages", map[string]any{"from": "bo", "to": []string{"cy"}, "text": "fwd", "forward_of": plain}, 200)
	a.ok("POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"cy"}, "text": "re", "quote_of": plain}, 200)
	// The receipts of a secret message: admin metadata.
	rc := a.ok("GET", "/v1/messages/"+msg+"/receipts", nil, 200)
	rs, _ := rc["recipients"].([]any)
	if rc["chat"] != chat || rc["from"] != "ana" || len(rs) != 1 {
		t.Fatalf("receipts: %v", rc)
	}
	if r := rs[0].(map[string]any); r["user"] != "bo" || r["state"] != "sent" {
		t.Fatalf("receipt: %v", r)
	}
	if n.Engine().LiveSecrets() != 2 {
		t.Fatalf("LiveSecrets = %d", n.Engine().LiveSecrets())
	}
}

func TestSecretChatAPIErrors(t *testing.T) {
	a, n, chat, msg := secretSetup(t)
	heads := map[string]uint64{}
	for _, u := range []string{"ana", "bo", "cy"} {
		heads[u], _ = n.Engine().Head(u)
	}
	const unknownID = "01M8K8F2K5C97AM15Z94XS9NY4"
	create := func(from, to string, level, burn int) map[string]any {
		return map[string]any{"from": from, "to": to, "level": level, "burn_after_s": burn}
	}
	cases := []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"unknown participant", "POST", "/v1/secret-chats", create("ana", "zed", 1, 0), 422, "UNKNOWN_USER"},
		{"unknown creator", "POST", "/v1/secret-chats", create("zed", "ana", 1, 0), 422, "UNKNOWN_USER"},
		{"removed participant", "POST", "/v1/secret-chats", create("ana", "zoe", 1, 0), 422, "UNKNOWN_USER"},
		{"no participant", "POST", "/v1/secret-chats", map[string]any{"from": "ana", "level": 1}, 422, "UNKNOWN_USER"},
		{"with oneself", "POST", "/v1/secret-chats", create("ana", "ana", 1, 0), 400, "BAD_CHAT"},
		{"no level", "POST", "/v1/secret-chats", map[string]any{"from": "ana", "to": "bo"}, 400, "BAD_CHAT"},
		{"level 4", "POST", "/v1/secret-chats", create("ana", "bo", 4, 0), 400, "BAD_CHAT"},
		{"level -1", "POST", "/v1/secret-chats", create("ana", "bo", -1, 0), 400, "BAD_CHAT"},
		{"level 257", "POST", "/v1/secret-chats", create("ana", "bo", 257, 0), 400, "BAD_CHAT"},
		{"burn delay below level 3", "POST", "/v1/secret-chats", create("ana", "bo", 2, 10), 400, "BAD_CHAT"},
		{"burn delay under 5s", "POST", "/v1/secret-chats", create("ana", "bo", 3, 4), 400, "BAD_CHAT"},
		{"burn delay over the maximum", "POST", "/v1/secret-chats", create("ana", "bo", 3, 31), 400, "BAD_CHAT"},
		{"negative burn delay", "POST", "/v1/secret-chats", create("ana", "bo", 3, -5), 400, "BAD_CHAT"},
		{"huge burn delay", "POST", "/v1/secret-chats", create("ana", "bo", 3, 1<<62), 400, "BAD_CHAT"},
		{"fractional level", "POST", "/v1/secret-chats", `{"from":"ana","to":"bo","level":1.5}`, 400, "BAD_REQUEST"},
		{"unknown field", "POST", "/v1/secret-chats", map[string]any{"from": "ana", "to": "bo", "level": 1, "ttl": 3}, 400, "BAD_REQUEST"},
		{"malformed chat id", "GET", "/v1/secret-chats/nope", nil, 400, "BAD_REQUEST"},
		{"unknown chat", "GET", "/v1/secret-chats/" + unknownID, nil, 404, "NOT_FOUND"},
		{"chats of an unknown user", "GET", "/v1/users/zed/secret-chats", nil, 404, "NOT_FOUND"},
		{"send as a non-member", "POST", "/v1/messages", map[string]any{"from": "cy", "chat": chat, "text": "x"}, 403, "NOT_MEMBER"},
		{"send in an unknown chat", "POST", "/v1/messages", map[string]any{"from": "ana", "chat": unknownID, "text": "x"}, 403, "NOT_MEMBER"},
		{"send in a malformed chat", "POST", "/v1/messages", map[string]any{"from": "ana", "chat": "nope", "text": "x"}, 400, "BAD_REQUEST"},
		{"chat and to", "POST", "/v1/messages", map[string]any{"from": "ana", "chat": chat, "to": []string{"bo"}, "text": "x"}, 400, "BAD_REQUEST"},
		{"forward into a chat", "POST", "/v1/messages", map[string]any{"from": "ana", "chat": chat, "text": "x", "forward_of": msg}, 409, "NO_FORWARD"},
		{"forward of a secret message", "POST", "/v1/messages", map[string]any{"from": "bo", "to": []string{"cy"}, "text": "x", "forward_of": msg}, 409, "NO_FORWARD"},
		{"quote of a secret message", "POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"cy"}, "text": "x", "quote_of": msg}, 409, "NO_FORWARD"},
		{"forward of someone else's message", "POST", "/v1/messages", map[string]any{"from": "cy", "to": []string{"ana"}, "text": "x", "forward_of": msg}, 409, "NO_FORWARD"},
		{"forward of an unknown message", "POST", "/v1/messages", map[string]any{"from": "cy", "to": []string{"ana"}, "text": "x", "forward_of": unknownID}, 404, "NOT_FOUND"},
		{"malformed forward_of", "POST", "/v1/messages", map[string]any{"from": "cy", "to": []string{"ana"}, "text": "x", "forward_of": "x"}, 400, "BAD_REQUEST"},
		{"re-DING of a secret message", "POST", "/v1/announcements/" + msg + "/reding", map[string]any{"policy": "inapp"}, 409, "NO_FORWARD"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a.t = t
			a.refused(c.method, c.path, a.tok, c.body, c.status, c.code)
		})
	}
	a.t = t
	// A message the sender neither sent nor received.
	plain := a.ok("POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "hi"}, 200)["id"].(string)
	heads["bo"]++
	a.refused("POST", "/v1/messages", a.tok, map[string]any{"from": "cy", "to": []string{"ana"}, "text": "x", "forward_of": plain}, 403, "NOT_RECIPIENT")
	for u, want := range heads {
		if h, _ := n.Engine().Head(u); h != want {
			t.Errorf("%s's head %d, want %d: a refused request reached a stream", u, h, want)
		}
	}
}

// A backup (a checkpoint of the store) holds no secret message keys and no
// plaintext of a secret message; a node started on it has the ordinary
// messages but cannot read the secret one, which its stream shows as
// burned.
func TestBackupHoldsNoSecretContent(t *testing.T) {
	a, n := setup(t)
	a.ok("POST", "/v1/users", map[string]string{"id": "ana"}, 201)
	a.ok("POST", "/v1/users", map[string]string{"id": "bo"}, 201)
	chat := a.ok("POST", "/v1/secret-chats", map[string]any{"from": "ana", "to": "bo", "level": 2}, 201)["id"].(string)
	const secretText = "launch code zx-81-secret-payload"
	sid := a.ok("POST", "/v1/messages", map[string]any{"from": "ana", "chat": chat, "text": secretText}, 200)["id"].(string)
	pid := a.ok("POST", "/v1/messages", map[string]any{"from": "ana", "to": []string{"bo"}, "text": "plain lunch"}, 200)["id"].(string)
	if _, err := os.Stat(filepath.Join(n.DataDir(), node.SecretKeysFile)); err != nil {
		t.Fatalf("the live node has no keyring: %v", err)
	}
	dir := a.ok("POST", "/v1/backup", map[string]string{"dir": "bk"}, 200)["dir"].(string)
	files := 0
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		files++
		if de.Name() == node.SecretKeysFile {
			t.Errorf("the backup has %s", p)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(secretText)) {
			t.Errorf("%s holds the secret message's plaintext", p)
		}
		return nil
	})
	if err != nil || files == 0 {
		t.Fatalf("walk backup: %d files, %v", files, err)
	}
	data := t.TempDir()
	if err := os.Rename(dir, filepath.Join(data, "store")); err != nil {
		t.Fatal(err)
	}
	n2 := nodetest.Start(t, node.Config{DataDir: data})
	if m, err := n2.Engine().Message(mustParse(t, pid)); err != nil || string(m.Body) != "plain lunch" {
		t.Fatalf("plain message from the backup: %v %v", m, err)
	}
	// Its key is not in the backup: it cannot be read (below), and the
	// restored node burns it (reason key_lost) in the background.
	es, err := n2.Engine().Range("bo", 1, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.Kind == engine.EntryMessage && e.Message.ID.String() == sid {
			t.Fatalf("bo's stream from the backup delivers the secret message: %+v", e.Message)
		}
	}
	// (The live count moves when the burn's batch is published, a moment
	// after the store shows the message gone.)
	nodetest.WaitFor(t, "the keyless secret message to burn", 5*time.Second, func() bool {
		_, err := n2.Engine().Message(mustParse(t, sid))
		return errors.Is(err, engine.ErrNotFound) && n2.Engine().LiveSecrets() == 0
	})
}

func mustParse(t *testing.T, s string) engine.ID {
	t.Helper()
	id, err := engine.ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
