package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"
)

// A codec of one record type: what the tests and benchmarks of every
// record share.
type codec[T any] struct {
	enc func(*T) []byte
	dec func([]byte, *T) error
}

var (
	rcptStateCodec   = codec[rcptState]{encodeRcptState, decodeRcptState}
	dingRecordCodec  = codec[dingRecord]{encodeDingRecord, decodeDingRecord}
	ledgerEventCodec = codec[LedgerEvent]{encodeLedgerEvent, decodeLedgerEvent}
	secretStateCodec = codec[secretState]{encodeSecretState, decodeSecretState}
	chatCodec        = codec[Chat]{encodeChat, decodeChat}
	annCountsCodec   = codec[AnnouncementCounts]{encodeAnnouncementCounts, decodeAnnouncementCounts}
	fanoutJobCodec   = codec[fanoutJob]{encodeFanoutJob, decodeFanoutJob}
)

// recordCase is one record type with its samples, for the tables of the
// tests and benchmarks that run over every record.
type recordCase struct {
	name           string
	readsOldJSON   func(t *testing.T)
	rejectsCorrupt func(t *testing.T)
	bench          func(b *testing.B)
}

func newRecordCase[T any](name string, c codec[T], samples []T) recordCase {
	return recordCase{
		name: name,
		readsOldJSON: func(t *testing.T) {
			for _, v := range samples {
				checkCodec(t, c, v)
			}
		},
		rejectsCorrupt: func(t *testing.T) { checkRejects(t, c, samples[0]) },
		bench:          func(b *testing.B) { benchCodec(b, c, samples[0]) },
	}
}

func recordCases() []recordCase {
	return []recordCase{
		newRecordCase("rcptState", rcptStateCodec, sampleRcptStates),
		newRecordCase("dingRecord", dingRecordCodec, sampleDingRecords),
		newRecordCase("LedgerEvent", ledgerEventCodec, sampleLedgerEvents),
		newRecordCase("secretState", secretStateCodec, sampleSecretStates),
		newRecordCase("Chat", chatCodec, sampleChats),
		newRecordCase("AnnouncementCounts", annCountsCodec, sampleAnnCounts),
		newRecordCase("fanoutJob", fanoutJobCodec, sampleFanoutJobs),
	}
}

var codecT = time.Date(2026, 12, 3, 9, 30, 15, 123456789, time.UTC)

// Records as the engine writes them, for the tests, the fuzz seeds and
// the benchmarks.
var (
	sampleRcptStates = []rcptState{
		{Status: StatusPending, User: true, Phone: "+15550000002", PhoneAt: 1764754215123, Next: 2, Dept: "ops", LedgerN: 7, TimerN: 3,
			Timers: []timerRef{
				{N: 2, Due: 1764755115123, Kind: timerStep, Step: 2},
				{N: 3, Due: 1764754335123, Kind: timerSend, Ch: ChannelSMS, Attempt: 2, Reason: "retry", Recover: true},
			}},
		{Status: StatusPending, User: true, Phone: "+15550000002", PhoneAt: 1764754215123, Next: 3, LedgerN: 9, TimerN: 5,
			Timers: []timerRef{{N: 5, Due: 1764755415123, Kind: timerWait, Ch: ChannelVoice, Attempt: 1, Reason: "CA0123456789abcdef0123456789abcdef"}}},
		{Status: StatusConfirmed, User: true, Next: 1, Answer: 2, By: ChannelVoice, Ended: 1764754300000, Unanswered: true, LedgerN: 12, TimerN: 4},
		{Status: StatusRefused, Phone: "+15550000099", LedgerN: 1},
		{Status: "paused", Next: -1}, // not a status this version writes: kept as text
	}
	sampleDingRecords = []dingRecord{
		{From: "ana", Created: 1764754215123, Policy: "inapp,sms@5m,voice@15m until=confirmed",
			Plan:  []plannedStep{{ChannelInApp, 0}, {ChannelSMS, 5 * time.Minute}, {ChannelVoice, 15 * time.Minute}},
			Until: StopConfirmed, Choices: []string{"attend", "decline"}, Critical: true,
			Recipients: []string{"+15550000099", "bo", "cy", "dee", "eli", "fay", "gus", "hal", "ivy", "jo"}},
		{From: "ana", Created: 1, Policy: "sms until=read", Plan: []plannedStep{{ChannelSMS, 0}}, Until: StopRead, Recipients: []string{"bo"}},
	}
	sampleLedgerEvents = []LedgerEvent{
		{At: codecT, Event: LedgerSMSQueued, Channel: "sms", Detail: "SM0123456789abcdef0123456789abcdef"},
		{At: codecT, Event: LedgerDelivered, Channel: "inapp", Device: "phone"},
		{At: codecT.In(time.FixedZone("", 2*3600)), Event: LedgerExhausted}, // a server in another zone
		{Event: LedgerRead},
	}
	sampleSecretStates = []secretState{
		{Chat: ID{1, 2, 3}, Level: Level2, From: "alice", To: "bob", ToSeq: 42, BurnAfter: 30000, ExpireDue: 1764840615123},
		{Chat: ID{9}, Level: Level3, From: "alice", To: "bob", ToSeq: 1 << 40, BurnAfter: 5000, BurnDue: 1764754220123},
	}
	sampleChats = []Chat{
		{ID: ID{7, 7}, Level: Level3, BurnAfter: 5 * time.Second, Creator: "alice", Created: codecT.Truncate(time.Millisecond),
			Members: []Member{{"alice", "anon-ABCDEF"}, {"bob", "anon-GHJKMN"}}},
	}
	sampleAnnCounts = []AnnouncementCounts{
		{From: "admin", To: []string{AllStaff}, Created: 1764754215123, Confirm: true, Total: 100000, Delivered: 90000, Read: 80000, Confirmed: 7000},
		{From: "admin", To: []string{"dept:ops", "group:oncall"}, Created: 1764754215123, Total: 12},
	}
	sampleFanoutJobs = []fanoutJob{{Chunks: 50, Next: 17}, {Chunks: 1}}
)

