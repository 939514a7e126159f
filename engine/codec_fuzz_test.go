package engine

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func FuzzDecodeMessage(f *testing.F) {
	m := &Message{From: "ana", To: []string{"bo", "cy"}, Kind: KindText, Body: []byte("hello"), Created: time.UnixMilli(1700000000000), ClientID: "c1"}
	f.Add(encodeMessage(m))
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMessage(ID{}, b)
		if err != nil {
			return
		}
		// Whatever decodes must survive a round trip unchanged.
		again, err := decodeMessage(ID{}, encodeMessage(m))
		if err != nil || !reflect.DeepEqual(m, again) {
			t.Fatalf("round trip differs: %+v / %+v (%v)", m, again, err)
		}
	})
}

func FuzzDecodeEntry(f *testing.F) {
	f.Add(encodeEntry(&Entry{Kind: EntryMessage, Message: &Message{From: "ana"}}))
	f.Add(encodeEntry(&Entry{Kind: EntryReceipt, Receipt: &ReceiptEvent{IDs: []ID{{1}, {2}}, User: "bo", State: StateRead, At: time.UnixMilli(5)}}))
	f.Add(encodeEntry(&Entry{Kind: EntryMessage, Message: &Message{From: "ana", Chat: ID{9}}}))
	f.Add(encodeEntry(&Entry{Kind: EntryBurn, Burn: ID{7}}))
	f.Add(encodeEntry(&Entry{Kind: EntrySecret, Secret: &SecretEvent{Chat: ID{3}, Event: "created", By: "anon-ABCDEF", Level: Level3, BurnAfter: 5 * time.Second, You: "anon-ABCDEF", Peer: "anon-GHJKMN", At: time.UnixMilli(9)}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, id, sender, err := decodeEntry(1, b)
		if err != nil {
			return
		}
		if e.Kind == EntryMessage {
			e.Message = &Message{ID: id, From: string(sender)}
		}
		again, id2, sender2, err := decodeEntry(1, encodeEntry(&e))
		if err != nil || id2 != id || string(sender2) != string(sender) || again.Kind != e.Kind || again.Burn != e.Burn || !reflect.DeepEqual(again.Secret, e.Secret) || (e.Kind == EntryReceipt && (again.Receipt.User != e.Receipt.User || again.Receipt.State != e.Receipt.State || !again.Receipt.At.Equal(e.Receipt.At) || !reflect.DeepEqual(again.Receipt.IDs, e.Receipt.IDs))) {
			t.Fatalf("round trip differs: %+v / %+v (%v)", e, again, err)
		}
	})
}

func FuzzDecodeRollup(f *testing.F) {
	r := &Rollup{MessagesSent: 3, Outcomes: map[string]uint64{OutcomeUnanswered: 2}, TimeToRead: make([]uint32, len(latencyBuckets)), SMS: 1}
	r.TimeToRead[3] = 7
	f.Add(encodeRollup(r))
	f.Add(encodeRollup(&Rollup{}))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Rollup
		if decodeRollup(b, &r) != nil {
			return
		}
		var again Rollup
		if err := decodeRollup(encodeRollup(&r), &again); err != nil || !reflect.DeepEqual(r, again) {
			t.Fatalf("round trip differs: %+v / %+v (%v)", r, again, err)
		}
	})
}

