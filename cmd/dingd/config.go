package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dingmq/ding/channels/email"
	"github.com/dingmq/ding/channels/push"
	"github.com/dingmq/ding/channels/twilio"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/ratelimit"
)

// config is dingd's effective configuration: every setting in the table
// below after the default, the config file, the environment and the
// command line, in rising precedence.
type config struct {
	Data, Listen, HTTP string
	MaxBody            int
	LogLevel           string
	DrainTimeout       time.Duration
	DrainDelay         time.Duration
	PProf              string
	// MetricsAuth puts /metrics behind an admin token with the metrics
	// permission.
	MetricsAuth bool
	// Twilio holds AccountSID, AuthToken, From, PublicURL and APIURL; the
	// rest is left to node.Start.
	Twilio twilio.Config
	// SMTP* and Email* configure e-mail escalation steps (package
	// channels/email); the password is read from SMTPPasswordFile at
	// start. Links use Twilio.PublicURL (public-url).
	SMTPAddr, SMTPTLS, SMTPUsername, SMTPPasswordFile, EmailFrom string
	EmailLinkTTL                                                 time.Duration
	// Push holds the push-* settings (package channels/push); the key
	// and credentials files are read by the node at start.
	Push           push.Config
	PushRate       int
	Quotas         engine.Quotas
	NoCallFallback bool
	// BurnAfter and SecretUnreadTTL tune secret chats; zero takes the
	// engine's defaults (30s, 24h).
	BurnAfter       time.Duration
	SecretUnreadTTL time.Duration
	// Webhooks tune the delivery of outbound event webhooks.
	Webhooks node.WebhooksConfig
	// Cluster mode (package cluster): Redis address(es), this member's
	// id and advertised HTTP URL, the shared secret, the lease TTL.
	Cluster, NodeID, Advertise, ClusterSecret string
	LeaseTTL                                  time.Duration
	AckReplicas                               int
	ClusterCA                                 string
	// Redis holds what reaches Redis besides its URL (Cluster): a
	// password kept out of the URL, TLS files (cluster.RedisConfig).
	RedisPassword, RedisCA, RedisCert, RedisKey string
	// AdvertiseSocket is this member's socket listener as clients reach
	// it; empty: Advertise's host and Listen's port.
	AdvertiseSocket string
	// AdvertiseTLSSocket is its TLS socket listener as clients reach it.
	AdvertiseTLSSocket string
	// BackupDir is where POST /v1/backup writes; empty: DATA/backups.
	BackupDir string
	// TLSCert and TLSKey serve the HTTP port over TLS; TLSListen adds a
	// socket listener over TLS; TLSClientCA asks their clients for
	// certificates that CA signed (mTLS).
	TLSCert, TLSKey, TLSListen, TLSClientCA string
	// WS is the WebSocket gateway's own listener; WSOrigins (comma
	// separated) the browser origins it accepts besides the same origin.
	WS, WSOrigins string
	// ACMEDomain (comma-separated names), ACMEEmail and ACMEDirectory get
	// the certificate from an ACME CA instead of TLSCert (acme.go).
	ACMEDomain, ACMEEmail, ACMEDirectory string
	// RestoreFrom, if set, is a backup to make the store of an empty data
	// dir before starting (node.Restore).
	RestoreFrom string
	// Partitions, from 2, runs that many partitions in this process
	// (experimental, node.Config.Partitions); 1: one store, as always.
	Partitions int
	// DiskReserveMB: writes are refused while the data disk has less free
	// space (MiB); 0: 128; negative: no guard.
	DiskReserveMB int
	// PreAuthPerSource and HTTPConnsPerSource bound one source address's
	// connections not yet authenticated on the socket port and open on
	// the HTTP port; 0: no bound.
	PreAuthPerSource, HTTPConnsPerSource int
	// IdleTimeout closes a client connection silent this long (the
	// client pings at a third of it); zero: the gateway's 90s.
	IdleTimeout time.Duration
	// NewDeviceWindow: the latest entries a device's first connection gets.
	NewDeviceWindow int
	// Rate limits (abuse protection, package internal/ratelimit): 0 is
	// no limit. Submits and admin requests are per second, DINGs, token
	// mints and authentication failures per minute; a zero burst is the
	// rate.
	RateUserSubmits, RateUserSubmitsBurst     int
	RateUserDings                             int
	RateAdminRequests, RateAdminRequestsBurst int
	RateTokenMints                            int
	AuthFailuresPerSource                     int
	AuthLockout                               time.Duration
	// Retention: what the engine deletes in the background. Here a zero
	// DedupeWindow or StatsAge means forever and a zero Interval no
	// sweeper (engineRetention maps them to the engine's negatives).
	Retention engine.Retention

	// File is the config file read (--config or DING_CONFIG); empty: none.
	File string
	// PrintConfig asks for the configuration to be printed (--print-config)
	// instead of starting the server.
	PrintConfig bool
	// from says where each setting's value came from, by setting name.
	from map[string]source
	// warnings are logged once the logger exists.
	warnings []string
}

// source is where a setting's effective value came from.
type source string

const (
	fromDefault source = "default"
	fromFile    source = "file"
	fromEnv     source = "env"
	fromFlag    source = "flag"
)

// setting is one configurable value. Its name is both the flag and the
// config file key; the table drives the flags, the environment, the file,
// --help and --print-config, so they cannot drift apart.
type setting struct {
	name   string // flag name and config file key
	env    string // environment variable
	def    string // default, written as on the command line
	help   string
	secret bool // redacted by --print-config, never echoed in errors
	// redact, if set, is what --print-config and the logs show of a
	// value that holds a secret in part (a URL's password).
	redact func(string) string
	// zero, if set, is what the zero value (0, 0s, "") means when that
	// is no value of the setting's own ("no bound", "DATA/backups"):
	// printed by --print-config beside it, so the effect shows.
	zero string
	// effective, if set, is the value the zero stands for, in
	// command-line form: a default the engine or a library applies to a
	// zero ("200", "5m", "https://api.twilio.com"). --help shows it as
	// the default and --print-config prints it in place of the zero; load
	// reads it back as the zero, so a printed file runs exactly as the
	// configuration it was printed from.
	effective string
	// field points into c: a *string, *int, *bool or *time.Duration.
	field func(c *config) any
}

