package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"time"
)

// ErrBadSignature is returned by Verify when no signature of the request
// matches, or the secret is malformed.
var ErrBadSignature = errors.New("webhook: bad signature")

// ErrStale is returned by Verify for a timestamp further from now than
// the tolerance: a replay, or a clock far off.
var ErrStale = errors.New("webhook: timestamp outside the tolerance")

// secretKey decodes a "whsec_<base64>" secret.
func secretKey(secret string) ([]byte, error) {
	s, ok := strings.CutPrefix(secret, "whsec_")
	if !ok {
		return nil, ErrBadSignature
	}
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(k) == 0 {
		return nil, ErrBadSignature
	}
	return k, nil
}

// Sign returns the webhook-signature header's value for a request: "v1,"
// and the base64 of HMAC-SHA256(key, id.timestamp.body).
func Sign(secret, id string, ts int64, body []byte) (string, error) {
	k, err := secretKey(secret)
	if err != nil {
		return "", err
	}
	m := hmac.New(sha256.New, k)
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write([]byte(strconv.FormatInt(ts, 10)))
	m.Write([]byte{'.'})
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil)), nil
}

// Verify checks a delivery as a receiver would: the headers' id,
// timestamp (within tolerance of now) and signatures (space-separated;
// one matching v1 suffices) against body and secret.
func Verify(secret, id, timestamp, signatures string, body []byte, now time.Time, tolerance time.Duration) error {
	ts, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return ErrBadSignature
	}
	if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return ErrStale
	}
	want, err := Sign(secret, id, ts, body)
	if err != nil {
		return err
	}
	for _, s := range strings.Fields(signatures) {
		if hmac.Equal([]byte(s), []byte(want)) {
			return nil
		}
	}
	return ErrBadSignature
}
