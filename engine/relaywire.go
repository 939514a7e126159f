package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The relay's wire form: a RelayBatch as it leaves the process (stage 5b
// of cluster/PARTITIONS.md: an origin's pump posts it to the node that
// owns the destination partition).
//
//	batch  = "DRB" version(1) from(uvarint) to(uvarint) n(uvarint) record*n
//	record = seq(uvarint) len(uvarint) outbox-record(len) [message part]
//	message part (RelayMessage only) =
//	         len(uvarint) stored-message(len)       len 0: the message was lost
//	         [secret part]                          when the record names a chat
//	secret part = expire-due(time) burned(bool) len(uvarint) sealed-key(len)
//
// outbox-record is the record as the outbox stores it (codec.go), so the
// two cannot drift; a message travels as stored (a secret message's body
// sealed with its own key, as at rest). A secret message's key is the one
// thing the outbox does not hold: it is sealed by the caller's KeySealer
// (cluster.KeyCodec, from the cluster secret) and never travels in clear.

// KeySealer seals a secret message's key for a relay frame that leaves
// the process, and opens it at the destination. cluster.KeyCodec is one.
type KeySealer interface {
	SealKey(key []byte) []byte
	OpenKey(sealed []byte) ([]byte, error)
}

var relayWireMagic = [...]byte{'D', 'R', 'B', 1}

// MaxRelayWireRecords bounds the records one decoded batch may hold.
const MaxRelayWireRecords = 1 << 16

// ErrNoKeySealer is returned by EncodeRelayBatch and DecodeRelayBatch for
// a batch holding a secret message's key when no KeySealer was given: a
// key never travels in clear.
var ErrNoKeySealer = errors.New("engine: relay: a secret message's key needs a KeySealer")

// EncodeRelayBatch encodes b for the wire (the layout is above). ks seals
// secret messages' keys; it may be nil for a batch that holds none.
func EncodeRelayBatch(b RelayBatch, ks KeySealer) ([]byte, error) {
	out := make([]byte, 0, 64+256*len(b.Records))
	out = append(out, relayWireMagic[:]...)
	out = binary.AppendUvarint(out, uint64(b.From))
	out = binary.AppendUvarint(out, uint64(b.To))
	out = binary.AppendUvarint(out, uint64(len(b.Records)))
	for i := range b.Records {
		r := &b.Records[i]
		rec := encodeWireRecord(r)
		out = binary.AppendUvarint(out, r.Seq)
		out = appendBytes(out, rec)
		if r.Kind != RelayMessage {
			continue
		}
		if r.Msg == nil {
			out = binary.AppendUvarint(out, 0)
		} else {
			out = appendBytes(out, encodeMessage(r.Msg))
		}
		if s := r.Secret; s != nil {
			out = appendTime(out, s.ExpireDue)
			out = appendBool(out, s.Burned)
			switch {
			case len(s.Key) == 0:
				out = binary.AppendUvarint(out, 0)
			case ks == nil:
				return nil, ErrNoKeySealer
			default:
				out = appendBytes(out, ks.SealKey(s.Key))
			}
		}
	}
	return out, nil
}

// encodeWireRecord is encodeRelayRecord, which takes a message record's
// id from its Msg. Without one (Outbox found the message lost, or a
// secret message burned before its relay) the id is the Secret's, or
// zero: the destination skips a message record without its message, and
// delivers a burn for a burned one.
func encodeWireRecord(r *RelayRecord) []byte {
	if r.Kind != RelayMessage || r.Msg != nil {
		return encodeRelayRecord(r)
	}
	c := *r
	c.Msg = &Message{}
	if r.Secret != nil {
		c.Msg.ID = r.Secret.ID
	}
	return encodeRelayRecord(&c)
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// DecodeRelayBatch decodes what EncodeRelayBatch wrote. It checks the
// frame, not the batch's sense: ApplyRelay does (ErrBadRelay). The batch
// does not alias data. ks opens secret messages' keys; nil refuses a
// frame that holds one (ErrNoKeySealer).
func DecodeRelayBatch(data []byte, ks KeySealer) (RelayBatch, error) {
	bad := func(format string, args ...any) (RelayBatch, error) {
		return RelayBatch{}, fmt.Errorf("%w: wire: "+format, append([]any{ErrBadRelay}, args...)...)
	}
	if len(data) < len(relayWireMagic) || string(data[:len(relayWireMagic)]) != string(relayWireMagic[:]) {
		return bad("not a relay batch (or a version this node does not read)")
	}
	d := decoder{b: data[len(relayWireMagic):]}
	from, to, n := d.uvarint(), d.uvarint(), d.uvarint()
	switch {
	case d.err:
		return bad("truncated header")
	case from > 1<<32-1 || to > 1<<32-1:
		return bad("partition out of range")
	case n > MaxRelayWireRecords || n > uint64(len(d.b)):
		return bad("%d records", n)
	}
	b := RelayBatch{From: uint32(from), To: uint32(to), Records: make([]RelayRecord, n)}
	for i := range b.Records {
		seq := d.uvarint()
		raw := d.bytes()
		if d.err {
			return bad("record %d truncated", i)
		}
		r, id, err := decodeRelayRecord(raw)
		if err != nil {
			return bad("record %d (seq %d): %v", i, seq, err)
		}
		r.Seq = seq
		if r.Kind == RelayMessage {
			if m := d.bytes(); d.err {
				return bad("record %d (seq %d): message truncated", i, seq)
			} else if len(m) > 0 {
				if r.Msg, err = decodeMessage(id, m); err != nil {
					return bad("record %d (seq %d): message: %v", i, seq, err)
				}
				r.Msg.ID = id
			}
			if r.Secret != nil {
				r.Secret.ExpireDue = d.time()
				r.Secret.Burned = d.boolean()
				sealed := d.bytes()
				switch {
				case d.err:
					return bad("record %d (seq %d): secret part truncated", i, seq)
				case len(sealed) == 0:
				case ks == nil:
					return RelayBatch{}, ErrNoKeySealer
				default:
					if r.Secret.Key, err = ks.OpenKey(sealed); err != nil {
						return bad("record %d (seq %d): %v", i, seq, err)
					}
				}
			}
		}
		b.Records[i] = r
	}
	if len(d.b) != 0 {
		return bad("%d bytes after the last record", len(d.b))
	}
	return b, nil
}