// settings is the table of every setting, in --help and --print-config
// order. Read-only.
var settings = []setting{
	{name: "data", env: "DING_DATA", def: "./ding-data",
		help:  "data directory: store, signing secret, admin token",
		field: func(c *config) any { return &c.Data }},
	{name: "listen", env: "DING_LISTEN", def: ":7070",
		help:  "client socket address",
		field: func(c *config) any { return &c.Listen }},
	{name: "http", env: "DING_HTTP", def: ":7080",
		help:  "admin HTTP address: API, /healthz, /readyz, /metrics, and the WebSocket gateway at /ws",
		field: func(c *config) any { return &c.HTTP }},
	{name: "ws", env: "DING_WS", def: "",
		help:  "also serve the WebSocket gateway (the socket protocol, one frame per binary message; ws://ADDR/ws) on this address, e.g. :7443, on the event loop (no goroutine per idle connection); wss with --tls-cert or ACME, like the HTTP port; empty: only /ws on the HTTP port",
		field: func(c *config) any { return &c.WS }},
	{name: "ws-origins", env: "DING_WS_ORIGINS", def: "",
		help:  "browser origins (scheme://host[:port], separated by commas; * for any) the WebSocket gateway accepts besides the same origin; a client sending no Origin (not a browser) is always accepted and authenticates with its token; empty: the same origin only",
		field: func(c *config) any { return &c.WSOrigins }},
	{name: "max-body", env: "DING_MAX_BODY", def: "65536",
		help:  "largest message body in bytes",
		field: func(c *config) any { return &c.MaxBody }},
	{name: "log-level", env: "DING_LOG_LEVEL", def: "info",
		help:  "debug, info, warn or error",
		field: func(c *config) any { return &c.LogLevel }},
	{name: "drain-timeout", env: "DING_DRAIN_TIMEOUT", def: "15s",
		help:  "how long SIGTERM waits for connections to drain",
		field: func(c *config) any { return &c.DrainTimeout }},
	{name: "drain-delay", env: "DING_DRAIN_DELAY", def: "0s",
		help:  "on SIGTERM, keep serving with /readyz answering 503 this long before draining, so load balancers stop sending new clients (counts against drain-timeout)",
		field: func(c *config) any { return &c.DrainDelay }},
	{name: "backup-dir", env: "DING_BACKUP_DIR", def: "",
		help:  "the only directory backups (POST /v1/backup, dingctl backup) are written under, kept mode 0700; empty: DATA/backups",
		zero:  "DATA/backups",
		field: func(c *config) any { return &c.BackupDir }},
	{name: "tls-cert", env: "DING_TLS_CERT", def: "",
		help:  "a PEM certificate (chain) file: the HTTP port serves HTTPS with it, and --tls-listen the socket protocol; reloaded on SIGHUP and when the file changes",
		field: func(c *config) any { return &c.TLSCert }},
	{name: "tls-key", env: "DING_TLS_KEY", def: "",
		help:  "the certificate's PEM private key file",
		field: func(c *config) any { return &c.TLSKey }},
	{name: "tls-listen", env: "DING_TLS_LISTEN", def: "",
		help:  "also serve the socket protocol over TLS on this address (with --tls-cert), e.g. :7443; empty: none",
		field: func(c *config) any { return &c.TLSListen }},
	{name: "tls-client-ca", env: "DING_TLS_CLIENT_CA", def: "",
		help:  "a PEM file of the CA(s) whose client certificates (mTLS) the HTTP port and --tls-listen ask for (with --tls-cert); a certificate from another CA fails the handshake, none at all is served as before (tokens). A certificate stands in for a token only if a URI SAN names the identity: ding:admin/NAME (an existing admin, its role and scope) or ding:client/USER/DEVICE (a device, on --tls-listen); the common name is never read. Reloaded with the certificate; empty: none asked for",
		field: func(c *config) any { return &c.TLSClientCA }},
	{name: "acme-domain", env: "DING_ACME_DOMAIN", def: "",
		help:  "get the certificate of the HTTP port (and of --tls-listen) for this public DNS name, or names separated by commas, from an ACME CA (Let's Encrypt by default; using it accepts the CA's terms), instead of --tls-cert: the CA must reach the HTTP port on port 443 at that name (tls-alpn-01); account and certificates kept in DATA/acme (0700), renewed by themselves; one node only; empty: no ACME",
		field: func(c *config) any { return &c.ACMEDomain }},
	{name: "acme-email", env: "DING_ACME_EMAIL", def: "",
		help:  "with --acme-domain: the contact address the CA sends expiry and problem notices to; empty: none",
		field: func(c *config) any { return &c.ACMEEmail }},
	{name: "acme-directory", env: "DING_ACME_DIRECTORY", def: "",
		help:      "with --acme-domain: the ACME CA's directory URL, e.g. a private CA's (its HTTPS is verified with the system's roots; SSL_CERT_FILE adds one)",
		effective: "https://acme-v02.api.letsencrypt.org/directory",
		field:     func(c *config) any { return &c.ACMEDirectory }},
	{name: "restore-from", env: "DING_RESTORE_FROM", def: "",
		help:  "before starting, verify this backup (a directory dingctl backup wrote) and make it the store of --data, which must hold none; secret messages burn (their keys are not in backups); clients need new tokens unless jwt.secret is copied too",
		field: func(c *config) any { return &c.RestoreFrom }},
	{name: "partitions", env: "DING_PARTITIONS", def: "1",
		help:  "experimental: spread users over this many partitions (2 to 64) in this process, each with its own store and engine, messages between them relayed; recorded in the data dir at the first start, which later starts must repeat; with --cluster, every node runs the same count and each partition has its own owner and standby (experimental: the directory is each node's own yet); not with --restore-from, and no backups yet; 1: one store, as always",
		field: func(c *config) any { return &c.Partitions }},
	{name: "disk-reserve-mb", env: "DING_DISK_RESERVE_MB", def: "128",
		help:  "refuse writes (UNAVAILABLE, retryable; reads and deliveries go on) while the data disk has less free space than this, in MiB, and resume above 1.5 times it; a ballast file of a quarter of it is freed then; keep it well above 64 MiB (two of Pebble's memtables); 0 or negative: no guard",
		zero:  "no disk guard",
		field: func(c *config) any { return &c.DiskReserveMB }},
	{name: "preauth-per-source", env: "DING_PREAUTH_PER_SOURCE", def: "256",
		help:  "socket port: connections one source address may hold before their HELLO succeeds; more are closed at once; 0: no bound (clients behind a load balancer that hides their addresses)",
		zero:  "no bound",
		field: func(c *config) any { return &c.PreAuthPerSource }},
	{name: "http-conns-per-source", env: "DING_HTTP_CONNS_PER_SOURCE", def: "64",
		help:  "HTTP port: connections one source address may hold open; more are closed at once; 0: no bound",
		zero:  "no bound",
		field: func(c *config) any { return &c.HTTPConnsPerSource }},
	{name: "rate-user-submits", env: "DING_RATE_USER_SUBMITS", def: "100",
		help:  "messages one user may send per second, over the socket and the admin API together; more get RATE_LIMITED (socket) or 429 (HTTP) with the time to wait; 0: no limit",
		zero:  "no limit",
		field: func(c *config) any { return &c.RateUserSubmits }},
	{name: "rate-user-submits-burst", env: "DING_RATE_USER_SUBMITS_BURST", def: "500",
		help:  "messages one user may send at once above rate-user-submits (at least a connection's 256 unanswered submits, which a reconnecting client resends together); 0: rate-user-submits",
		zero:  "rate-user-submits",
		field: func(c *config) any { return &c.RateUserSubmitsBurst }},
	{name: "rate-user-dings", env: "DING_RATE_USER_DINGS", def: "30",
		help:  "DINGs one user may send per minute (abuse protection; the organisation's quotas are ding-sender-daily and ding-recipient-interval); 0: no limit",
		zero:  "no limit",
		field: func(c *config) any { return &c.RateUserDings }},
	{name: "rate-admin-requests", env: "DING_RATE_ADMIN_REQUESTS", def: "200",
		help:  "admin API requests one admin may make per second; more get 429 with Retry-After; 0: no limit",
		zero:  "no limit",
		field: func(c *config) any { return &c.RateAdminRequests }},
	{name: "rate-admin-requests-burst", env: "DING_RATE_ADMIN_REQUESTS_BURST", def: "1000",
		help:  "admin API requests one admin may make at once above rate-admin-requests; 0: rate-admin-requests",
		zero:  "rate-admin-requests",
		field: func(c *config) any { return &c.RateAdminRequestsBurst }},
	{name: "rate-token-mints", env: "DING_RATE_TOKEN_MINTS", def: "600",
		help:  "client tokens one admin may mint per minute (POST /v1/tokens, dingctl token); 0: no limit",
		zero:  "no limit",
		field: func(c *config) any { return &c.RateTokenMints }},
	{name: "auth-failures-per-source", env: "DING_AUTH_FAILURES_PER_SOURCE", def: "30",
		help:  "failed authentications (a HELLO with a bad, expired or revoked token; an HTTP 401) one source address (an IPv6 /64) may have per minute; then its every attempt, on both ports, good tokens included, is refused with RATE_LIMITED or 429 for auth-lockout; 0: no limit (set it behind a proxy that hides clients' addresses)",
		zero:  "no limit",
		field: func(c *config) any { return &c.AuthFailuresPerSource }},
	{name: "auth-lockout", env: "DING_AUTH_LOCKOUT", def: "5m",
		help:  "how long a source address is refused after auth-failures-per-source failures",
		field: func(c *config) any { return &c.AuthLockout }},
	{name: "idle-timeout", env: "DING_IDLE_TIMEOUT", def: "90s",
		help:  "close a client connection that sends nothing this long (WELCOME tells clients to ping at a third of it)",
		field: func(c *config) any { return &c.IdleTimeout }},
	{name: "new-device-window", env: "DING_NEW_DEVICE_WINDOW", def: "0",
		help:  "how many of the latest entries of a user's stream a device gets on its first connection (no cursor); 0: the whole stream",
		zero:  "the whole stream",
		field: func(c *config) any { return &c.NewDeviceWindow }},
	{name: "retention-max-age", env: "DING_RETENTION_MAX_AGE", def: "0s",
		help:  "delete stream entries and messages older than this (e.g. 90d), in the background; a DING still escalating and a must-confirm message someone has not confirmed are kept until settled; at least 1m; 0: keep forever",
		zero:  "forever",
		field: func(c *config) any { return &c.Retention.MaxAge }},
	{name: "retention-max-entries", env: "DING_RETENTION_MAX_ENTRIES", def: "0",
		help:  "keep at most this many of the newest entries of each user's stream (older ones are deleted in the background; messages go by age only); at least 100; 0: no bound",
		zero:  "no bound",
		field: func(c *config) any { return &c.Retention.MaxEntries }},
	{name: "dedupe-window", env: "DING_DEDUPE_WINDOW", def: "7d",
		help:  "how long a client_msg_id deduplicates retries; after it, the same id sends a new message; at least 1m; 0: forever",
		field: func(c *config) any { return &c.Retention.DedupeWindow }},
	{name: "stats-retention", env: "DING_STATS_RETENTION", def: "400d",
		help:  "how long daily statistics are kept; at least 2d; 0: forever",
		field: func(c *config) any { return &c.Retention.StatsAge }},
	{name: "retention-interval", env: "DING_RETENTION_INTERVAL", def: "10m",
		help:  "time between retention sweeps (dingctl retention sweep runs one now); 0: no sweeps",
		field: func(c *config) any { return &c.Retention.Interval }},
	{name: "metrics-auth", env: "DING_METRICS_AUTH", def: "false",
		help:  "serve /metrics only to an admin token with the metrics permission (roles owner, admin, operator: dingctl admin add prometheus --role operator); default: to anyone who reaches the HTTP port",
		field: func(c *config) any { return &c.MetricsAuth }},
	{name: "pprof", env: "DING_PPROF", def: "",
		help:  "serve net/http/pprof on this address, e.g. 127.0.0.1:6060, never on the HTTP port and without authentication: keep it on loopback; empty: off",
		field: func(c *config) any { return &c.PProf }},
	{name: "twilio-account-sid", env: "TWILIO_ACCOUNT_SID", def: "",
		help:  "Twilio account SID; empty: SMS and voice steps are not configured",
		field: func(c *config) any { return &c.Twilio.AccountSID }},
	{name: "twilio-auth-token", env: "TWILIO_AUTH_TOKEN", def: "", secret: true,
		help:  "Twilio auth token; prefer the environment (flags show in ps)",
		field: func(c *config) any { return &c.Twilio.AuthToken }},
	{name: "twilio-from", env: "TWILIO_FROM", def: "",
		help:  "E.164 number SMS and calls come from",
		field: func(c *config) any { return &c.Twilio.From }},
	{name: "public-url", env: "DING_PUBLIC_URL", def: "",
		help:  "base URL where Twilio reaches this server's webhooks and e-mail recipients open their confirmation links, e.g. https://ding.example.com",
		field: func(c *config) any { return &c.Twilio.PublicURL }},
	{name: "twilio-api-url", env: "TWILIO_API_URL", def: "",
		help:      "base URL replacing https://api.twilio.com, e.g. a fake Twilio for a demo",
		effective: "https://api.twilio.com",
		field:     func(c *config) any { return &c.Twilio.APIURL }},
	{name: "smtp-addr", env: "DING_SMTP_ADDR", def: "",
		help:  "SMTP server host:port for e-mail escalation steps, e.g. smtp.example.com:587; empty: email steps are not configured",
		field: func(c *config) any { return &c.SMTPAddr }},
	{name: "smtp-tls", env: "DING_SMTP_TLS", def: "",
		help:      "starttls (upgrade before anything else; refuse a server without it), tls (TLS from the first byte, port 465), or none (plain text, a loopback server only)",
		effective: "starttls",
		field:     func(c *config) any { return &c.SMTPTLS }},
	{name: "smtp-username", env: "DING_SMTP_USERNAME", def: "",
		help:  "SMTP AUTH PLAIN user name; empty: no authentication",
		field: func(c *config) any { return &c.SMTPUsername }},
	{name: "smtp-password-file", env: "DING_SMTP_PASSWORD_FILE", def: "",
		help:  "file holding the SMTP password (one line; read at start, never logged)",
		field: func(c *config) any { return &c.SMTPPasswordFile }},
	{name: "email-from", env: "DING_EMAIL_FROM", def: "",
		help:  "sender of DING e-mails, e.g. \"Ding <ding@example.com>\"; their confirmation links start with public-url",
		field: func(c *config) any { return &c.EmailFrom }},
	{name: "email-link-ttl", env: "DING_EMAIL_LINK_TTL", def: "0s",
		help:      "how long an e-mail's confirmation links work; 0: 168h",
		effective: "168h0m0s",
		field:     func(c *config) any { return &c.EmailLinkTTL }},
	{name: "push-apns-key-file", env: "DING_PUSH_APNS_KEY_FILE", def: "",
		help:  "APNs token-auth signing key (.p8) for push notifications to iOS; read at start, never logged; empty: no APNs",
		field: func(c *config) any { return &c.Push.APNsKeyFile }},
	{name: "push-apns-key-id", env: "DING_PUSH_APNS_KEY_ID", def: "",
		help:  "the APNs key's id (10 characters, from Apple)",
		field: func(c *config) any { return &c.Push.APNsKeyID }},
	{name: "push-apns-team-id", env: "DING_PUSH_APNS_TEAM_ID", def: "",
		help:  "the Apple developer team id the APNs key belongs to",
		field: func(c *config) any { return &c.Push.APNsTeamID }},
	{name: "push-apns-endpoint", env: "DING_PUSH_APNS_ENDPOINT", def: "",
		help:      "base URL replacing APNs' hosts (both environments), e.g. a fake APNs for a demo or an on-premise relay",
		effective: "https://api.push.apple.com",
		field:     func(c *config) any { return &c.Push.APNsEndpoint }},
	{name: "push-fcm-credentials-file", env: "DING_PUSH_FCM_CREDENTIALS_FILE", def: "",
		help:  "Google service-account JSON file for FCM HTTP v1 push notifications to Android; read at start, never logged; empty: no FCM",
		field: func(c *config) any { return &c.Push.FCMCredentialsFile }},
	{name: "push-fcm-endpoint", env: "DING_PUSH_FCM_ENDPOINT", def: "",
		help:      "base URL replacing https://fcm.googleapis.com, e.g. a fake FCM for a demo or a relay",
		effective: "https://fcm.googleapis.com",
		field:     func(c *config) any { return &c.Push.FCMEndpoint }},
	{name: "push-fcm-token-url", env: "DING_PUSH_FCM_TOKEN_URL", def: "",
		help:  "OAuth token URL replacing the service account's token_uri; empty: the file's",
		field: func(c *config) any { return &c.Push.FCMTokenURL }},
	{name: "push-ca-file", env: "DING_PUSH_CA_FILE", def: "",
		help:  "PEM file of the CAs the push endpoints' certificates must chain to, instead of the system's (a relay with a private CA, cmd/fakepush)",
		field: func(c *config) any { return &c.Push.CAFile }},
	{name: "push-preview", env: "DING_PUSH_PREVIEW", def: "false",
		help:  "put a plain message's text in its push notification (never a secret chat's); default: \"New message from NAME\" only",
		field: func(c *config) any { return &c.Push.Preview }},
	{name: "push-coalesce", env: "DING_PUSH_COALESCE", def: "0s",
		help:      "least time between two message notifications to one device; messages in between make one; 0: 10s",
		effective: "10s",
		field:     func(c *config) any { return &c.Push.Coalesce }},
	{name: "push-grace", env: "DING_PUSH_GRACE", def: "0s",
		help:      "how long a connected device has to acknowledge a new message before it is pushed all the same; 0: 5s, negative: connected devices are never pushed",
		effective: "5s",
		field:     func(c *config) any { return &c.Push.Grace }},
	{name: "push-rate", env: "DING_PUSH_RATE", def: "0",
		help:  "the most push requests per second to the providers (the org's push rate limit); 0: no bound",
		zero:  "no bound",
		field: func(c *config) any { return &c.PushRate }},
	{name: "ding-sender-daily", env: "DING_SENDER_DAILY", def: "0",
		help:      "DINGs one sender may send per UTC day; 0: 200, -1: unlimited",
		effective: "200",
		field:     func(c *config) any { return &c.Quotas.DingsPerSenderPerDay }},
	{name: "ding-recipient-interval", env: "DING_RECIPIENT_INTERVAL", def: "0s",
		help:      "shortest time between DINGs from one sender to the same recipient; 0: 5m, negative: none",
		effective: "5m",
		field:     func(c *config) any { return &c.Quotas.RecipientInterval }},
	{name: "sms-per-day", env: "DING_SMS_PER_DAY", def: "0",
		help:      "org-wide SMS budget per UTC day; 0: 10000, -1: unlimited",
		effective: "10000",
		field:     func(c *config) any { return &c.Quotas.SMSPerDay }},
	{name: "calls-per-day", env: "DING_CALLS_PER_DAY", def: "0",
		help:      "org-wide call budget per UTC day; 0: 2000, -1: unlimited",
		effective: "2000",
		field:     func(c *config) any { return &c.Quotas.CallsPerDay }},
	{name: "emails-per-day", env: "DING_EMAILS_PER_DAY", def: "0",
		help:      "org-wide e-mail budget per UTC day; 0: 10000, -1: unlimited",
		effective: "10000",
		field:     func(c *config) any { return &c.Quotas.EmailsPerDay }},
	{name: "no-call-fallback", env: "DING_NO_CALL_FALLBACK", def: "false",
		help:  "do not send an SMS at once when an escalation call is busy, unanswered or fails",
		field: func(c *config) any { return &c.NoCallFallback }},
	{name: "burn-after", env: "DING_BURN_AFTER", def: "0s",
		help:      "secret chats: a message burns this long after its first read; also the longest delay a level-3 chat may choose; 0: 30s, at least 5s",
		effective: "30s",
		field:     func(c *config) any { return &c.BurnAfter }},
	{name: "secret-unread-ttl", env: "DING_SECRET_UNREAD_TTL", def: "0s",
		help:      "secret chats of level 2 and 3: an unread message burns this long after it was sent; 0: 24h",
		effective: "24h",
		field:     func(c *config) any { return &c.SecretUnreadTTL }},
	{name: "webhook-horizon", env: "DING_WEBHOOK_HORIZON", def: "3d",
		help:  "outbound webhooks: how long an event is retried before it is parked as a dead letter (dingctl webhook deliveries, replay); at least 1m",
		field: func(c *config) any { return &c.Webhooks.Horizon }},
	{name: "webhook-timeout", env: "DING_WEBHOOK_TIMEOUT", def: "10s",
		help:  "outbound webhooks: the longest one delivery attempt may take; at least 100ms",
		field: func(c *config) any { return &c.Webhooks.Timeout }},
	{name: "webhook-max-backoff", env: "DING_WEBHOOK_MAX_BACKOFF", def: "10m",
		help:  "outbound webhooks: the longest wait between retries (they start at 1s and double, with jitter); at least 1s",
		field: func(c *config) any { return &c.Webhooks.MaxBackoff }},
	{name: "webhook-rate", env: "DING_WEBHOOK_RATE", def: "0",
		help:  "outbound webhooks: the most delivery attempts per second to one subscription (one is in flight at a time anyway); 0: no bound",
		zero:  "no bound",
		field: func(c *config) any { return &c.Webhooks.Rate }},
	{name: "cluster", env: "DING_CLUSTER", def: "", redact: cluster.RedactURL,
		help:  "cluster mode: Redis as redis[s]://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT...][/DB][?master_name=NAME|cluster=true] (one address: one Redis; several or cluster=true: a Redis Cluster; master_name: Redis Sentinel, the addresses the sentinels'); empty: one node, no Redis",
		field: func(c *config) any { return &c.Cluster }},
	{name: "redis-password", env: "DING_REDIS_PASSWORD", def: "", secret: true,
		help:  "cluster mode: Redis's password (ACL or requirepass), in place of the --cluster URL's; prefer the environment",
		field: func(c *config) any { return &c.RedisPassword }},
	{name: "redis-ca", env: "DING_REDIS_CA", def: "",
		help:  "cluster mode, rediss://: PEM file of the CA that signed Redis's certificates, trusted besides the system's roots",
		zero:  "the system's roots only",
		field: func(c *config) any { return &c.RedisCA }},
	{name: "redis-cert", env: "DING_REDIS_CERT", def: "",
		help:  "cluster mode, rediss://: PEM certificate this member presents to Redis (with --redis-key; Redis asks for one unless tls-auth-clients is no)",
		field: func(c *config) any { return &c.RedisCert }},
	{name: "redis-key", env: "DING_REDIS_KEY", def: "",
		help:  "cluster mode, rediss://: the PEM private key of --redis-cert",
		field: func(c *config) any { return &c.RedisKey }},
	{name: "node-id", env: "DING_NODE_ID", def: "",
		help:  "cluster mode: this member's id, unique in the cluster",
		field: func(c *config) any { return &c.NodeID }},
	{name: "advertise", env: "DING_ADVERTISE", def: "",
		help:  "cluster mode: this member's HTTP listener as the others reach it, e.g. http://10.0.0.2:7080",
		field: func(c *config) any { return &c.Advertise }},
	{name: "advertise-socket", env: "DING_ADVERTISE_SOCKET", def: "",
		help:  "cluster mode: this member's socket listener as clients reach it (HOST:PORT), named in redirects; empty: --advertise's host and --listen's port",
		zero:  "--advertise's host and --listen's port",
		field: func(c *config) any { return &c.AdvertiseSocket }},
	{name: "advertise-tls-socket", env: "DING_ADVERTISE_TLS_SOCKET", def: "",
		help:  "cluster mode: this member's TLS socket listener (--tls-listen) as clients reach it (HOST:PORT), named in redirects to TLS clients; empty: --advertise's host and --tls-listen's port",
		zero:  "--advertise's host and --tls-listen's port",
		field: func(c *config) any { return &c.AdvertiseTLSSocket }},
	{name: "cluster-secret", env: "DING_CLUSTER_SECRET", def: "", secret: true,
		help:  "cluster mode: the secret the members share (snapshots); prefer the environment",
		field: func(c *config) any { return &c.ClusterSecret }},
	{name: "lease-ttl", env: "DING_LEASE_TTL", def: "3s",
		help:  "cluster mode: an owner's lease; a dead owner's standby takes over about this long after its death",
		field: func(c *config) any { return &c.LeaseTTL }},
	{name: "cluster-ca", env: "DING_CLUSTER_CA", def: "",
		help:  "cluster mode: PEM file of the CA that signed the members' certificates, trusted (besides the system's roots) for their HTTPS to one another; needed when --advertise is https:// with a private CA",
		zero:  "the system's roots only",
		field: func(c *config) any { return &c.ClusterCA }},
	{name: "ack-replicas", env: "DING_ACK_REPLICAS", def: "1",
		help:  "cluster mode: copies besides the owner's that must hold a batch before a submit is acknowledged: 1 (nothing acknowledged is lost when any one member dies) or 0 (owner-only durability: lower latency; a failover loses what the standby had not applied)",
		field: func(c *config) any { return &c.AckReplicas }},
}

