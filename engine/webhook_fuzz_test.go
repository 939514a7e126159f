package engine

import (
	"reflect"
	"testing"
	"time"
)

// FuzzDecodeWebhookRecords: the outbox's records (event, subscription,
// dead letter) never panic on any input, and whatever decodes survives a
// round trip unchanged.
func FuzzDecodeWebhookRecords(f *testing.F) {
	ev := WebhookEvent{Seq: 7, Type: HookDingPrefix + "confirmed", At: time.UnixMilli(1700000000123).UTC(),
		Data: []Attr{S("ding", "01M91C4J8R6SAXHA53DQMEA8TC"), N("answer", 2), N("neg", -5)}}
	f.Add(byte(0), appendHookEvent(nil, &ev))
	f.Add(byte(1), encodeWebhook(&Webhook{URL: "https://crm.example/h", Events: []string{"ding.*", "user.added"}, Secret: "whsec_AAAA", Description: "crm", Paused: true, Created: time.UnixMilli(1700000000000).UTC()}))
	f.Add(byte(2), encodeDeadLetter(&DeadLetter{Event: ev, Attempts: 12, LastError: "status 500", Parked: time.UnixMilli(1700000001000).UTC(), Replay: true, ReplayAt: time.UnixMilli(1700000002000).UTC()}))
	f.Fuzz(func(t *testing.T, kind byte, b []byte) {
		switch kind % 3 {
		case 0:
			ev, err := parseHookEvent(7, b)
			if err != nil {
				return
			}
			again, err := parseHookEvent(7, appendHookEvent(nil, &ev))
			if err != nil || !reflect.DeepEqual(ev, again) {
				t.Fatalf("event round trip: %+v / %+v (%v)", ev, again, err)
			}
		case 1:
			w, err := decodeWebhook("wh_1", b)
			if err != nil {
				return
			}
			again, err := decodeWebhook("wh_1", encodeWebhook(&w))
			if err != nil || !reflect.DeepEqual(w, again) {
				t.Fatalf("subscription round trip: %+v / %+v (%v)", w, again, err)
			}
		case 2:
			dl, err := decodeDeadLetter(7, b)
			if err != nil {
				return
			}
			again, err := decodeDeadLetter(7, encodeDeadLetter(&dl))
			if err != nil || !reflect.DeepEqual(dl, again) {
				t.Fatalf("dead letter round trip: %+v / %+v (%v)", dl, again, err)
			}
		}
	})
}
