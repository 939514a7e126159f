package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisConfig is how a member reaches Redis: the URL (dingd --cluster),
// and what does not belong in a URL.
//
// The URL is
//
//	redis[s]://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT...][/DB][?PARAMS]
//
// and picks one of go-redis's three clients (UniversalClient):
//
//   - one address: one Redis (its replicas, if any, are not used);
//   - several addresses, or one with cluster=true (a configuration
//     endpoint): a Redis Cluster's seeds;
//   - master_name=NAME: Redis Sentinel; the addresses are the sentinels',
//     which name the master to use and, after a failover, the new one.
//
// rediss:// speaks TLS to every server (the sentinels too), checking
// each certificate against the address dialled and the system's roots
// plus CA. USER and PASSWORD (percent-encoded, as in any URL) are those
// of Redis's ACL (USER empty or absent: requirepass's "default" user);
// Password, if set, is used in their place, so that the password need
// not be in the URL (nor in ps). A Sentinel's own credentials, when it
// has them, are sentinel_username and sentinel_password. PARAMS are only
// those named here: anything else is refused, so that a misspelt one is
// not ignored.
type RedisConfig struct {
	URL string
	// Password, if not empty, replaces the URL's password.
	Password string
	// CA is a PEM file of the CAs that signed Redis's certificates,
	// trusted besides the system's roots (rediss:// only).
	CA string
	// Cert and Key are a PEM certificate and key this member presents to
	// Redis (rediss:// only; Redis asks for one unless its
	// tls-auth-clients is no).
	Cert, Key string
}

// RedisACL is what a member's Redis user needs, as the rules of an ACL
// user (after "user NAME on >PASSWORD"), tested enough on one Redis,
// through Sentinel and on a Redis Cluster: the keys and channels under ding: and {ding:, and
// every command but the @dangerous ones (KEYS, FLUSHALL, CONFIG, INFO
// and the like), scripting's own (SCRIPT, FUNCTION: only EVAL and
// EVALSHA run the members' scripts), SCAN and RANDOMKEY (which would
// list keys outside the patterns). Not the least possible: it allows
// every other command on those keys.
const RedisACL = "resetchannels ~ding:* ~{ding:* &ding:* &{ding:* +@all -@dangerous -@scripting +eval +evalsha -scan -randomkey"

// blockingReads is the room RedisOptions adds to the connection pool for
// blocking reads: one per partition a node may follow (64, and the
// directory's), and a margin.
const blockingReads = 72

// RedactedPassword stands for a password in RedactURL's output.
const RedactedPassword = "xxxxx"

// RedactURL returns u with its password and every parameter's value but
// master_name's, sentinel_username's and cluster's replaced, for logs
// and errors. It fails closed: a URL it cannot split for certain (an
// '@' after the addresses, as a password holding an unencoded '/' or
// '?' leaves) is redacted after its scheme whole, and a query that does
// not parse or names a parameter RedisOptions does not know, whole.
func RedactURL(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return "<redacted>"
	}
	userinfo, hosts, tail, ok := splitRedisURL(rest)
	if !ok {
		return scheme + "://<redacted>"
	}
	hostPart := hosts
	if strings.Contains(rest, "@") { // in the userinfo: not in tail (ok)
		user, _, hasPass := strings.Cut(userinfo, ":")
		if hasPass {
			user += ":" + RedactedPassword
		}
		hostPart = user + "@" + hosts
	}
	if path, query, ok := strings.Cut(tail, "?"); ok {
		ps, err := parseParams(query)
		if err != nil {
			return scheme + "://" + hostPart + path + "?<redacted>"
		}
		var out []string
		for _, p := range ps {
			shown, known := redisParams[p.key]
			if !known { // a name may be a password's piece after an '&'
				return scheme + "://" + hostPart + path + "?<redacted>"
			}
			if !shown {
				p.raw = RedactedPassword
			}
			out = append(out, p.key+"="+p.raw)
		}
		tail = path + "?" + strings.Join(out, "&")
	}
	return scheme + "://" + hostPart + tail
}

