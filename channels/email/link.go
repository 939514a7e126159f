package email

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/dingmq/ding/channels/auth"
	"github.com/dingmq/ding/engine"
)

// KeyFile is the name, in dingd's data directory, of the key that signs
// confirmation links (LoadOrCreateKey). Every node that serves the links
// of a cluster needs the same file.
const KeyFile = "email-link.key"

// KeySize is the size of a link key.
const KeySize = 32

var (
	// ErrForgedLink is returned by VerifyLink for a token that is not one
	// this key signed (altered, cut, or made up).
	ErrForgedLink = errors.New("email: link not signed by this server")
	// ErrExpiredLink is returned by VerifyLink for a token signed by this
	// key whose time is past.
	ErrExpiredLink = errors.New("email: link expired")
)

// Link is what a confirmation link says: recipient Recipient (the index
// in the DING) answers DING Ding with Answer (a 1-based choice, 0 for a
// plain confirmation), until Expires.
type Link struct {
	Ding      engine.ID
	Recipient int
	Answer    int
	Expires   time.Time // whole seconds
}

// Token layout, before base64url (no padding):
//
//	+-----+-----------+-----------+--------+-------------+----------+
//	| ver | ding (16) | rcpt (2)  | answer | expires (8) | tag (16) |
//	|  1  | engine.ID | uint16 BE |  byte  | unix s, BE  |          |
//	+-----+-----------+-----------+--------+-------------+----------+
//
// tag is the first 16 bytes of HMAC-SHA256(key, "ding email link\x00" |
// the 28 bytes before it). The token carries no address, name or text.
const (
	linkVersion = 1
	payloadLen  = 1 + 16 + 2 + 1 + 8
	tagLen      = 16
	tokenLen    = payloadLen + tagLen
)

var linkDomain = []byte("ding email link\x00")

// SignLink returns the token for l under key.
func SignLink(key []byte, l Link) string {
	b := make([]byte, 0, tokenLen)
	b = append(b, linkVersion)
	b = append(b, l.Ding[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(l.Recipient))
	b = append(b, byte(l.Answer))
	b = binary.BigEndian.AppendUint64(b, uint64(l.Expires.Unix()))
	b = append(b, linkTag(key, b)...)
	return base64.RawURLEncoding.EncodeToString(b)
}

func linkTag(key, payload []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(linkDomain)
	m.Write(payload)
	return m.Sum(nil)[:tagLen]
}

// VerifyLink checks token against key and returns what it says:
// ErrForgedLink if key did not sign it, ErrExpiredLink if it did but
// its time is before now. The signature is checked first, in constant
// time, so a forged token learns nothing of its expiry.
func VerifyLink(key []byte, token string, now time.Time) (Link, error) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) != tokenLen || b[0] != linkVersion {
		return Link{}, ErrForgedLink
	}
	if !hmac.Equal(b[payloadLen:], linkTag(key, b[:payloadLen])) {
		return Link{}, ErrForgedLink
	}
	var l Link
	copy(l.Ding[:], b[1:17])
	l.Recipient = int(binary.BigEndian.Uint16(b[17:]))
	l.Answer = int(b[19])
	l.Expires = time.Unix(int64(binary.BigEndian.Uint64(b[20:])), 0).UTC()
	if now.After(l.Expires) {
		return l, ErrExpiredLink
	}
	return l, nil
}

// LoadOrCreateKey reads the link key at path, creating it (mode 0600,
// KeySize random bytes, synced) if it does not exist.
func LoadOrCreateKey(path string) ([]byte, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, KeySize)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("email: link key: %w", err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("email: link key: %w", err)
		}
		if err := auth.WriteFileSync(path, key); err != nil {
			return nil, fmt.Errorf("email: link key: %w", err)
		}
		return key, nil
	}
	if err != nil {
		return nil, fmt.Errorf("email: link key: %w", err)
	}
	if len(key) < KeySize {
		return nil, fmt.Errorf("email: link key %s: %d bytes, want %d", path, len(key), KeySize)
	}
	return key, nil
}
