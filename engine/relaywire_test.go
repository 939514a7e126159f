package engine_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/dingmq/ding/engine"
)

// testSealer is a KeySealer with AES-256-GCM under a fixed test key (the
// real one is cluster.KeyCodec; this package cannot import it).
type testSealer struct{ aead cipher.AEAD }

func newTestSealer(t testing.TB) testSealer {
	block, err := aes.NewCipher(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return testSealer{aead}
}

func (s testSealer) SealKey(key []byte) []byte {
	nonce := make([]byte, s.aead.NonceSize())
	rand.Read(nonce)
	return s.aead.Seal(nonce, nonce, key, nil)
}

func (s testSealer) OpenKey(sealed []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("sealed key too short")
	}
	return s.aead.Open(nil, sealed[:n], sealed[n:], nil)
}

// throughWire is what the relay tests' pump does to every batch: it
// encodes it as it would leave the process, checks that no secret key is
// in the frame in clear, decodes it, and checks that the decoded batch
// is the batch. The destination applies the decoded one.
func throughWire(t testing.TB, b engine.RelayBatch) engine.RelayBatch {
	t.Helper()
	ks := newTestSealer(t)
	data, err := engine.EncodeRelayBatch(b, ks)
	if err != nil {
		t.Fatalf("encode %d->%d: %v", b.From, b.To, err)
	}
	for _, r := range b.Records {
		if r.Secret != nil && len(r.Secret.Key) > 0 && bytes.Contains(data, r.Secret.Key) {
			t.Fatalf("seq %d: the secret message's key is in the frame in clear", r.Seq)
		}
	}
	got, err := engine.DecodeRelayBatch(data, ks)
	if err != nil {
		t.Fatalf("decode %d->%d: %v", b.From, b.To, err)
	}
	want := normalizeBatch(b)
	if g := normalizeBatch(got); !reflect.DeepEqual(g, want) {
		for i := range want.Records {
			if i < len(g.Records) && !reflect.DeepEqual(g.Records[i], want.Records[i]) {
				t.Fatalf("record %d after the wire:\n got %+v\nwant %+v", i, g.Records[i], want.Records[i])
			}
		}
		t.Fatalf("batch after the wire:\n got %+v\nwant %+v", g, want)
	}
	return got
}

// normalizeBatch copies b with its times in UTC (the wire keeps the
// instant and the offset, not the *Location).
func normalizeBatch(b engine.RelayBatch) engine.RelayBatch {
	out := b
	out.Records = make([]engine.RelayRecord, len(b.Records))
	for i, r := range b.Records {
		r.At = utc(r.At)
		if r.Msg != nil {
			m := *r.Msg
			m.Created = utc(m.Created)
			r.Msg = &m
		}
		if r.Secret != nil {
			s := *r.Secret
			s.ExpireDue = utc(s.ExpireDue)
			r.Secret = &s
		}
		if r.Entry.Receipt != nil {
			rc := *r.Entry.Receipt
			rc.At = utc(rc.At)
			r.Entry.Receipt = &rc
		}
		out.Records[i] = r
	}
	return out
}