// splitRedisURL cuts what follows redis[s]:// into its userinfo (as
// written, empty without an '@'), its addresses, and the database and
// query after them; false if an '@' follows the addresses, so that part
// of the userinfo would be taken for a database or parameters.
func splitRedisURL(rest string) (userinfo, hosts, tail string, ok bool) {
	hosts = rest
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		hosts, tail = rest[:i], rest[i:]
	}
	if i := strings.LastIndex(hosts, "@"); i >= 0 {
		userinfo, hosts = hosts[:i], hosts[i+1:]
	}
	return userinfo, hosts, tail, !strings.Contains(tail, "@")
}

// param is one of a URL's parameters: its name, its value as written,
// and decoded.
type param struct{ key, raw, value string }

// parseParams splits a URL's query into its parameters, in order. Unlike
// url.ParseQuery it leaves '+' as it is (a password's '+' is no space);
// '%' escapes decode.
func parseParams(query string) ([]param, error) {
	var ps []param
	if query == "" {
		return nil, nil
	}
	for _, kv := range strings.Split(query, "&") {
		k, raw, _ := strings.Cut(kv, "=")
		key, err := url.PathUnescape(k)
		if err != nil {
			return nil, err
		}
		value, err := url.PathUnescape(raw)
		if err != nil {
			return nil, err
		}
		ps = append(ps, param{key, raw, value})
	}
	return ps, nil
}

// redisParams are the URL parameters RedisOptions reads, each true if
// RedactURL shows its value.
var redisParams = map[string]bool{"master_name": true, "sentinel_username": true, "sentinel_password": false, "cluster": true}

// RedisOptions parses rc into go-redis's options, reading its TLS files.
// Its errors never echo a password.
func RedisOptions(rc RedisConfig) (*redis.UniversalOptions, error) {
	return redisOptions(rc, true)
}

// Check finds what RedisOptions would refuse in rc, but for TLS files it
// cannot read (dingd's configuration checks it at start, and
// --print-config prints a configuration for another machine).
func (rc RedisConfig) Check() error {
	_, err := redisOptions(rc, false)
	return err
}