// checkCodec checks one record both ways: the JSON an older version wrote
// decodes to what its binary encoding decodes to; the binary encoding
// loses nothing the JSON (the admin API's form, for exported types) shows;
// and an old record re-encodes as the new one.
func checkCodec[T any](t *testing.T, c codec[T], v T) {
	t.Helper()
	old, err := json.Marshal(&v)
	if err != nil {
		t.Fatal(err)
	}
	bin := c.enc(&v)
	if isJSON(bin) || !isJSON(old) {
		t.Fatalf("binary %x / json %s: the first byte does not tell them apart", bin, old)
	}
	var fromJSON, fromBin T
	if err := c.dec(old, &fromJSON); err != nil {
		t.Fatalf("old JSON %s: %v", old, err)
	}
	if err := c.dec(bin, &fromBin); err != nil {
		t.Fatalf("binary %x: %v", bin, err)
	}
	if !reflect.DeepEqual(fromJSON, fromBin) {
		t.Fatalf("old JSON decodes to %+v, binary to %+v", fromJSON, fromBin)
	}
	if again, _ := json.Marshal(&fromBin); !bytes.Equal(again, old) {
		t.Fatalf("JSON of the decoded record:\n%s\nwant\n%s", again, old)
	}
	if again := c.enc(&fromJSON); !bytes.Equal(again, bin) {
		t.Fatalf("old record re-encoded: %x, want %x", again, bin)
	}
	if len(bin) >= len(old) {
		t.Errorf("binary %d bytes, JSON %d", len(bin), len(old))
	}
}

func TestRecordsReadTheirOldJSON(t *testing.T) {
	for _, rc := range recordCases() {
		t.Run(rc.name, rc.readsOldJSON)
	}
}

