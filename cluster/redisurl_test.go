package cluster

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dingmq/ding/internal/redistest"
)

// RedisOptions picks the client the URL names, takes credentials from
// it or from RedisConfig.Password, and refuses what it cannot use with
// an error that names the problem and never the password.
func TestRedisOptions(t *testing.T) {
	const pw = "p@ss:w/rd"
	for _, tc := range []struct {
		url, password string
		// what the options must hold
		addrs              string
		user, pass, master string
		db                 int
		cluster            bool
	}{
		{url: "redis://127.0.0.1:6379", addrs: "127.0.0.1:6379"},
		{url: "redis://ding:p%40ss%3Aw%2Frd@10.0.0.1:6379/2", addrs: "10.0.0.1:6379", user: "ding", pass: pw, db: 2},
		{url: "redis://:old@h:1", password: pw, addrs: "h:1", pass: pw},
		{url: "redis://a:1,b:2,c:3", addrs: "a:1,b:2,c:3"},
		{url: "redis://cfg.example:6379?cluster=true", addrs: "cfg.example:6379", cluster: true},
		{url: "redis://:x@s1:26379,s2:26379/1?master_name=ding&sentinel_username=su&sentinel_password=sp", addrs: "s1:26379,s2:26379", pass: "x", master: "ding", db: 1},
		{url: "redis://u:a#b,c@[::1]:6379", addrs: "[::1]:6379", user: "u", pass: "a#b,c"},
	} {
		o, err := RedisOptions(RedisConfig{URL: tc.url, Password: tc.password})
		if err != nil {
			t.Errorf("%s: %v", tc.url, err)
			continue
		}
		if got := strings.Join(o.Addrs, ","); got != tc.addrs || o.Username != tc.user || o.Password != tc.pass ||
			o.MasterName != tc.master || o.DB != tc.db || o.IsClusterMode != tc.cluster || o.TLSConfig != nil {
			t.Errorf("%s: addrs %s user %q password %q master %q db %d cluster %v tls %v", tc.url, got, o.Username, o.Password, o.MasterName, o.DB, o.IsClusterMode, o.TLSConfig != nil)
		}
	}
	if o, err := RedisOptions(RedisConfig{URL: "redis://s:1?master_name=m&sentinel_username=su&sentinel_password=s+p%2Fq"}); err != nil || o.SentinelUsername != "su" || o.SentinelPassword != "s+p/q" || o.Password != "" {
		t.Errorf("the sentinels' own credentials: %+v, %v", o, err)
	}
	if o, err := RedisOptions(RedisConfig{URL: "rediss://h:1"}); err != nil || o.TLSConfig == nil || o.TLSConfig.ServerName != "" {
		t.Errorf("rediss:// = %+v, %v; want TLS, each connection checking the host it dials", o, err)
	}
	for _, tc := range []struct {
		rc   RedisConfig
		want string
	}{
		{RedisConfig{URL: "127.0.0.1:6379"}, "want redis[s]://"},
		{RedisConfig{URL: "http://h:1"}, "want redis[s]://"},
		{RedisConfig{URL: "redis://"}, "no address"},
		{RedisConfig{URL: "redis://u:secretpw@h"}, `address "h": want HOST:PORT`},
		{RedisConfig{URL: "redis://u:secretpw@h:1/x"}, `database "x"`},
		{RedisConfig{URL: "redis://u:secretpw@h:1?mastername=d"}, "an unknown parameter"},
		{RedisConfig{URL: "redis://h:1?master_name=m&sentinel_pasword=secretpw"}, "an unknown parameter"},
		{RedisConfig{URL: "redis://h:1?master_name=m&sentinel_password=secret&zzpw"}, "an unknown parameter"},
		{RedisConfig{URL: "redis://u:ab/secretpw+d=@h:1"}, "percent-encode"},
		{RedisConfig{URL: "redis://u:ab?secretpw@h:1"}, "percent-encode"},
		{RedisConfig{URL: "redis://u:ab:secretpw/x@h:1"}, "percent-encode"},
		{RedisConfig{URL: "redis://u:secretpw@h:abc"}, `address "h:abc"`},
		{RedisConfig{URL: "redis://u:secretpw@h:1?master_name="}, "master_name is empty"},
		{RedisConfig{URL: "redis://u:xxxxx@h:1"}, "give the real one"},
		{RedisConfig{URL: "redis://u:secretpw@h:1?master_name=a&master_name=b"}, "given twice"},
		{RedisConfig{URL: "redis://h:1?master_name=m&sentinel_password=50%zzpw"}, "do not parse"},
		{RedisConfig{URL: "redis://h:1?sentinel_password=secretpw"}, "need master_name"},
		{RedisConfig{URL: "redis://u:secretpw@a:1,b:2/3"}, "database 0 only"},
		{RedisConfig{URL: "redis://h:1?cluster=yes"}, "want true"},
		{RedisConfig{URL: "redis://a:1,b:2?cluster=false"}, "want true"},
		{RedisConfig{URL: "redis://h:1?cluster=true&master_name=d"}, "not both"},
		{RedisConfig{URL: "redis://u:secretpw@h:1", CA: "/ca.pem"}, "not rediss://"},
		{RedisConfig{URL: "rediss://u:secretpw@h:1", CA: "/nonexistent/ca.pem"}, "no such file"},
		{RedisConfig{URL: "rediss://u:secretpw@h:1", Cert: "/c.pem"}, "both its certificate and its key"},
		{RedisConfig{URL: "redis://u:bad%zzpw@h:1"}, "not percent-encoded"},
	} {
		_, err := RedisOptions(tc.rc)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.rc.URL, err, tc.want)
		} else if strings.Contains(err.Error(), "secretpw") || strings.Contains(err.Error(), "zzpw") {
			t.Errorf("%s: the error shows the password: %v", tc.rc.URL, err)
		}
	}
	for in, want := range map[string]string{
		"redis://h:1":                  "redis://h:1",
		"rediss://ding:secretpw@h:1/2": "rediss://ding:xxxxx@h:1/2",
		"redis://:secretpw@s:1?master_name=m&sentinel_password=secretpw": "redis://:xxxxx@s:1?master_name=m&sentinel_password=xxxxx",
		"redis://user@h:1":                                       "redis://user@h:1",
		"redis://u:ab/secretpw@h:1":                              "redis://<redacted>",
		"redis://u:ab?secretpw@h:1":                              "redis://<redacted>",
		"redis://h:1?master_name=m&sentinel_password=a&secretpw": "redis://h:1?<redacted>",
		"redis://h:1?master_name=m&sentinel_pasword=secretpw":    "redis://h:1?<redacted>",
		"redis://h:1?sentinel_username=su&master_name=m":         "redis://h:1?sentinel_username=su&master_name=m",
		"no scheme secretpw":                                     "<redacted>",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// The coordinator on a redis-server that speaks TLS only and admits one
// ACL user with only RedisACL's rights (the default user off): the
// whole Coord contract through
// DialRedis with rediss://, the user and password in the URL, the CA and
// a client certificate. Each missing or wrong part is refused by Redis or
// by the TLS handshake, with an error that does not show the password.
func TestCoordOverTLSWithAnACLUser(t *testing.T) {
	f := redistest.NewTLSFiles(t)
	acl := append([]string{"--user", "ding", "on", ">s3cret-pw"}, strings.Fields(RedisACL)...)
	srv := redistest.StartTLS(t, f, append(acl, "--user", "default", "off")...)
	dial := func(rc RedisConfig) *RedisCoord {
		t.Helper()
		c, closeRedis, err := DialRedis(rc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = closeRedis() })
		return c
	}
	good := RedisConfig{URL: "rediss://ding:s3cret-pw@" + srv.Addr, CA: f.CA, Cert: f.ClientCert, Key: f.ClientKey}
	c := dial(good)
	sharedRedisContract(t, c)

	refused := func(what string, rc RedisConfig, want string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _, err := dial(rc).Lease(ctx, 1)
		switch {
		case err == nil:
			t.Errorf("%s: Redis answered", what)
		case !strings.Contains(err.Error(), want):
			t.Errorf("%s: %v, want an error saying %q", what, err, want)
		case strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "not-it"):
			t.Errorf("%s: the error shows a password: %v", what, err)
		}
	}
	wrongPW := good
	wrongPW.URL = "rediss://ding:not-it@" + srv.Addr
	refused("a wrong password", wrongPW, "WRONGPASS")
	noUser := good
	noUser.URL = "rediss://" + srv.Addr
	refused("no user (the default user is off)", noUser, "NOAUTH")
	viaEnv := good
	viaEnv.URL, viaEnv.Password = "rediss://ding:not-it@"+srv.Addr, "s3cret-pw"
	if _, _, err := dial(viaEnv).Lease(context.Background(), 1); err != nil {
		t.Errorf("the password given apart (RedisConfig.Password, --redis-password) in place of the URL's: %v", err)
	}
	noCA := good
	noCA.CA = ""
	refused("no CA (the server's certificate unknown)", noCA, "certificate signed by unknown authority")
	noCert := good
	noCert.Cert, noCert.Key = "", ""
	refused("no client certificate", noCert, "certificate")
	plain := RedisConfig{URL: "redis://ding:s3cret-pw@" + srv.Addr}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := dial(plain).Lease(ctx, 1); err == nil {
		t.Error("redis:// (no TLS) to a TLS port: Redis answered")
	}
}