// envConfig names the config file when --config is not given.
const envConfig = "DING_CONFIG"

// redacted replaces a secret's value in --print-config's output.
const redacted = "<redacted>"

// lookupSetting returns the setting called name, or nil.
func lookupSetting(name string) *setting {
	for i := range settings {
		if settings[i].name == name {
			return &settings[i]
		}
	}
	return nil
}

// parse sets s's field in c from its command-line form.
func (s *setting) parse(c *config, raw string) error {
	var err error
	switch p := s.field(c).(type) {
	case *string:
		*p = raw
	case *int:
		*p, err = strconv.Atoi(raw)
	case *time.Duration:
		*p, err = parseDuration(raw)
	case *bool:
		*p, err = strconv.ParseBool(raw)
	default:
		panic(fmt.Sprintf("dingd: setting %s has a field of type %T", s.name, p))
	}
	if err != nil {
		return errors.New(s.want())
	}
	return nil
}

// parseDuration is time.ParseDuration that also takes whole days ("7d").
func parseDuration(raw string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(raw, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n < 0 || n > 100*365 {
			return 0, fmt.Errorf("bad duration %q", raw)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(raw)
}

// limits is c's rate limits as the node takes them.
func (c *config) limits() ratelimit.Config {
	return ratelimit.Config{
		UserSubmits:   ratelimit.Rate{N: c.RateUserSubmits, Burst: c.RateUserSubmitsBurst},
		UserDings:     ratelimit.Rate{N: c.RateUserDings, Per: time.Minute},
		AdminRequests: ratelimit.Rate{N: c.RateAdminRequests, Burst: c.RateAdminRequestsBurst},
		TokenMints:    ratelimit.Rate{N: c.RateTokenMints, Per: time.Minute},
		AuthFailures:  ratelimit.Rate{N: c.AuthFailuresPerSource, Per: time.Minute},
		AuthLockout:   c.AuthLockout,
	}
}

// engineRetention is c's retention as the engine takes it: its zero
// DedupeWindow and StatsAge mean the defaults, negative forever; here 0
// means forever (and no sweeps).
func (c *config) engineRetention() engine.Retention {
	r := c.Retention
	for _, d := range []*time.Duration{&r.DedupeWindow, &r.StatsAge, &r.Interval} {
		if *d == 0 {
			*d = -1
		}
	}
	return r
}

// want describes the values s takes, for errors.
func (s *setting) want() string {
	switch s.field(new(config)).(type) {
	case *int:
		return "want an integer"
	case *time.Duration:
		return `want a duration such as "15s", "5m" or "90d"`
	case *bool:
		return "want true or false"
	}
	return "want a string"
}

// format returns s's value in c in its command-line form.
func (s *setting) format(c *config) string {
	switch p := s.field(c).(type) {
	case *string:
		return *p
	case *int:
		return strconv.Itoa(*p)
	case *time.Duration:
		return p.String()
	case *bool:
		return strconv.FormatBool(*p)
	}
	panic(fmt.Sprintf("dingd: setting %s has a field of type %T", s.name, s.field(c)))
}

func (s *setting) isBool() bool {
	_, ok := s.field(new(config)).(*bool)
	return ok
}

// flagValue is a setting on the command line. Set checks the value and
// keeps it; load applies it last, over the file and the environment.
type flagValue struct {
	s   *setting
	raw map[string]string // by setting name; shared by every flagValue
}

func (f flagValue) String() string {
	if f.s == nil {
		return ""
	}
	return f.raw[f.s.name]
}

func (f flagValue) Set(v string) error {
	if err := f.s.parse(new(config), v); err != nil {
		return err
	}
	f.raw[f.s.name] = v
	return nil
}

func (f flagValue) IsBoolFlag() bool { return f.s != nil && f.s.isBool() }

// load resolves the configuration from args, the environment (read through
// getenv, as os.LookupEnv) and the config file: a flag on the command line
// beats the environment, which beats the file, which beats the default. An
// empty environment variable counts as unset. It returns flag.ErrHelp for
// --help.
func load(args []string, getenv func(string) (string, bool)) (*config, error) {
	c := &config{from: map[string]source{}}
	fs := flag.NewFlagSet("dingd", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned as one line; --help prints usage
	fs.StringVar(&c.File, "config", "", "")
	fs.BoolVar(&c.PrintConfig, "print-config", false, "")
	flags := map[string]string{}
	for i := range settings {
		fs.Var(flagValue{s: &settings[i], raw: flags}, settings[i].name, settings[i].help)
	}
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil, err
	} else if err != nil {
		return nil, flagError(err, "dingd --help")
	}
	if fs.NArg() > 0 {
		return nil, usageError(fmt.Sprintf("unexpected argument %q (settings are flags: --name value); see dingd --help", fs.Arg(0)))
	}
	for i := range settings {
		s := &settings[i]
		if err := s.parse(c, s.def); err != nil {
			panic(fmt.Sprintf("dingd: default of %s: %v", s.name, err))
		}
		c.from[s.name] = fromDefault
	}
	if c.File == "" {
		if v, ok := getenv(envConfig); ok {
			c.File = v
		}
	}
	if c.File != "" {
		if err := loadFile(c, c.File); err != nil {
			return nil, err
		}
	}
	for i := range settings {
		s := &settings[i]
		v, ok := getenv(s.env)
		if !ok || v == "" {
			continue
		}
		if err := s.parse(c, v); err != nil {
			if s.secret {
				return nil, fmt.Errorf("%s: %w", s.env, err)
			}
			return nil, fmt.Errorf("%s=%q: %w", s.env, v, err)
		}
		c.from[s.name] = fromEnv
	}
	for i := range settings {
		s := &settings[i]
		if v, ok := flags[s.name]; ok {
			if err := s.parse(c, v); err != nil { // checked by Set already
				return nil, fmt.Errorf("--%s: %w", s.name, err)
			}
			c.from[s.name] = fromFlag
		}
	}
	for i := range settings {
		settings[i].canonical(c)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// usageError is a mistake on the command line: a flag or argument dingd
// does not know, a value it cannot read, a value given by a flag that is
// out of range. dingd exits 2 for it, 1 for any other failure.
type usageError string

func (e usageError) Error() string { return string(e) }

// flagError turns an error of package flag into one line naming the flag
// as it is written (--name) and where help is, as a usageError.
func flagError(err error, help string) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		msg = "unknown flag --" + strings.TrimPrefix(name, "-")
	} else if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		msg = "a value is needed after --" + strings.TrimPrefix(name, "-")
	}
	return usageError(fmt.Sprintf("%s; see %s", strings.Replace(msg, " for flag -", " for flag --", 1), help))
}

// isZero reports whether s's value in c is the zero value.
func (s *setting) isZero(c *config) bool {
	return reflect.ValueOf(s.field(c)).Elem().IsZero()
}

// canonical sets s's value in c to the zero if it is the value the zero
// stands for (s.effective), so that "200" and the default 0 run alike.
func (s *setting) canonical(c *config) {
	if s.effective == "" {
		return
	}
	var eff config
	if err := s.parse(&eff, s.effective); err != nil {
		panic(fmt.Sprintf("dingd: effective value of %s: %v", s.name, err))
	}
	p, e := reflect.ValueOf(s.field(c)).Elem(), reflect.ValueOf(s.field(&eff)).Elem()
	if p.Equal(e) {
		p.SetZero()
	}
}

// invalid is the error for setting name's value, written as value, and
// what it should be: a usageError if the value came from a flag.
func (c *config) invalid(name, value, want string) error {
	msg := fmt.Sprintf("%s %s (from %s): %s", name, value, c.from[name], want)
	if c.from[name] == fromFlag {
		return usageError(msg)
	}
	return errors.New(msg)
}

// holdsSecret reports whether s's value in c is, or holds, a secret (a
// --cluster URL with a password).
func (s *setting) holdsSecret(c *config) bool {
	v := s.format(c)
	if s.redact != nil {
		r := s.redact(v)
		return strings.Contains(r, cluster.RedactedPassword) || strings.Contains(r, "<redacted>")
	}
	return s.secret && v != ""
}

// redis is how this member reaches Redis (cluster mode).
func (c *config) redis() cluster.RedisConfig {
	return cluster.RedisConfig{URL: c.Cluster, Password: c.RedisPassword, CA: c.RedisCA, Cert: c.RedisCert, Key: c.RedisKey}
}

// validate checks what the types alone do not.
func (c *config) validate() error {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return c.invalid("log-level", strconv.Quote(c.LogLevel), "want debug, info, warn or error")
	}
	if c.BurnAfter != 0 && c.BurnAfter < engine.MinBurnAfter {
		return c.invalid("burn-after", c.BurnAfter.String(), "want 0 (the default, 30s) or at least "+engine.MinBurnAfter.String())
	}
	if c.SecretUnreadTTL < 0 {
		return c.invalid("secret-unread-ttl", c.SecretUnreadTTL.String(), "want 0 (the default, 24h) or more")
	}
	if c.Webhooks.Horizon < time.Minute {
		return c.invalid("webhook-horizon", c.Webhooks.Horizon.String(), "want at least 1m")
	}
	if c.Webhooks.Timeout < 100*time.Millisecond {
		return c.invalid("webhook-timeout", c.Webhooks.Timeout.String(), "want at least 100ms")
	}
	if c.Webhooks.Rate < 0 {
		return c.invalid("webhook-rate", strconv.Itoa(c.Webhooks.Rate), "want 0 (no bound) or more")
	}
	if c.Webhooks.MaxBackoff < time.Second {
		return c.invalid("webhook-max-backoff", c.Webhooks.MaxBackoff.String(), "want at least 1s")
	}
	if c.Cluster != "" {
		for _, r := range []struct{ name, v string }{{"node-id", c.NodeID}, {"advertise", c.Advertise}, {"cluster-secret", c.ClusterSecret}} {
			if r.v == "" {
				return fmt.Errorf("cluster mode (cluster from %s) needs %s", c.from["cluster"], r.name)
			}
		}
		if c.LeaseTTL < 100*time.Millisecond {
			return c.invalid("lease-ttl", c.LeaseTTL.String(), "want at least 100ms")
		}
		if err := c.redis().Check(); err != nil {
			return fmt.Errorf("cluster (from %s): %w", c.from["cluster"], err)
		}
		if c.AckReplicas != 0 && c.AckReplicas != 1 {
			return c.invalid("ack-replicas", strconv.Itoa(c.AckReplicas), "want 1 (owner and standby) or 0 (owner only); a partition has one standby")
		}
	}
	if err := c.validateACME(); err != nil {
		return err
	}
	if c.PushRate < 0 {
		return c.invalid("push-rate", strconv.Itoa(c.PushRate), "want 0 (no bound) or more")
	}
	if c.Push.Coalesce < 0 {
		return c.invalid("push-coalesce", c.Push.Coalesce.String(), "want 0 (the default, 10s) or more")
	}
	if pc := c.push(); pc.Validate() != nil {
		return fmt.Errorf("push settings: %w", pc.Validate())
	}
	if err := c.validateEmail(); err != nil {
		return err
	}
	for _, r := range []struct {
		name string
		v    int
	}{{"rate-user-submits", c.RateUserSubmits}, {"rate-user-submits-burst", c.RateUserSubmitsBurst},
		{"rate-user-dings", c.RateUserDings}, {"rate-admin-requests", c.RateAdminRequests},
		{"rate-admin-requests-burst", c.RateAdminRequestsBurst}, {"rate-token-mints", c.RateTokenMints},
		{"auth-failures-per-source", c.AuthFailuresPerSource}} {
		if r.v < 0 {
			return c.invalid(r.name, strconv.Itoa(r.v), "want 0 (no limit) or more")
		}
	}
	if c.AuthFailuresPerSource > 0 && c.AuthLockout < 100*time.Millisecond {
		return c.invalid("auth-lockout", c.AuthLockout.String(), "want at least 100ms (auth-failures-per-source 0 turns the lockout off)")
	}
	if c.Partitions < 1 || c.Partitions > node.MaxPartitions {
		return c.invalid("partitions", strconv.Itoa(c.Partitions), fmt.Sprintf("want 1 (one store) to %d", node.MaxPartitions))
	}
	if c.IdleTimeout < 300*time.Millisecond {
		return c.invalid("idle-timeout", c.IdleTimeout.String(), "want at least 300ms")
	}
	for i := range settings {
		s := &settings[i]
		if s.secret && s.format(c) == redacted {
			return fmt.Errorf("%s is %q (from %s), the placeholder --print-config writes: give the real value (env %s)",
				s.name, redacted, c.from[s.name], s.env)
		}
	}
	return nil
}