// Records copied from a store that the JSON version of the engine (commit
// 2a1f844) wrote: a DING to a phone number and bo, after its SMS step,
// confirmed by bo.
func TestRecordsReadFixturesOfTheJSONVersion(t *testing.T) {
	var rec dingRecord
	if err := decodeDingRecord([]byte(`{"from":"ana","created":1795946400000,"policy":"inapp,sms@1m,voice@10m until=confirmed","plan":[{"ch":1,"after":0},{"ch":2,"after":60000000000},{"ch":3,"after":600000000000}],"until":1,"choices":["attend","decline"],"to":["+15550000099","bo"]}`), &rec); err != nil {
		t.Fatal(err)
	}
	wantRec := dingRecord{From: "ana", Created: 1795946400000, Policy: "inapp,sms@1m,voice@10m until=confirmed",
		Plan:  []plannedStep{{ChannelInApp, 0}, {ChannelSMS, time.Minute}, {ChannelVoice, 10 * time.Minute}},
		Until: StopConfirmed, Choices: []string{"attend", "decline"}, Recipients: []string{"+15550000099", "bo"}}
	if !reflect.DeepEqual(rec, wantRec) {
		t.Fatalf("DING %+v, want %+v", rec, wantRec)
	}
	for _, tc := range []struct {
		name, old string
		want      rcptState
	}{
		{"pending phone", `{"s":"pending","p":"+15550000099","pat":1795946460000,"next":2,"ln":2,"tn":3,"t":[{"n":3,"due":1795947000000,"k":1,"step":2}]}`,
			rcptState{Status: StatusPending, Phone: "+15550000099", PhoneAt: 1795946460000, Next: 2, LedgerN: 2, TimerN: 3,
				Timers: []timerRef{{N: 3, Due: 1795947000000, Kind: timerStep, Step: 2}}}},
		{"confirmed user", `{"s":"confirmed","u":true,"p":"+15550000002","next":2,"ans":1,"by":1,"end":1795946460000,"ln":4,"tn":3}`,
			rcptState{Status: StatusConfirmed, User: true, Phone: "+15550000002", Next: 2, Answer: 1, By: ChannelInApp, Ended: 1795946460000, LedgerN: 4, TimerN: 3}},
	} {
		var s rcptState
		if err := decodeRcptState([]byte(tc.old), &s); err != nil || !reflect.DeepEqual(s, tc.want) {
			t.Fatalf("%s: %+v (%v), want %+v", tc.name, s, err, tc.want)
		}
	}
	var ev LedgerEvent
	if err := decodeLedgerEvent([]byte(`{"at":"2026-11-29T10:01:00Z","event":"sms_queued","channel":"sms","detail":"SM2"}`), &ev); err != nil {
		t.Fatal(err)
	}
	if want := (LedgerEvent{At: time.Date(2026, 11, 29, 10, 1, 0, 0, time.UTC), Event: LedgerSMSQueued, Channel: "sms", Detail: "SM2"}); !reflect.DeepEqual(ev, want) {
		t.Fatalf("ledger event %+v, want %+v", ev, want)
	}
}

// A time keeps its zone offset, which the admin API shows, whether its
// record is JSON (as a server outside UTC wrote it) or binary.
func TestRecordTimesKeepTheirOffset(t *testing.T) {
	var ev LedgerEvent
	if err := decodeLedgerEvent([]byte(`{"at":"2026-11-29T10:01:00.5+01:00","event":"sms_queued"}`), &ev); err != nil {
		t.Fatal(err)
	}
	var again LedgerEvent
	if err := decodeLedgerEvent(encodeLedgerEvent(&ev), &again); err != nil {
		t.Fatal(err)
	}
	for _, at := range []time.Time{ev.At, again.At} {
		if j, _ := json.Marshal(at); string(j) != `"2026-11-29T10:01:00.5+01:00"` {
			t.Fatalf("the API would show %s", j)
		}
	}
}

// checkRejects checks that every proper prefix of a record, the record
// with a byte more, and the record with another version are corrupt.
func checkRejects[T any](t *testing.T, c codec[T], v T) {
	t.Helper()
	bin := c.enc(&v)
	for n := range len(bin) {
		var x T
		if err := c.dec(bin[:n], &x); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%x (%d of %d bytes): %v, want ErrCorrupt", bin[:n], n, len(bin), err)
		}
	}
	var x T
	if err := c.dec(append(bin[:len(bin):len(bin)], 0), &x); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a byte too many: %v", err)
	}
	other := append([]byte{recordVersion + 1}, bin[1:]...)
	if err := c.dec(other, &x); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("version %d: %v", other[0], err)
	}
	if err := c.dec([]byte(`{"broken`), &x); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("broken JSON: %v", err)
	}
}

func TestRecordDecodersRejectCorruptRecords(t *testing.T) {
	for _, rc := range recordCases() {
		t.Run(rc.name, rc.rejectsCorrupt)
	}
}

// A count larger than the bytes left is refused before anything is
// allocated for it.
func TestRecordDecodersBoundCounts(t *testing.T) {
	huge := []byte{recordVersion, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f} // no strings, 4G timers
	var s rcptState
	if err := decodeRcptState(huge, &s); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("state claiming 4G timers: %v", err)
	}
	if n := testing.AllocsPerRun(10, func() { decodeRcptState(huge, &s) }); n > 0 {
		t.Fatalf("%v allocations for a record claiming 4G timers", n)
	}
}
