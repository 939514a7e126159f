package auth_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/auth"
)

func TestTokens(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	k, err := auth.New(make([]byte, 32), clock)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := auth.New([]byte("0123456789abcdef0123456789abcdef"), clock)
	client, _ := k.MintClient("ana", "phone", time.Hour)
	admin, _ := k.MintAdmin(0)
	named, _ := k.MintAdminFor("hr-sync", 3, now.Add(time.Hour))
	forged, _ := other.MintClient("ana", "phone", time.Hour)

	c, err := k.Verify(client, auth.KindClient)
	if err != nil || c.User != "ana" || c.Device != "phone" {
		t.Fatalf("client token: %+v %v", c, err)
	}
	if c, err := k.Verify(admin, auth.KindAdmin); err != nil || c.User != "" || c.Gen != 0 {
		t.Fatalf("first-start admin token: %+v %v", c, err)
	}
	if c, err := k.Verify(named, auth.KindAdmin); err != nil || c.User != "hr-sync" || c.Gen != 3 || c.ExpiresAt == nil {
		t.Fatalf("named admin token: %+v %v", c, err)
	}
	cases := []struct {
		name, token, kind string
		want              error
	}{
		{"admin as client", admin, auth.KindClient, auth.ErrInvalid},
		{"client as admin", client, auth.KindAdmin, auth.ErrInvalid},
		{"other secret", forged, auth.KindClient, auth.ErrInvalid},
		{"garbage", "not.a.token", auth.KindClient, auth.ErrInvalid},
		{"empty", "", auth.KindAdmin, auth.ErrInvalid},
	}
	for _, tc := range cases {
		if _, err := k.Verify(tc.token, tc.kind); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	now = now.Add(2 * time.Hour)
	if _, err := k.Verify(client, auth.KindClient); !errors.Is(err, auth.ErrExpired) {
		t.Fatalf("expired: %v", err)
	}
	if _, err := k.Verify(admin, auth.KindAdmin); err != nil {
		t.Fatalf("non-expiring admin token: %v", err)
	}
	if _, err := k.Verify(named, auth.KindAdmin); !errors.Is(err, auth.ErrExpired) {
		t.Fatalf("expired admin token: %v", err)
	}
}

func TestSecretCreatedOnceWithMode0600(t *testing.T) {
	dir := t.TempDir()
	k1, err := auth.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, auth.SecretFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v %v", fi, err)
	}
	tok, _ := k1.MintAdmin(0)
	k2, err := auth.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k2.Verify(tok, auth.KindAdmin); err != nil {
		t.Fatalf("token from first start rejected after reload: %v", err)
	}
}