// logLevel is c's log level; validate has checked it.
func (c *config) logLevel() slog.Level {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(c.LogLevel))
	return lv
}

// usage writes --help.
func usage(w io.Writer) {
	fmt.Fprintf(w, `Usage:
  dingd [flags]                           run the server
  dingd check [--data DIR | --store DIR]  check the store of a stopped dingd, or a backup
                                          (dingd check --help)
  dingd --version                         print the version and exit
  dingd help [check]                      this help, or check's

dingd is the Ding server. Every setting is a flag, an environment variable
and a key of the TOML config file; a flag beats the environment, which beats
the file, which beats the default. An empty environment variable counts as
unset. Exit status: 0 after a clean stop, 1 on a failure, 2 on a mistake
on the command line.

Example:
  dingd --data ./ding-data --listen 127.0.0.1:7070 --http 127.0.0.1:7080
  dingd --config /etc/ding/dingd.toml --print-config

`)
	var defaults config
	for i := range settings {
		if err := settings[i].parse(&defaults, settings[i].def); err != nil {
			panic(fmt.Sprintf("dingd: default of %s: %v", settings[i].name, err))
		}
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "  --config FILE\t%s\tTOML config file; keys are the flag names below\n", envConfig)
	fmt.Fprintf(tw, "  --print-config\t\tprint the effective configuration as TOML, secrets redacted, and exit\n")
	for i := range settings {
		s := &settings[i]
		arg := ""
		switch s.field(new(config)).(type) {
		case *string:
			arg = " string"
		case *int:
			arg = " int"
		case *time.Duration:
			arg = " duration"
		}
		def := ""
		switch {
		case s.effective != "" && s.isZero(&defaults):
			def = " (default " + s.effective + ")"
		case s.zero != "" && s.isZero(&defaults):
			def = " (default: " + s.zero + ")"
		case s.def != "" && s.def != "false":
			def = " (default " + s.def + ")"
		}
		fmt.Fprintf(tw, "  --%s%s\t%s\t%s%s\n", s.name, arg, s.env, s.help, def)
	}
	tw.Flush()
}

