package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/push"
	"github.com/dingmq/ding/channels/push/pushtest"
	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// Push end to end: a real node (Pebble, the fake clock, Twilio's fake),
// devices registering over real sockets, the real apns2 and FCM clients
// against the fakes on loopback.

const pushAPNsToken = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"

type pushNode struct {
	*dingNode
	push *pushtest.Server
}

func startPushNode(t *testing.T) *pushNode {
	t.Helper()
	return startPushNodeWith(t, nil)
}

// startPushNodeWith is startPushNode with mod's changes to the config.
func startPushNodeWith(t *testing.T, mod func(*node.Config)) *pushNode {
	t.Helper()
	srv, err := pushtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	key, err := srv.WriteAPNsKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	sa, err := srv.WriteServiceAccount(dir)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := srv.WriteCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	d := startDingNode(t, func(c *node.Config) {
		c.Push = push.Config{APNsKeyFile: key, APNsKeyID: srv.KeyID, APNsTeamID: srv.TeamID, APNsEndpoint: srv.APNsURL(),
			FCMCredentialsFile: sa, FCMEndpoint: srv.FCMURL(), CAFile: ca, Coalesce: 10 * time.Second}
		if mod != nil {
			mod(c)
		}
	})
	return &pushNode{d, srv}
}

func (p *pushNode) waitPushes(t *testing.T, n int) []pushtest.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := p.push.Wait(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A device registers over the socket and goes away; a message to it is
// pushed once; while it is connected nothing is pushed; a bad
// registration gets a clear error; the admin API lists it without its
// token; offboarding removes it and stops pushes.
func TestPushRegistrationAndOfflineMessage(t *testing.T) {
	p := startPushNode(t)
	ctx := context.Background()
	phone := nodetest.Dial(t, p.n, "bo", "iphone", nil)
	err := phone.RegisterPush(ctx, client.PushToken{Provider: "apns", Token: "abc", Topic: "com.example.ding"})
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code.String() != "BAD_REQUEST" || !strings.Contains(ce.Detail, "64 or more hex digits") {
		t.Fatalf("bad token: %v, want BAD_REQUEST saying what a token is", err)
	}
	if err := phone.RegisterPush(ctx, client.PushToken{Provider: "apns", Token: pushAPNsToken, Topic: "com.example.ding"}); err != nil {
		t.Fatal(err)
	}
	code, out, _ := p.api(t, "GET", "/v1/users/bo/push", nil)
	if b, _ := json.Marshal(out); code != 200 || strings.Contains(string(b), pushAPNsToken) || !strings.Contains(string(b), `"iphone"`) {
		t.Fatalf("GET /v1/users/bo/push: %d %s", code, b)
	}
	// Connected: the socket delivers, nothing is pushed.
	ana := nodetest.Dial(t, p.n, "ana", "laptop", nil)
	if _, err := ana.Send(ctx, []string{"bo"}, []byte("while you are here")); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-phone.Entries():
		phone.Ack(e.Seq) // the app has it: it is not pushed, now or later
	case <-time.After(5 * time.Second):
		t.Fatal("no delivery to the connected phone")
	}
	nodetest.WaitFor(t, "the phone's ack durable", 5*time.Second, func() bool {
		c, ok, err := p.n.Engine().Cursor("bo", "iphone")
		return err == nil && ok && c >= 1
	})
	phone.Close()
	nodetest.WaitFor(t, "the phone gone from the hub", 5*time.Second, func() bool {
		code, out, _ := p.api(t, "GET", "/v1/users/bo/devices", nil)
		b, _ := json.Marshal(out)
		return code == 200 && !strings.Contains(string(b), `"online":true`)
	})
	if n := len(p.push.Requests()); n != 0 {
		t.Fatalf("%d pushes to a connected device", n)
	}
	if _, err := ana.Send(ctx, []string{"bo"}, []byte("are you there?")); err != nil {
		t.Fatal(err)
	}
	r := p.waitPushes(t, 1)[0]
	var body struct {
		Aps struct {
			Alert struct{ Title, Body string } `json:"alert"`
			Badge int                          `json:"badge"`
		} `json:"aps"`
	}
	if err := r.JSON(&body); err != nil || r.Token != pushAPNsToken || body.Aps.Alert.Title != "New message from Ana" || body.Aps.Alert.Body != "" || body.Aps.Badge != 1 {
		t.Fatalf("push %s to %s (%v)", r.Body, r.Token, err)
	}
	if strings.Contains(string(r.Body), "are you there") {
		t.Fatal("the text in a push without --push-preview")
	}

	// Offboarding removes the registration; nothing more is pushed.
	if code, out, _ := p.api(t, "DELETE", "/v1/users/bo", nil); code != 200 {
		t.Fatalf("offboard: %d %v", code, out)
	}
	if code, _, _ := p.api(t, "GET", "/v1/users/bo/push", nil); code != http.StatusNotFound {
		t.Fatalf("GET push of an offboarded user: %d", code)
	}
	if got := p.n.Engine().PushTokenCount(); got != 0 {
		t.Fatalf("%d tokens after offboarding", got)
	}
}

