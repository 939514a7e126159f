package webhook_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"

	"github.com/dingmq/ding/channels/webhook"
	"github.com/dingmq/ding/engine"
)

// verifyDing is what a receiver writes, with the standard library only
// (README "Integrations" shows this function): it recomputes the
// signature over the raw body and refuses a stale timestamp.
func verifyDing(secret string, r *http.Request, body []byte) bool {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return false
	}
	id, ts := r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || time.Since(time.Unix(sec, 0)).Abs() > 5*time.Minute {
		return false // a replay, or a clock far off
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	for _, sig := range strings.Fields(r.Header.Get("webhook-signature")) {
		if hmac.Equal([]byte(sig), []byte(want)) {
			return true
		}
	}
	return false
}

// A receiver verifies a delivery signed as the dispatcher signs it.
func Example_verify() {
	secret := engine.NewWebhookSecret()
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !verifyDing(secret, r, body) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		fmt.Println("verified", r.Header.Get("webhook-id"))
	}))
	defer rcv.Close()
	ev := engine.WebhookEvent{Seq: 42, Type: engine.HookUserAdded, At: time.Now(), Data: []engine.Attr{engine.S("user", "ana")}}
	body := webhook.Body("0", &ev)
	ts := time.Now().Unix()
	sig, _ := webhook.Sign(secret, "evt_0_42", ts, body)
	req, _ := http.NewRequest("POST", rcv.URL, strings.NewReader(string(body)))
	req.Header.Set("webhook-id", "evt_0_42")
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("webhook-signature", sig)
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
	}
	// Output: verified evt_0_42
}
