// Package auth mints and verifies Ding's bearer tokens: HS256 JWTs signed
// with a per-installation secret kept in the data directory.
//
// Two kinds exist. A client token names a user and a device and expires;
// it opens a socket session for that device and nothing else. An admin
// token names an admin (its subject) and the generation of that admin's
// token, and may expire; it opens the admin HTTP API, which looks the
// admin up (role, revocation) in the directory. The kind is a claim, so
// neither can be used as the other.
//
// A client certificate verified against dingd's client CA may stand in
// for either, when it names the identity explicitly (cert.go:
// CertIdentityOf, URI SAN ding:admin/NAME or ding:client/USER/DEVICE).
//
//	keys, err := auth.LoadOrCreate(dataDir)
//	tok, err := keys.MintClient("ana", "phone", 24*time.Hour)
//	claims, err := keys.Verify(tok, auth.KindClient)
//	adm, err := keys.MintAdminFor("hr-sync", 1, time.Now().Add(90*24*time.Hour))
package auth

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Kinds of token.
const (
	KindClient = "client"
	KindAdmin  = "admin"
)

// Sentinel errors; the edges map them to BAD_TOKEN / TOKEN_EXPIRED / 401.
var (
	// ErrInvalid is returned for a token that is malformed, badly signed, of
	// the wrong kind, or missing claims.
	ErrInvalid = errors.New("auth: invalid token")
	// ErrExpired is returned for a well-signed token past its expiry.
	ErrExpired = errors.New("auth: token expired")
)

// SecretFile is the name of the signing secret inside the data directory.
const SecretFile = "jwt.secret"

// Claims are what a verified token says.
type Claims struct {
	Kind   string `json:"knd"`
	User   string `json:"sub,omitempty"`
	Device string `json:"dev,omitempty"`
	// IssuedMs is the issue time in Unix milliseconds (iat has whole
	// seconds): a revocation (fanout.User.TokensBefore) tells a token
	// minted just before it from one minted just after.
	IssuedMs int64 `json:"iat_ms,omitempty"`
	// Gen is an admin token's generation: the admin API accepts it only
	// while it equals the admin's current one (fanout.Admin.Gen), so
	// revoking or re-adding an admin ends every token minted before.
	// Tokens minted before admins had names carry no subject and no
	// generation: they are the first owner's.
	Gen uint64 `json:"gen,omitempty"`
	jwt.RegisteredClaims
}

// Issued is when the token was issued: IssuedMs, or for tokens minted
// before it existed, iat (whole seconds); zero if neither is set.
func (c Claims) Issued() time.Time {
	switch {
	case c.IssuedMs > 0:
		return time.UnixMilli(c.IssuedMs)
	case c.IssuedAt != nil:
		return c.IssuedAt.Time
	}
	return time.Time{}
}

// Keys signs and verifies tokens.
type Keys struct {
	secret []byte
	now    func() time.Time
}

// New returns Keys for a secret of at least 32 bytes.
func New(secret []byte, now func() time.Time) (*Keys, error) {
	if len(secret) < 32 {
		return nil, errors.New("auth: secret shorter than 32 bytes")
	}
	if now == nil {
		now = time.Now
	}
	return &Keys{secret: secret, now: now}, nil
}

// LoadOrCreate reads DIR/jwt.secret, creating it (mode 0600, 32 random
// bytes) on first start.
func LoadOrCreate(dir string) (*Keys, error) {
	p := filepath.Join(dir, SecretFile)
	secret, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		secret = make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return nil, err
		}
		if err := WriteFileSync(p, secret); err != nil {
			return nil, fmt.Errorf("auth: create secret: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("auth: read secret: %w", err)
	}
	return New(secret, nil)
}

// WriteFileSync creates path with mode 0600 (failing if it exists) and
// fsyncs it.
func WriteFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// MintClient returns a client token for one device of one user.
func (k *Keys) MintClient(user, device string, ttl time.Duration) (string, error) {
	if user == "" || device == "" || ttl <= 0 {
		return "", errors.New("auth: client token needs a user, a device and a positive ttl")
	}
	now := k.now()
	return k.sign(Claims{Kind: KindClient, User: user, Device: device, IssuedMs: now.UnixMilli(), RegisteredClaims: jwt.RegisteredClaims{
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}})
}

// MintAdmin returns an admin token with no subject (the first owner's, as
// tokens were minted before admins had names); ttl zero means it does not
// expire.
func (k *Keys) MintAdmin(ttl time.Duration) (string, error) {
	var exp time.Time
	if ttl > 0 {
		exp = k.now().Add(ttl)
	}
	return k.MintAdminFor("", 0, exp)
}

// MintAdminFor returns the token of admin name at generation gen, valid
// until expires (whole seconds; zero: it does not expire). The token is
// the only copy: the server keeps the generation, never the token.
func (k *Keys) MintAdminFor(name string, gen uint64, expires time.Time) (string, error) {
	now := k.now()
	c := Claims{Kind: KindAdmin, User: name, Gen: gen, IssuedMs: now.UnixMilli(), RegisteredClaims: jwt.RegisteredClaims{IssuedAt: jwt.NewNumericDate(now)}}
	if !expires.IsZero() {
		c.ExpiresAt = jwt.NewNumericDate(expires)
	}
	return k.sign(c)
}

func (k *Keys) sign(c Claims) (string, error) {
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(k.secret)
}

// Verify checks a token's signature, expiry and kind.
func (k *Keys) Verify(token, kind string) (Claims, error) {
	var c Claims
	_, err := jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return k.secret, nil },
		jwt.WithValidMethods([]string{"HS256"}), jwt.WithTimeFunc(k.now))
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return Claims{}, ErrExpired
	case err != nil:
		return Claims{}, ErrInvalid
	case c.Kind != kind:
		return Claims{}, ErrInvalid
	case kind == KindClient && (c.User == "" || c.Device == "" || c.ExpiresAt == nil):
		return Claims{}, ErrInvalid
	}
	return c, nil
}