// A DING's default policy pushes at once (push configured), with the
// choices as actions; the app's CONFIRM from the notification's action
// stops the SMS step; push_opened is recorded.
func TestDingPushStepThenConfirmFromNotification(t *testing.T) {
	p := startPushNode(t)
	ctx := context.Background()
	pixel := nodetest.Dial(t, p.n, "bo", "pixel", nil)
	if err := pixel.RegisterPush(ctx, client.PushToken{Provider: "fcm", Token: "fcm-token-0123456789:bo-pixel"}); err != nil {
		t.Fatal(err)
	}
	id := p.ding(t, map[string]any{"to": []string{"bo"}, "text": "prod is down", "choices": []string{"on it", "can't"}})
	r := p.waitPushes(t, 1)[0]
	var m struct {
		Message struct {
			Data    map[string]string         `json:"data"`
			Android struct{ Priority string } `json:"android"`
		} `json:"message"`
	}
	if err := r.JSON(&m); err != nil || m.Message.Android.Priority != "HIGH" || m.Message.Data["ding"] != id ||
		m.Message.Data["actions"] != `["ding.confirm.1","ding.confirm.2"]` {
		t.Fatalf("DING push %s", r.Body)
	}
	p.waitEvent(t, id, 0, "push_sent")
	// The app, woken by the notification, reports it opened and confirms
	// with the action's answer, over its socket.
	if err := pixel.PushOpened(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := pixel.Confirm(ctx, id, 1); err != nil {
		t.Fatal(err)
	}
	if n := p.n.Engine().PendingSteps(); n != 0 {
		t.Fatalf("%d escalation steps still armed after the confirmation", n) // the SMS and the call would follow
	}
	p.clock.Advance(20 * time.Minute)
	evs := p.waitEvent(t, id, 0, "confirmed")
	for _, want := range []string{"push_sent", "push_opened", "confirmed"} {
		if !contains(evs, want) {
			t.Fatalf("ledger %v has no %s", evs, want)
		}
	}
	if n := p.twilio.Count("sms") + p.twilio.Count("call"); n != 0 {
		t.Fatalf("%d SMS or calls after a confirmation from the notification", n)
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// A DING's push step due while dingd is down fires after the restart,
// through the real FCM client; the confirmation from the notification
// (the app's CONFIRM) then stops the SMS step.
func TestDingPushStepAfterRestart(t *testing.T) {
	p := startPushNode(t)
	if code, out, _ := p.api(t, "PUT", "/v1/users/bo/push/pixel", map[string]any{"provider": "fcm", "token": "fcm-token-0123456789:bo-pixel"}); code != 200 {
		t.Fatalf("register: %d %v", code, out)
	}
	id := p.ding(t, map[string]any{"to": []string{"bo"}, "text": "disk full", "policy": "inapp,push@1m,sms@5m"})
	nodetest.Stop(t, p.n)
	if n := len(p.push.Requests()); n != 0 {
		t.Fatalf("%d pushes before the step's time", n)
	}
	p.start(t)
	p.clock.Advance(2 * time.Minute) // overdue: fires at once
	r := p.waitPushes(t, 1)[0]
	if r.Provider != pushtest.FCM || !strings.Contains(string(r.Body), id) {
		t.Fatalf("push %s %s", r.Provider, r.Body)
	}
	p.waitEvent(t, id, 0, "push_sent")
	pixel := nodetest.Dial(t, p.n, "bo", "pixel", nil)
	if err := pixel.Confirm(context.Background(), id, 0); err != nil {
		t.Fatal(err)
	}
	if n := p.n.Engine().PendingSteps(); n != 0 {
		t.Fatalf("%d escalation steps still armed after the confirmation", n) // the SMS would follow
	}
	p.clock.Advance(10 * time.Minute)
	p.waitEvent(t, id, 0, "confirmed")
	if n := p.twilio.Count("sms"); n != 0 {
		t.Fatalf("%d SMS after the confirmation", n)
	}
	if n := len(p.push.Requests()); n != 1 {
		t.Fatalf("%d pushes, want one", n)
	}
}

// With several partitions, a device registers with its user's
// partition (over the socket and the admin API), and a message from a
// user of another partition, relayed to it, is pushed while the device
// is offline.
func TestPushWithPartitions(t *testing.T) {
	p := startPushNodeWith(t, func(c *node.Config) { c.Partitions = testPartitions })
	wantPartitions(t, p.n, map[string]int{"ana": 2, "bo": 0})
	ctx := context.Background()
	phone := nodetest.Dial(t, p.n, "bo", "iphone", nil)
	if err := phone.RegisterPush(ctx, client.PushToken{Provider: "apns", Token: pushAPNsToken, Topic: "com.example.ding"}); err != nil {
		t.Fatal(err)
	}
	code, out, _ := p.api(t, "GET", "/v1/users/bo/push", nil)
	if b, _ := json.Marshal(out); code != 200 || !strings.Contains(string(b), `"iphone"`) {
		t.Fatalf("GET /v1/users/bo/push: %d %s", code, b)
	}
	phone.Close()
	nodetest.WaitFor(t, "the phone gone from the hub", 5*time.Second, func() bool {
		code, out, _ := p.api(t, "GET", "/v1/users/bo/devices", nil)
		b, _ := json.Marshal(out)
		return code == 200 && !strings.Contains(string(b), `"online":true`)
	})
	ana := nodetest.Dial(t, p.n, "ana", "laptop", nil)
	if _, err := ana.Send(ctx, []string{"bo"}, []byte("across partitions")); err != nil {
		t.Fatal(err)
	}
	r := p.waitPushes(t, 1)[0]
	if r.Token != pushAPNsToken || !strings.Contains(string(r.Body), "New message from Ana") || strings.Contains(string(r.Body), "across partitions") {
		t.Fatalf("push %s to %s", r.Body, r.Token)
	}
	if n := p.n.Engines()[0].PushTokenCount(); n != 1 {
		t.Fatalf("bo's partition holds %d tokens, want 1", n)
	}
}