// The coordinator through Redis Sentinel, all of it over TLS (three
// sentinels with a password of their own, a master and a replica with
// another, replication and the sentinels' links over TLS too): the
// whole Coord contract through DialRedis with rediss://, master_name and
// sentinel_password, then the master is killed with SIGKILL; the
// sentinels promote the replica, and the coordinator works again by
// itself, on the new master. Without the sentinels' password, the
// sentinels refuse to name the master.
func TestCoordOnSentinelOverTLS(t *testing.T) {
	f := redistest.NewTLSFiles(t)
	sen := redistest.StartSentinel(t, redistest.SentinelConfig{Name: "ding", Password: "s3cret-pw", SentinelPassword: "sent-pw",
		Replicas: 1, Sentinels: 3, DownAfter: time.Second, TLS: &f})
	rc := RedisConfig{URL: "rediss://:s3cret-pw@" + sen.SentinelAddrs() + "?master_name=ding&sentinel_password=sent-pw", CA: f.CA, Cert: f.ClientCert, Key: f.ClientKey}
	c, closeRedis, err := DialRedis(rc)
	if err != nil {
		t.Fatal(err)
	}
	defer closeRedis()
	noSentinelPW := rc
	noSentinelPW.URL = "rediss://:s3cret-pw@" + sen.SentinelAddrs() + "?master_name=ding"
	if d, closeD, err := DialRedis(noSentinelPW); err != nil {
		t.Fatal(err)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, _, err := d.Lease(ctx, 1); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
			t.Errorf("a client without the sentinels' password: %v, want their NOAUTH", err)
		}
		cancel()
		closeD()
	}
	sharedRedisContract(t, c)
	if t.Failed() {
		return
	}
	old := sen.Master.Addr
	recoversFromMasterKill(t, c, 42, sen.Master.Kill, func() { t.Logf("the sentinels name %s as the master", sen.MasterAddr(t)) })
	if now := sen.MasterAddr(t); now == old {
		t.Fatalf("the sentinels still name %s, the killed master", old)
	}
}