func redisOptions(rc RedisConfig, readFiles bool) (*redis.UniversalOptions, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("cluster: Redis URL %s: %s", RedactURL(rc.URL), fmt.Sprintf(format, a...))
	}
	const want = "want redis[s]://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT...][/DB][?master_name=NAME|cluster=true]"
	scheme, rest, ok := strings.Cut(rc.URL, "://")
	if !ok || (scheme != "redis" && scheme != "rediss") {
		return nil, bad("%s", want)
	}
	o := &redis.UniversalOptions{}
	userinfo, hostPart, tail, ok := splitRedisURL(rest)
	if !ok {
		return nil, bad("an '@' follows the addresses: percent-encode '/', '?', '#' and '@' in the user and password")
	}
	if userinfo != "" {
		user, pass, _ := strings.Cut(userinfo, ":")
		var err1, err2 error
		o.Username, err1 = url.PathUnescape(user)
		o.Password, err2 = url.PathUnescape(pass)
		if err1 != nil || err2 != nil {
			return nil, bad("the user or password is not percent-encoded")
		}
	}
	if rc.Password != "" {
		o.Password = rc.Password
	}
	if hostPart == "" {
		return nil, bad("no address: %s", want)
	}
	for _, a := range strings.Split(hostPart, ",") {
		h, p, err := net.SplitHostPort(a)
		if port, perr := strconv.ParseUint(p, 10, 16); err != nil || h == "" || perr != nil || port == 0 {
			return nil, bad("address %q: want HOST:PORT", a)
		}
		o.Addrs = append(o.Addrs, a)
	}
	path, query, _ := strings.Cut(tail, "?")
	if path = strings.TrimPrefix(path, "/"); path != "" {
		db, err := strconv.Atoi(path)
		if err != nil || db < 0 {
			return nil, bad("database %q: want a number", path)
		}
		o.DB = db
	}
	ps, err := parseParams(query)
	if err != nil {
		return nil, bad("its parameters do not parse: percent-encode '%%', '&' and '=' in a value")
	}
	q := url.Values{}
	for _, p := range ps {
		if _, known := redisParams[p.key]; !known {
			// Not named: a password's '&' unencoded makes a parameter of
			// its rest.
			return nil, bad("an unknown parameter (known: master_name, sentinel_username, sentinel_password, cluster)")
		}
		if q.Has(p.key) {
			return nil, bad("parameter %q given twice", p.key)
		}
		q.Set(p.key, p.value)
	}
	if q.Has("master_name") && q.Get("master_name") == "" {
		return nil, bad("master_name is empty")
	}
	o.MasterName = q.Get("master_name")
	o.SentinelUsername, o.SentinelPassword = q.Get("sentinel_username"), q.Get("sentinel_password")
	if o.MasterName == "" && (o.SentinelUsername != "" || o.SentinelPassword != "") {
		return nil, bad("sentinel_username and sentinel_password need master_name (Redis Sentinel)")
	}
	if q.Has("cluster") {
		if q.Get("cluster") != "true" {
			return nil, bad("cluster=%q: want true (several addresses are a Redis Cluster's anyway)", q.Get("cluster"))
		}
		if o.MasterName != "" {
			return nil, bad("cluster=true and master_name: a Redis Cluster or Sentinel, not both")
		}
		o.IsClusterMode = true
	}
	if o.DB != 0 && o.MasterName == "" && (len(o.Addrs) > 1 || o.IsClusterMode) {
		return nil, bad("a Redis Cluster has database 0 only")
	}
	// A standby's read of its partition's stream blocks (ReadEntries),
	// holding a connection for up to a poll, and a node follows up to
	// every partition but those it owns: go-redis's pool (10 per
	// GOMAXPROCS) would be all theirs with a few cores and many
	// partitions, and a lease renewal would wait past its TTL for a
	// connection (TestBlockingReadsLeaveConnectionsForLeases).
	o.PoolSize = 10*runtime.GOMAXPROCS(0) + blockingReads
	// go-redis's own commands on each new connection that Ding does not
	// need: CLIENT SETINFO (an error on Redis before 7.2) and CLIENT
	// MAINT_NOTIFICATIONS.
	o.DisableIdentity = true
	o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	if o.Password == RedactedPassword || o.SentinelPassword == RedactedPassword {
		return nil, bad("the password is %s, which stands for one in logs and --print-config: give the real one", RedactedPassword)
	}
	if scheme == "rediss" {
		if (rc.Cert == "") != (rc.Key == "") {
			return nil, errors.New("cluster: TLS to Redis: a client certificate needs both its certificate and its key")
		}
		if !readFiles {
			return o, nil
		}
		if o.TLSConfig, err = redisTLS(rc); err != nil {
			return nil, fmt.Errorf("cluster: TLS to Redis: %w", err)
		}
	} else if rc.CA != "" || rc.Cert != "" || rc.Key != "" {
		return nil, bad("a CA or client certificate is given, but the URL is redis://, not rediss:// (TLS)")
	}
	return o, nil
}

// redisTLS is the TLS configuration rediss:// dials with. ServerName is
// left empty: each connection checks the certificate against the host
// it dials (every node of a Redis Cluster, every sentinel and master).
func redisTLS(rc RedisConfig) (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if rc.CA != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(rc.CA)
		if err != nil {
			return nil, err
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", rc.CA)
		}
		t.RootCAs = pool
	}
	if rc.Cert != "" {
		kp, err := tls.LoadX509KeyPair(rc.Cert, rc.Key)
		if err != nil {
			return nil, err
		}
		t.Certificates = []tls.Certificate{kp}
	}
	return t, nil
}