// validateEmail checks the e-mail settings that need no file: what
// email.Config.Validate says, with the setting to blame.
func (c *config) validateEmail() error {
	if c.SMTPAddr == "" {
		for _, r := range []struct{ name, v string }{{"smtp-username", c.SMTPUsername}, {"smtp-password-file", c.SMTPPasswordFile}, {"email-from", c.EmailFrom}} {
			if r.v != "" {
				return fmt.Errorf("%s (from %s) needs smtp-addr", r.name, c.from[r.name])
			}
		}
		return nil
	}
	if c.EmailFrom == "" {
		return fmt.Errorf("smtp-addr (from %s) needs email-from", c.from["smtp-addr"])
	}
	if c.Twilio.PublicURL == "" {
		return fmt.Errorf("smtp-addr (from %s) needs public-url, the base of the e-mails' confirmation links", c.from["smtp-addr"])
	}
	if c.SMTPPasswordFile != "" && c.SMTPUsername == "" {
		return fmt.Errorf("smtp-password-file (from %s) needs smtp-username", c.from["smtp-password-file"])
	}
	if c.EmailLinkTTL < 0 {
		return c.invalid("email-link-ttl", c.EmailLinkTTL.String(), "want 0 (the default, 168h) or more")
	}
	ec := c.email("")
	ec.Key = make([]byte, email.KeySize) // read from the data dir by the node
	if err := ec.Validate(); err != nil {
		return fmt.Errorf("e-mail settings: %w", err)
	}
	return nil
}

// push returns the node's push config.
func (c *config) push() push.Config {
	pc := c.Push
	pc.Rate = float64(c.PushRate)
	return pc
}

// email returns the node's e-mail config, with password.
func (c *config) email(password string) email.Config {
	return email.Config{
		Addr: c.SMTPAddr, TLS: c.SMTPTLS, Username: c.SMTPUsername, Password: password,
		From: c.EmailFrom, PublicURL: c.Twilio.PublicURL, LinkTTL: c.EmailLinkTTL,
	}
}

// readPassword reads the SMTP password file: its first line, without the
// line end. Its content never appears in an error.
func readPassword(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("smtp-password-file: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.TrimSuffix(line, "\r")
	if line == "" {
		return "", fmt.Errorf("smtp-password-file %s is empty", path)
	}
	return line, nil
}