// What go-redis logs (here: a pool that cannot dial) reaches the logger
// LogRedisTo was given, as one of its records, not go-redis's own line.
func TestLogRedisTo(t *testing.T) {
	var mu sync.Mutex
	var buf bytes.Buffer
	LogRedisTo(slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, nil)))
	t.Cleanup(func() { LogRedisTo(slog.Default()) })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	c, closeRedis, err := DialRedis(RedisConfig{URL: "redis://u:s3cret-pw@" + closed})
	if err != nil {
		t.Fatal(err)
	}
	defer closeRedis()
	if _, _, err := c.Lease(context.Background(), 1); err == nil {
		t.Fatal("a closed port answered")
	}
	mu.Lock()
	got := buf.String()
	mu.Unlock()
	if !strings.Contains(got, "level=WARN") || !strings.Contains(got, "component=redis") || !strings.Contains(got, "failed to dial") || strings.Contains(got, "s3cret") {
		t.Fatalf("go-redis's log as the member's logger got it: %q", got)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// The coordinator on a Redis Cluster that speaks TLS only (clients, the
// cluster bus and replication), logged in as an ACL user of RedisACL's
// rights: the Redis part of the Coord contract through DialRedis with
// rediss:// and every node's address, each node's certificate checked
// against the address dialled (the nodes announce theirs: CLUSTER
// SLOTS).
func TestCoordOnRedisClusterOverTLS(t *testing.T) {
	f := redistest.NewTLSFiles(t)
	acl := append([]string{"--user", "dingd", "on", ">dingd-pw"}, strings.Fields(RedisACL)...)
	rc := redistest.StartClusterTLS(t, f, 3, 1, time.Second, acl...)
	c, closeRedis, err := DialRedis(RedisConfig{URL: "rediss://dingd:dingd-pw@" + strings.Join(rc.Addrs(), ","), CA: f.CA, Cert: f.ClientCert, Key: f.ClientKey})
	if err != nil {
		t.Fatal(err)
	}
	defer closeRedis()
	sharedRedisContract(t, c)
}