func utc(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

// TestRelayWireRefusesBadFrames: truncated, trailing, foreign and keyless
// frames are refused with ErrBadRelay (or ErrNoKeySealer), never a panic.
func TestRelayWireRefusesBadFrames(t *testing.T) {
	ks := newTestSealer(t)
	msg := &engine.Message{ID: engine.ID{1}, From: "alice", To: []string{"bob"}, Body: []byte("hi"), Created: time.UnixMilli(1_700_000_000_000).UTC()}
	b := engine.RelayBatch{From: 0, To: 1, Records: []engine.RelayRecord{
		{Seq: 1, Kind: engine.RelayMessage, Msg: msg, Users: []string{"bob"}},
		{Seq: 2, Kind: engine.RelayReceipt, User: "bob", IDs: []engine.ID{{2}}, State: engine.StateRead, At: time.UnixMilli(1_700_000_000_500)},
	}}
	data, err := engine.EncodeRelayBatch(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := engine.DecodeRelayBatch(data, nil); err != nil {
		t.Fatalf("a batch without keys needs no sealer: %v", err)
	}
	for n := range len(data) {
		if _, err := engine.DecodeRelayBatch(data[:n], ks); !errors.Is(err, engine.ErrBadRelay) {
			t.Fatalf("truncated to %d of %d bytes: err %v, want ErrBadRelay", n, len(data), err)
		}
	}
	if _, err := engine.DecodeRelayBatch(append(bytes.Clone(data), 0), ks); !errors.Is(err, engine.ErrBadRelay) {
		t.Fatalf("a trailing byte: err %v, want ErrBadRelay", err)
	}
	other := bytes.Clone(data)
	other[3] = 2 // a version this node does not read
	if _, err := engine.DecodeRelayBatch(other, ks); !errors.Is(err, engine.ErrBadRelay) {
		t.Fatalf("version 2: err %v, want ErrBadRelay", err)
	}

	secret := engine.RelayBatch{From: 0, To: 1, Records: []engine.RelayRecord{{
		Seq: 1, Kind: engine.RelayMessage, Users: []string{"bob"},
		Msg:    &engine.Message{ID: engine.ID{3}, From: "alice", To: []string{"bob"}, Body: []byte("sealed"), Chat: engine.ID{4}},
		Secret: &engine.RelaySecret{ID: engine.ID{3}, Chat: engine.ID{4}, Key: bytes.Repeat([]byte{9}, 32)},
	}}}
	if _, err := engine.EncodeRelayBatch(secret, nil); !errors.Is(err, engine.ErrNoKeySealer) {
		t.Fatalf("encoding a key without a sealer: err %v, want ErrNoKeySealer", err)
	}
	data, err = engine.EncodeRelayBatch(secret, ks)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := engine.DecodeRelayBatch(data, nil); !errors.Is(err, engine.ErrNoKeySealer) {
		t.Fatalf("decoding a key without a sealer: err %v, want ErrNoKeySealer", err)
	}
	tampered := bytes.Clone(data)
	tampered[len(tampered)-1] ^= 1 // the sealed key's tag
	if _, err := engine.DecodeRelayBatch(tampered, ks); !errors.Is(err, engine.ErrBadRelay) {
		t.Fatalf("a tampered key: err %v, want ErrBadRelay", err)
	}
	got, err := engine.DecodeRelayBatch(data, ks)
	if err != nil || !bytes.Equal(got.Records[0].Secret.Key, secret.Records[0].Secret.Key) {
		t.Fatalf("decoded key: %v, %v", got, err)
	}
}

// FuzzDecodeRelayBatch: any frame decodes or is refused, without a panic,
// and what decodes encodes back to a frame that decodes to the same.
func FuzzDecodeRelayBatch(f *testing.F) {
	ks := newTestSealer(f)
	msg := &engine.Message{ID: engine.ID{1}, From: "alice", To: []string{"bob", "carol"}, Body: []byte("hi"), Created: time.UnixMilli(1_700_000_000_000).UTC()}
	for _, b := range []engine.RelayBatch{
		{From: 0, To: 1},
		{From: 2, To: 1, Records: []engine.RelayRecord{
			{Seq: 7, Kind: engine.RelayMessage, Msg: msg, Users: []string{"bob", "carol"}},
			{Seq: 8, Kind: engine.RelayReceipt, User: "bob", IDs: []engine.ID{{2}, {3}}, State: engine.StateConfirmed, Answer: 2, Device: "phone", At: time.UnixMilli(1_700_000_000_500)},
			{Seq: 9, Kind: engine.RelayMessage, Users: []string{"bob"}, Secret: &engine.RelaySecret{ID: engine.ID{5}, Chat: engine.ID{6}, Burned: true}},
		}},
	} {
		data, err := engine.EncodeRelayBatch(b, ks)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := engine.DecodeRelayBatch(data, ks)
		if err != nil {
			if !errors.Is(err, engine.ErrBadRelay) && !errors.Is(err, engine.ErrNoKeySealer) {
				t.Fatalf("refused with %v, want ErrBadRelay", err)
			}
			return
		}
		again, err := engine.EncodeRelayBatch(b, ks)
		if err != nil {
			t.Fatalf("a decoded batch does not encode: %v", err)
		}
		b2, err := engine.DecodeRelayBatch(again, ks)
		if err != nil {
			t.Fatalf("re-encoded batch does not decode: %v", err)
		}
		if !reflect.DeepEqual(normalizeBatch(b2), normalizeBatch(b)) {
			t.Fatalf("round trip changed the batch:\n%+v\n%+v", b2, b)
		}
	})
}