func FuzzDecodeMessageWithChoices(f *testing.F) {
	f.Add(encodeMessage(&Message{From: "ana", To: []string{"group:x"}, Kind: KindDing, Body: []byte("up?"), Choices: []string{"yes", "no"}, Flags: FlagConfirm}))
	f.Add(encodeMessage(&Message{From: "ana", To: []string{"bo"}, Kind: KindText, Body: []byte("sealed"), Chat: ID{1}}))
	f.Add(encodeMessage(&Message{From: "ana", To: []string{"bo"}, Kind: KindText, Body: []byte("fwd"), Forward: ID{2}, Quote: ID{3}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMessage(ID{}, b)
		if err != nil {
			return
		}
		again, err := decodeMessage(ID{}, encodeMessage(m))
		if err != nil || !reflect.DeepEqual(m, again) {
			t.Fatalf("round trip differs: %+v / %+v (%v)", m, again, err)
		}
	})
}

// fuzzRecord fuzzes a record decoder, seeded with the binary and the old
// JSON form of each of seeds. Whatever decodes must re-encode to a record
// that decodes to the same value; a binary record decodes to exactly what
// it re-encodes to (a JSON one may differ in what no encoding shows: an
// empty list that was [] rather than null, a zone's name).
func fuzzRecord[T any](f *testing.F, c codec[T], seeds []T) {
	for _, v := range seeds {
		f.Add(c.enc(&v))
		old, err := json.Marshal(&v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(old)
	}
	f.Add([]byte{recordVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		var v T
		if c.dec(b, &v) != nil {
			return
		}
		enc := c.enc(&v)
		var again T
		if err := c.dec(enc, &again); err != nil {
			t.Fatalf("%x decodes, its re-encoding %x does not: %v", b, enc, err)
		}
		if !bytes.Equal(c.enc(&again), enc) || (!isJSON(b) && !reflect.DeepEqual(v, again)) {
			t.Fatalf("round trip differs: %+v / %+v", v, again)
		}
	})
}

func FuzzDecodeRcptState(f *testing.F)   { fuzzRecord(f, rcptStateCodec, sampleRcptStates) }
func FuzzDecodeDingRecord(f *testing.F)  { fuzzRecord(f, dingRecordCodec, sampleDingRecords) }
func FuzzDecodeLedgerEvent(f *testing.F) { fuzzRecord(f, ledgerEventCodec, sampleLedgerEvents) }
func FuzzDecodeSecretState(f *testing.F) { fuzzRecord(f, secretStateCodec, sampleSecretStates) }
func FuzzDecodeChat(f *testing.F)        { fuzzRecord(f, chatCodec, sampleChats) }
func FuzzDecodeAnnouncementCounts(f *testing.F) {
	fuzzRecord(f, annCountsCodec, sampleAnnCounts)
}
func FuzzDecodeFanoutJob(f *testing.F) { fuzzRecord(f, fanoutJobCodec, sampleFanoutJobs) }

func FuzzDecodeRelayRecord(f *testing.F) {
	f.Add(encodeRelayRecord(&RelayRecord{Kind: RelayMessage, Msg: &Message{ID: ID{1, 2}}, Users: []string{"bo", "cy"}}))
	f.Add(encodeRelayRecord(&RelayRecord{Kind: RelayEntry, User: "ana", Entry: Entry{Kind: EntryReceipt, Receipt: &ReceiptEvent{IDs: []ID{{1}}, User: "bo", State: StateRead, At: time.UnixMilli(5)}}}))
	f.Add(encodeRelayRecord(&RelayRecord{Kind: RelayEntry, User: "ana", Entry: Entry{Kind: EntryBurn, Burn: ID{7}}}))
	f.Add(encodeRelayRecord(&RelayRecord{Kind: RelayReceipt, User: "bo", IDs: []ID{{1}, {2}}, State: StateDelivered, At: time.UnixMilli(1700000000123), Device: "phone"}))
	f.Add(encodeRelayRecord(&RelayRecord{Kind: RelayReceipt, User: "cy", IDs: []ID{{3}}, State: StateConfirmed, At: time.UnixMilli(5), Answer: 2}))
	f.Add(encodeRelayRecord(&RelayRecord{Kind: RelayReceipt, User: "cy", IDs: []ID{{3}}, State: StateRead, At: time.UnixMilli(-1)}))
	f.Add(encodeRelayRecord(&RelayRecord{Kind: RelayMessage, Msg: &Message{ID: ID{3}}, Users: []string{"bo"}, Secret: &RelaySecret{ID: ID{3}, Chat: ID{4}}}))
	f.Add(encodeRelayRecord(&RelayRecord{Kind: RelayChat, Chat: &Chat{ID: ID{4}, Level: Level3, BurnAfter: 5 * time.Second, Creator: "ana", Created: time.UnixMilli(9),
		Members: []Member{{"ana", "anon-AAAAAA"}, {"bo", "anon-BBBBBB"}}}}))
	f.Add([]byte{recordVersion, byte(RelayEntry), 0})
	f.Add([]byte{recordVersion, byte(RelayReceipt), 2, 'b', 'o', byte(StateSent), 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, id, err := decodeRelayRecord(b)
		if err != nil {
			return
		}
		if r.Kind == RelayMessage {
			r.Msg = &Message{ID: id}
		}
		// Whatever decodes re-encodes to something that decodes to the
		// same record, and encodes the same again.
		enc := encodeRelayRecord(&r)
		again, id2, err := decodeRelayRecord(enc)
		if err != nil || id2 != id || again.Kind != r.Kind || again.User != r.User || !reflect.DeepEqual(again.Users, r.Users) || again.Entry.Kind != r.Entry.Kind ||
			!reflect.DeepEqual(again.IDs, r.IDs) || again.State != r.State || !again.At.Equal(r.At) || again.Device != r.Device || again.Answer != r.Answer ||
			(again.Secret == nil) != (r.Secret == nil) || (r.Secret != nil && !reflect.DeepEqual(*again.Secret, *r.Secret)) || !reflect.DeepEqual(again.Chat, r.Chat) {
			t.Fatalf("round trip differs: %+v / %+v (%v)", r, again, err)
		}
		if again.Kind == RelayMessage {
			again.Msg = &Message{ID: id2}
		}
		if !bytes.Equal(encodeRelayRecord(&again), enc) {
			t.Fatalf("%x re-encodes unstably", b)
		}
	})
}
