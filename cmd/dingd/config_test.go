package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/pelletier/go-toml/v2"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
)

// fakeEnv is a getenv over m.
func fakeEnv(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// tempFile writes body to a new file and returns its path.
func tempFile(t testing.TB, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	writeFile(t, p, body)
	return p
}

func TestPrecedence(t *testing.T) {
	file := tempFile(t, "dingd.toml", `
listen = "file:1"
http = "file:2"
max-body = 3
drain-timeout = "4s"
twilio-from = "+15550000001"
no-call-fallback = true
`)
	other := tempFile(t, "other.toml", `listen = "other:1"`)
	for _, tc := range []struct {
		name      string
		args      []string
		env       map[string]string
		key, want string
		from      source
	}{
		{"default", nil, nil, "listen", ":7070", fromDefault},
		{"file beats default", []string{"--config", file}, nil, "listen", "file:1", fromFile},
		{"env beats file", []string{"--config", file}, map[string]string{"DING_LISTEN": "env:1"}, "listen", "env:1", fromEnv},
		{"flag beats env", []string{"--config", file, "--listen", "flag:1"}, map[string]string{"DING_LISTEN": "env:1"}, "listen", "flag:1", fromFlag},
		{"flag beats file", []string{"--config", file, "--max-body=30"}, nil, "max-body", "30", fromFlag},
		{"env int beats file", []string{"--config", file}, map[string]string{"DING_MAX_BODY": "300"}, "max-body", "300", fromEnv},
		{"file duration", []string{"--config", file}, nil, "drain-timeout", "4s", fromFile},
		{"env duration beats file", []string{"--config", file}, map[string]string{"DING_DRAIN_TIMEOUT": "40s"}, "drain-timeout", "40s", fromEnv},
		{"an empty env var is unset", []string{"--config", file}, map[string]string{"DING_HTTP": ""}, "http", "file:2", fromFile},
		{"secret from env", []string{"--config", file}, map[string]string{"TWILIO_AUTH_TOKEN": "tok"}, "twilio-auth-token", "tok", fromEnv},
		{"file bool", []string{"--config", file}, nil, "no-call-fallback", "true", fromFile},
		{"env bool beats file", []string{"--config", file}, map[string]string{"DING_NO_CALL_FALLBACK": "0"}, "no-call-fallback", "false", fromEnv},
		{"flag bool beats env", []string{"--no-call-fallback"}, map[string]string{"DING_NO_CALL_FALLBACK": "false"}, "no-call-fallback", "true", fromFlag},
		{"flag bool false beats file", []string{"--config", file, "--no-call-fallback=false"}, nil, "no-call-fallback", "false", fromFlag},
		{"DING_CONFIG names the file", nil, map[string]string{"DING_CONFIG": file}, "twilio-from", "+15550000001", fromFile},
		{"--config beats DING_CONFIG", []string{"--config", other}, map[string]string{"DING_CONFIG": file}, "listen", "other:1", fromFile},
		{"the last flag wins", []string{"--listen", "a", "--listen", "b"}, nil, "listen", "b", fromFlag},
		{"env burn-after", nil, map[string]string{"DING_BURN_AFTER": "1m"}, "burn-after", "1m0s", fromEnv},
		{"flag secret-unread-ttl", []string{"--secret-unread-ttl", "1h"}, nil, "secret-unread-ttl", "1h0m0s", fromFlag},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := load(tc.args, fakeEnv(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			s := lookupSetting(tc.key)
			if got := s.format(c); got != tc.want || c.from[tc.key] != tc.from {
				t.Fatalf("%s = %q from %s, want %q from %s", tc.key, got, c.from[tc.key], tc.want, tc.from)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	file := func(body string) []string { return []string{"--config", tempFile(t, "dingd.toml", body)} }
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string // a regexp the one-line error must match
	}{
		{"flag out of range", []string{"--idle-timeout", "1ms"}, nil, `^idle-timeout 1ms \(from flag\): want at least 300ms$`},
		{"missing flag value", []string{"--listen"}, nil, `^a value is needed after --listen; see dingd --help$`},
		{"unknown key", file("data = \"x\"\n\nbogus = 1\n"), nil, `dingd\.toml:3:1: unknown key "bogus"$`},
		{"unknown keys", file("bogus = 1\nlisten = \":1\"\nmax_body = 2\n"), nil, `:1:1: unknown key "bogus"; .*:3:1: unknown key "max_body"$`},
		{"table", file("[twilio]\nfrom = \"+15550000001\"\n"), nil, `:1:2: unknown key "twilio"`},
		{"string for int", file("max-body = \"big\"\n"), nil, `:1:12: max-body: want an integer, not a TOML string$`},
		{"float for int", file("max-body = 1.5\n"), nil, `:1:12: max-body: want an integer, not a TOML float$`},
		{"int for string", file("data = 5\n"), nil, `:1:8: data: want a string, not a TOML integer$`},
		{"int for duration", file("drain-timeout = 15\n"), nil, `:1:17: drain-timeout: want a duration such as "15s", "5m" or "90d", not a TOML integer$`},
		{"zero int for duration", file("drain-timeout = 0\n"), nil, `:1:17: drain-timeout: want a duration such as "15s", "5m" or "90d", not a TOML integer$`},
		{"bad duration", file("drain-timeout = \"soon\"\n"), nil, `dingd\.toml: drain-timeout: want a duration such as "15s", "5m" or "90d", not "soon"$`},
		{"string for bool", file("no-call-fallback = \"yes\"\n"), nil, `:1:20: no-call-fallback: want true or false, not a TOML string$`},
		{"int too large", file("max-body = 99999999999999999999\n"), nil, `:1:12: max-body: .*too large`},
		{"duplicate key", file("data = \"a\"\ndata = \"b\"\n"), nil, `:2:1: data: .*already defined`},
		{"syntax", file("data = \"a\nb\"\n"), nil, `dingd\.toml:1:\d+: .*new line`},
		{"missing file", []string{"--config", "/nonexistent/dingd.toml"}, nil, `config file: open /nonexistent/dingd.toml: no such file`},
		{"missing DING_CONFIG file", nil, map[string]string{"DING_CONFIG": "/nonexistent/d.toml"}, `open /nonexistent/d.toml`},
		{"env int", nil, map[string]string{"DING_MAX_BODY": "lots"}, `^DING_MAX_BODY="lots": want an integer$`},
		{"env bool", nil, map[string]string{"DING_NO_CALL_FALLBACK": "yes"}, `^DING_NO_CALL_FALLBACK="yes": want true or false$`},
		{"flag int", []string{"--max-body", "lots"}, nil, `invalid value "lots" for flag --max-body: want an integer`},
		{"unknown flag", []string{"--bogus"}, nil, `unknown flag --bogus; see dingd --help`},
		{"argument", []string{"serve"}, nil, `unexpected argument "serve"`},
		{"ack-replicas", []string{"--cluster", "redis://127.0.0.1:1", "--node-id", "a", "--advertise", "http://127.0.0.1:2", "--cluster-secret", "s", "--ack-replicas", "2"}, nil, `^ack-replicas 2 \(from flag\): want 1 \(owner and standby\) or 0 \(owner only\)`},
		{"log level", file("log-level = \"loud\"\n"), nil, `log-level "loud" \(from file\): want debug, info, warn or error`},
		{"burn-after below the minimum", []string{"--burn-after", "1s"}, nil, `^burn-after 1s \(from flag\): want 0 \(the default, 30s\) or at least 5s$`},
		{"negative burn-after", file("burn-after = \"-5s\"\n"), nil, `^burn-after -5s \(from file\): want 0`},
		{"negative secret-unread-ttl", nil, map[string]string{"DING_SECRET_UNREAD_TTL": "-1h"}, `^secret-unread-ttl -1h0m0s \(from env\): want 0`},
		{"negative rate", []string{"--rate-user-submits", "-1"}, nil, `^rate-user-submits -1 \(from flag\): want 0 \(no limit\) or more$`},
		{"lockout too short", nil, map[string]string{"DING_AUTH_LOCKOUT": "10ms"}, `^auth-lockout 10ms \(from env\): want at least 100ms`},
		{"redaction placeholder", file("twilio-auth-token = \"<redacted>\"\n"), nil, `twilio-auth-token is "<redacted>" \(from file\), the placeholder --print-config writes`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(tc.args, fakeEnv(tc.env))
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error has more than one line: %q", err)
			}
			if !regexp.MustCompile(tc.want).MatchString(err.Error()) {
				t.Fatalf("error %q does not match %s", err, tc.want)
			}
			// A mistake on the command line exits 2; in a file or the
			// environment, 1.
			want := 1
			if strings.HasPrefix(tc.name, "flag") || strings.Contains(err.Error(), "(from flag)") || strings.Contains(err.Error(), "see dingd --help") {
				want = 2
			}
			if got := exitCode(err); got != want {
				t.Fatalf("exit status %d for %q, want %d", got, err, want)
			}
		})
	}
	if _, err := load([]string{"--help"}, fakeEnv(nil)); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
}

// TestSecretNeverEchoed: a secret's value appears in no error and, when
// set, --print-config shows <redacted>.
func TestSecretNeverEchoed(t *testing.T) {
	const tok = "s3cret-token"
	c, err := load(nil, fakeEnv(map[string]string{"TWILIO_AUTH_TOKEN": tok}))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := printConfig(&out, c); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), tok) || !strings.Contains(out.String(), `twilio-auth-token = "<redacted>"`) {
		t.Fatalf("--print-config:\n%s", out.String())
	}
	c, _ = load(nil, fakeEnv(nil))
	out.Reset()
	printConfig(&out, c)
	if !strings.Contains(out.String(), `twilio-auth-token = ""`) {
		t.Fatalf("--print-config without a token:\n%s", out.String())
	}
}

// TestPrintConfigRoundTrip sets every setting to something other than its
// default, with characters TOML must escape, prints, loads the output back
// (the secret put back in place of <redacted>) and compares.
func TestPrintConfigRoundTrip(t *testing.T) {
	odd := "a \"quoted\" \\path\\ with\ttab, é and \x01"
	args := []string{
		"--data", "/var/lib/" + odd, "--listen", "127.0.0.1:1", "--http", "127.0.0.1:2",
		"--max-body", "-5", "--log-level", "debug", "--drain-timeout", "1m30s", "--drain-delay", "2s", "--idle-timeout", "20s", "--new-device-window", "500", "--backup-dir", "/srv/" + odd, "--preauth-per-source", "9", "--disk-reserve-mb", "64", "--tls-cert", "/etc/ding/c.pem", "--tls-key", "/etc/ding/k.pem", "--tls-listen", ":7443", "--tls-client-ca", "/etc/ding/clients.pem", "--restore-from", "/srv/bk", "--partitions", "4", "--http-conns-per-source", "0", "--pprof", "127.0.0.1:3", "--metrics-auth",
		"--twilio-account-sid", "AC1", "--twilio-from", "+15550000001",
		"--public-url", "https://ding.example.com", "--twilio-api-url", "http://127.0.0.1:4",
		"--ding-sender-daily", "-1", "--ding-recipient-interval", "-1ns", "--sms-per-day", "7",
		"--calls-per-day", "8", "--emails-per-day", "9", "--no-call-fallback",
		"--smtp-addr", "127.0.0.1:25", "--smtp-tls", "none", "--smtp-username", "ding", "--smtp-password-file", "/etc/ding/smtp.password",
		"--email-from", "Ding <ding@example.com>", "--email-link-ttl", "24h", "--burn-after", "45s", "--secret-unread-ttl", "2h",
		"--webhook-horizon", "2d", "--webhook-timeout", "5s", "--webhook-max-backoff", "30s", "--webhook-rate", "50",
		"--cluster", "rediss://dingd@127.0.0.1:5?master_name=m", "--redis-ca", "/etc/ding/redis-ca.pem", "--redis-cert", "/etc/ding/redis-c.pem", "--redis-key", "/etc/ding/redis-k.pem", "--node-id", "n1", "--advertise", "http://127.0.0.1:2", "--lease-ttl", "5s",
		"--advertise-socket", "127.0.0.1:9", "--ack-replicas", "0", "--cluster-ca", "/etc/ding/ca.pem", "--advertise-tls-socket", "127.0.0.1:10",
		"--retention-max-age", "90d", "--retention-max-entries", "5000", "--dedupe-window", "0s", "--stats-retention", "30d", "--retention-interval", "1m",
		"--rate-user-submits", "0", "--rate-user-submits-burst", "0", "--rate-user-dings", "3", "--rate-admin-requests", "7",
		"--rate-admin-requests-burst", "9", "--rate-token-mints", "0", "--auth-failures-per-source", "5", "--auth-lockout", "30s",
		"--ws", "127.0.0.1:11", "--ws-origins", "https://app.example.com",
		"--push-apns-key-file", "/etc/ding/AuthKey.p8", "--push-apns-key-id", "KEY1234567", "--push-apns-team-id", "TEAM123456",
		"--push-apns-endpoint", "https://127.0.0.1:12", "--push-fcm-credentials-file", "/etc/ding/sa.json",
		"--push-fcm-endpoint", "https://127.0.0.1:13", "--push-fcm-token-url", "https://127.0.0.1:13/token",
		"--push-preview", "--push-coalesce", "30s", "--push-rate", "500", "--push-ca-file", "/etc/ding/push-ca.pem", "--push-grace", "3s",
	}
	const tok, csecret, rpw = "tok\"en", "cl\\uster", "re\"dis"
	c, err := load(args, fakeEnv(map[string]string{"TWILIO_AUTH_TOKEN": tok, "DING_CLUSTER_SECRET": csecret, "DING_REDIS_PASSWORD": rpw}))
	if err != nil {
		t.Fatal(err)
	}
	for i := range settings {
		s := &settings[i]
		// The acme-* settings exclude tls-cert and cluster:
		// TestACMEPrintConfigRoundTrip has them.
		if s.format(c) == s.def && !strings.HasPrefix(s.name, "acme-") {
			t.Fatalf("%s is its default: the test must change every setting", s.name)
		}
	}
	var out bytes.Buffer
	if err := printConfig(&out, c); err != nil {
		t.Fatal(err)
	}
	// The secrets in the settings' order.
	printed := strings.Replace(out.String(), `"<redacted>"`, tomlString(tok), 1)
	printed = strings.Replace(printed, `"<redacted>"`, tomlString(rpw), 1)
	printed = strings.Replace(printed, `"<redacted>"`, tomlString(csecret), 1)
	c2, err := load([]string{"--config", tempFile(t, "printed.toml", printed)}, fakeEnv(nil))
	if err != nil {
		t.Fatalf("%v\n%s", err, printed)
	}
	for i := range settings {
		s := &settings[i]
		if a, b := s.format(c), s.format(c2); a != b || c2.from[s.name] != fromFile {
			t.Errorf("%s: printed %q, loaded back %q from %s", s.name, a, b, c2.from[s.name])
		}
	}
}

// TestPrintConfigShowsEffectiveValues (issue 12): where a zero stands for
// a value (ding-sender-daily 0 is 200 a day), --print-config prints the
// value, and the printed file loads back to the zero, so dingd runs with
// exactly the configuration it was printed from: the engine and the
// Twilio client still apply their own defaults. So does a flag giving the
// value itself, or the zero.
func TestPrintConfigShowsEffectiveValues(t *testing.T) {
	wantLines := []string{
		`twilio-api-url = "https://api.twilio.com"  # default`,
		`ding-sender-daily = 200  # default`,
		`ding-recipient-interval = "5m"  # default`,
		`sms-per-day = 10000  # default`,
		`calls-per-day = 2000  # default`,
		`burn-after = "30s"  # default`,
		`secret-unread-ttl = "24h"  # default`,
		`backup-dir = ""  # default, which means DATA/backups`,
		`preauth-per-source = 256  # default`,
	}
	for _, tc := range []struct {
		name string
		args []string
		from source
	}{
		{"defaults", nil, fromDefault},
		{"the values as flags", []string{"--twilio-api-url", "https://api.twilio.com", "--ding-sender-daily", "200", "--ding-recipient-interval", "5m", "--sms-per-day", "10000", "--calls-per-day", "2000", "--burn-after", "30s", "--secret-unread-ttl", "24h0m0s"}, fromFlag},
		{"zeros as flags", []string{"--twilio-api-url", "", "--ding-sender-daily", "0", "--ding-recipient-interval", "0s", "--sms-per-day", "0", "--calls-per-day", "0", "--burn-after", "0", "--secret-unread-ttl", "0s"}, fromFlag},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := load(tc.args, fakeEnv(nil))
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := printConfig(&out, c); err != nil {
				t.Fatal(err)
			}
			for _, want := range wantLines {
				if tc.from == fromFlag && !strings.Contains(want, "preauth") && !strings.Contains(want, "backup-dir") {
					want = strings.Replace(want, "# default", "# flag", 1)
				}
				if !slices.Contains(normalized(out.String()), want) {
					t.Errorf("no %q in\n%s", want, out.String())
				}
			}
			if regexp.MustCompile(`(?m)^(ding-sender-daily|sms-per-day|calls-per-day) = 0 |^(ding-recipient-interval|burn-after|secret-unread-ttl) = "0s"|^twilio-api-url = ""`).MatchString(out.String()) {
				t.Errorf("a zero that stands for a value is printed:\n%s", out.String())
			}
			c2, err := load([]string{"--config", tempFile(t, "printed.toml", out.String())}, fakeEnv(nil))
			if err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			for i := range settings {
				s := &settings[i]
				if a, b := s.format(c), s.format(c2); a != b {
					t.Errorf("%s: %q, loaded back from the printed file %q", s.name, a, b)
				}
			}
			if c2.Quotas != (engine.Quotas{}) || c2.Twilio.APIURL != "" || c2.BurnAfter != 0 || c2.SecretUnreadTTL != 0 {
				t.Errorf("loaded back, the defaults are not left to the engine and the Twilio client: %+v %q %v %v",
					c2.Quotas, c2.Twilio.APIURL, c2.BurnAfter, c2.SecretUnreadTTL)
			}
		})
	}
}

// normalized is printConfig's output with the padding before each comment
// cut to two spaces.
func normalized(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if v, c, ok := strings.Cut(l, "  #"); ok {
			l = strings.TrimRight(v, " ") + "  #" + c
		}
		lines = append(lines, l)
	}
	return lines
}

// TestHelpShowsEffectiveDefaults: --help shows the value a zero default
// stands for, never "(default 0)".
func TestHelpShowsEffectiveDefaults(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"--help"}, fakeEnv(nil), &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out.String(), "\n")
	for i := range settings {
		s := &settings[i]
		if s.effective == "" {
			continue
		}
		i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "  --"+s.name+" ") })
		if i < 0 || !strings.HasSuffix(lines[i], "(default "+s.effective+")") {
			t.Errorf("--%s: want (default %s) in\n%s", s.name, s.effective, out.String())
		}
	}
	if strings.Contains(out.String(), "(default 0)") {
		t.Errorf("--help shows a default of 0:\n%s", out.String())
	}
}

// TestExampleConfig keeps deploy/systemd/dingd.toml.example in step with
// the table: every key once, with its environment variable named, and the
// file loads both as shipped and with every key uncommented.
func TestExampleConfig(t *testing.T) {
	path := filepath.Join("..", "..", "deploy", "systemd", "dingd.toml.example")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	keyLine := regexp.MustCompile(`^(?:# )?([a-z][a-z-]*) = `)
	count := map[string]int{}
	var uncommented []string
	for _, line := range strings.Split(string(b), "\n") {
		if m := keyLine.FindStringSubmatch(line); m != nil {
			count[m[1]]++
			line = strings.TrimPrefix(line, "# ")
		}
		uncommented = append(uncommented, line)
	}
	for i := range settings {
		s := &settings[i]
		if count[s.name] != 1 {
			t.Errorf("%s appears %d times in %s", s.name, count[s.name], path)
		}
		if !strings.Contains(string(b), "("+s.env+")") {
			t.Errorf("%s does not name %s", path, s.env)
		}
		delete(count, s.name)
	}
	for k := range count {
		t.Errorf("%s has %q, which is no setting", path, k)
	}
	if _, err := load([]string{"--config", path}, fakeEnv(nil)); err != nil {
		t.Errorf("as shipped: %v", err)
	}
	if _, err := load([]string{"--config", tempFile(t, "all.toml", strings.Join(uncommented, "\n"))}, fakeEnv(nil)); err != nil {
		t.Errorf("uncommented: %v", err)
	}
}

// runDingd runs the dingd binary to completion with exactly env (nil:
// none).
func runDingd(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(dingdBinary(t), args...)
	cmd.Env = append([]string{}, env...) // not nil, which would inherit ours
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// TestBinaryConfigErrors: a bad config file stops the real binary with
// exit status 1 and one line on stderr naming the file, line and key.
func TestBinaryConfigErrors(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	for _, tc := range []struct{ name, body, want string }{
		{"unknown key", "data = \"/tmp/x\"\nmax_body = 5\n", `^dingd: .*/dingd.toml:2:1: unknown key "max_body"\n$`},
		{"bad type", "\nmax-body = \"64k\"\n", `^dingd: .*/dingd.toml:2:12: max-body: want an integer, not a TOML string\n$`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tempFile(t, "dingd.toml", tc.body)
			stdout, stderr, code := runDingd(t, nil, "--config", cfg, "--data", data, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0")
			if code != 1 || stdout != "" || !regexp.MustCompile(tc.want).MatchString(stderr) {
				t.Fatalf("exit %d, stdout %q, stderr %q; want 1 and %s", code, stdout, stderr, tc.want)
			}
			if _, err := os.Stat(data); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("dingd touched its data dir: %v", err)
			}
		})
	}
}

// valueLines strips --print-config's comments, leaving key = value lines.
func valueLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, v, _ := strings.Cut(l, " = ")
		v, _, _ = strings.Cut(v, "  #") // values hold no "  #" here
		lines = append(lines, k+" = "+strings.TrimSpace(v))
	}
	return lines
}

// TestBinaryPrintConfig: the real binary prints each value's source,
// redacts the token, starts nothing, and its output loads back to the same
// configuration.
func TestBinaryPrintConfig(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	const tok = "0123456789abcdef"
	cfg := tempFile(t, "dingd.toml", fmt.Sprintf("data = %q\nlisten = \"127.0.0.1:7001\"\nhttp = \"127.0.0.1:7002\"\nmax-body = 1000\n", data))
	env := []string{"DING_HTTP=127.0.0.1:7003", "TWILIO_AUTH_TOKEN=" + tok, "DING_MAX_BODY=2000"}
	stdout, stderr, code := runDingd(t, env, "--config", cfg, "--max-body", "3000", "--print-config")
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{
		fmt.Sprintf("data = %q  # file", data),     // file over default
		`listen = "127.0.0.1:7001"  # file`,        // file over default
		`http = "127.0.0.1:7003"  # env DING_HTTP`, // env over file
		`max-body = 3000  # flag`,                  // flag over env over file
		`log-level = "info"  # default`,
		`twilio-auth-token = "<redacted>"  # env TWILIO_AUTH_TOKEN`,
		`ding-sender-daily = 200  # default`, // the value, not the 0 that means it
		`twilio-api-url = "https://api.twilio.com"  # default`,
		`burn-after = "30s"  # default`,
	} {
		k, rest, _ := strings.Cut(want, " = ")
		v, src, _ := strings.Cut(rest, "  # ")
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(k+" = "+v) + ` +# ` + regexp.QuoteMeta(src) + `$`).MatchString(stdout) {
			t.Errorf("no %q in\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, tok) {
		t.Fatalf("the token is in the output:\n%s", stdout)
	}
	if _, err := os.Stat(data); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("--print-config touched the data dir: %v", err)
	}

	// Loaded back with nothing else, the printed file (token restored) is
	// the same configuration, all from the file.
	printed := tempFile(t, "printed.toml", strings.Replace(stdout, redacted, tok, 1))
	again, stderr, code := runDingd(t, nil, "--config", printed, "--print-config")
	if code != 0 {
		t.Fatalf("loading the printed config: exit %d: %s", code, stderr)
	}
	if a, b := valueLines(stdout), valueLines(again); !slices.Equal(a, b) {
		t.Fatalf("round trip changed the configuration:\n%s\nthen\n%s", stdout, again)
	}
	for _, l := range strings.Split(again, "\n") {
		if l != "" && !strings.HasPrefix(l, "#") && !strings.HasSuffix(l, "# file") && !strings.Contains(l, "# file, which means ") {
			t.Errorf("loaded back, %q is not from the file", l)
		}
	}

	// Left redacted, it refuses to run unless the environment has the token.
	redactedFile := tempFile(t, "redacted.toml", stdout)
	if _, stderr, code := runDingd(t, nil, "--config", redactedFile, "--print-config"); code != 1 || !strings.Contains(stderr, "placeholder") || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("redacted token: exit %d, stderr %q", code, stderr)
	}
	if _, stderr, code := runDingd(t, []string{"TWILIO_AUTH_TOKEN=" + tok}, "--config", redactedFile, "--print-config"); code != 0 {
		t.Fatalf("redacted token, real one in the env: exit %d, stderr %q", code, stderr)
	}
}

// FuzzTOMLString: whatever a flag or the environment holds, --print-config
// writes it as a TOML string that decodes back to it.
func FuzzTOMLString(f *testing.F) {
	for _, s := range []string{"", "plain", `"quoted"`, `back\slash`, "tab\tnew\nline\r", "\x00\x01\x7f", "é 中 🙂", `\u0041`, "'''", `"""`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			t.Skip("TOML files are UTF-8; so are flags and environment variables here")
		}
		var got struct {
			V string `toml:"v"`
		}
		if err := toml.Unmarshal([]byte("v = "+tomlString(s)+"\n"), &got); err != nil {
			t.Fatalf("%q as %s: %v", s, tomlString(s), err)
		}
		if got.V != s {
			t.Fatalf("%q came back as %q", s, got.V)
		}
	})
}

// TestBinaryStartFailure: a server that cannot start (its HTTP port is
// taken, found after the store is open) exits 1 with one line; node.Start
// used to panic there.
func TestBinaryStartFailure(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	data := t.TempDir()
	_, stderr, code := runDingd(t, nil, "--data", data, "--listen", "127.0.0.1:0", "--http", taken.Addr().String(), "--log-level", "error")
	if want := fmt.Sprintf("dingd: the http port %s is in use (another dingd? --http chooses another)\n", taken.Addr()); code != 1 || stderr != want {
		t.Fatalf("exit %d, stderr %q; want 1 and %q", code, stderr, want)
	}
	// The taken port was found before anything was created in the data dir.
	if es, err := os.ReadDir(data); err != nil || len(es) != 0 {
		t.Fatalf("the data dir holds %v (%v) after a start that failed on a taken port", es, err)
	}
	// The same for the WebSocket listener.
	_, stderr, code = runDingd(t, nil, "--data", data, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--ws", taken.Addr().String(), "--log-level", "error")
	if want := fmt.Sprintf("dingd: the websocket port %s is in use (another dingd? --ws chooses another)\n", taken.Addr()); code != 1 || stderr != want {
		t.Fatalf("--ws on a taken port: exit %d, stderr %q; want 1 and %q", code, stderr, want)
	}
	if es, err := os.ReadDir(data); err != nil || len(es) != 0 {
		t.Fatalf("the data dir holds %v (%v) after a start that failed on a taken --ws port", es, err)
	}

	// A second dingd on a data dir another one holds says so.
	first := startDingd(t, data)
	_, stderr, code = runDingd(t, nil, "--data", first.data, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-level", "error")
	if want := fmt.Sprintf("dingd: the data dir %s is in use by another dingd (pid %d): stop it, or --data chooses another\n", data, first.cmd.Process.Pid); code != 1 || stderr != want {
		t.Fatalf("second dingd on one data dir: exit %d, stderr %q; want 1 and %q", code, stderr, want)
	}
}

// TestBinaryUsage (issue 12): help is on stdout with exit status 0, for
// dingd, dingd help, dingd check; a mistake on the command line is one
// line on stderr with exit status 2.
func TestBinaryUsage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string // a regexp; empty: no output
		stderr string // exactly
	}{
		{"--help", []string{"--help"}, 0, `(?s)^Usage:\n  dingd \[flags\] .*\n  dingd check \[--data DIR \| --store DIR\] .*--ding-sender-daily int .*\(default 200\)`, ""},
		{"-h", []string{"-h"}, 0, `^Usage:\n  dingd \[flags\]`, ""},
		{"help", []string{"help"}, 0, `(?s)^Usage:\n  dingd \[flags\] .*  dingd check .*--listen string`, ""},
		{"help check", []string{"help", "check"}, 0, `(?s)^Usage: dingd check \[--data DIR \| --store DIR\]\n.*\n  --data DIR .*\n  --store DIR .*Example:`, ""},
		{"check --help", []string{"check", "--help"}, 0, `(?s)^Usage: dingd check \[--data DIR \| --store DIR\]\n.*\n  --data DIR `, ""},
		{"mistyped flag", []string{"--lsiten", ":1"}, 2, "", "dingd: unknown flag --lsiten; see dingd --help\n"},
		{"argument", []string{"serve"}, 2, "", "dingd: unexpected argument \"serve\" (settings are flags: --name value); see dingd --help\n"},
		{"bad flag value", []string{"--max-body", "64k"}, 2, "", "dingd: invalid value \"64k\" for flag --max-body: want an integer; see dingd --help\n"},
		{"flag out of range", []string{"--burn-after", "1s"}, 2, "", "dingd: burn-after 1s (from flag): want 0 (the default, 30s) or at least 5s\n"},
		{"help on nothing", []string{"help", "serve"}, 2, "", "dingd: no help on \"serve\": dingd help [check]\n"},
		{"check: mistyped flag", []string{"check", "--x"}, 2, "", "dingd: unknown flag --x; see dingd check --help\n"},
		{"check: argument", []string{"check", "somewhere"}, 2, "", "dingd: unexpected argument \"somewhere\"; see dingd check --help\n"},
		{"check: nothing there", []string{"check", "--data", "/nonexistent"}, 1, "", "dingd: check: /nonexistent/store holds no store\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runDingd(t, nil, tc.args...)
			if code != tc.code || stderr != tc.stderr {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr, tc.code, tc.stderr)
			}
			if tc.stdout == "" && stdout != "" || tc.stdout != "" && !regexp.MustCompile(tc.stdout).MatchString(stdout) {
				t.Fatalf("stdout does not match %s:\n%s", tc.stdout, stdout)
			}
			if strings.Contains(stdout, "Usage of") || regexp.MustCompile(`(?m)^\s+-[a-z]`).MatchString(stdout) {
				t.Fatalf("Go's default usage, with single-dash flags:\n%s", stdout)
			}
		})
	}
}

// The cluster examples in deploy/cluster load as they are, the secret
// from the environment.
func TestClusterExampleConfigs(t *testing.T) {
	for _, f := range []string{"a.toml", "b.toml", "c.toml"} {
		c, err := load([]string{"--config", "../../deploy/cluster/" + f}, fakeEnv(map[string]string{"DING_CLUSTER_SECRET": "s"}))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if c.Cluster == "" || c.NodeID == "" || c.Advertise == "" || c.ClusterSecret != "s" {
			t.Fatalf("%s loads as %+v", f, c)
		}
	}
	if _, err := load([]string{"--config", "../../deploy/cluster/a.toml"}, fakeEnv(nil)); err == nil || !strings.Contains(err.Error(), "cluster-secret") {
		t.Fatalf("a cluster member without its secret: %v, want an error naming cluster-secret", err)
	}
}

// dingd --version prints the build and starts nothing.
func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"--version"}, fakeEnv(nil), &out); err != nil || !strings.HasPrefix(out.String(), "dingd ") || !strings.Contains(out.String(), "revision") {
		t.Fatalf("--version: %q %v", out.String(), err)
	}
}

// Cluster mode's Redis settings: --print-config shows the --cluster URL
// with its password replaced and --redis-password redacted, and a URL
// dingd cannot use is refused at start with what is wrong, never its
// password.
func TestRedisSettings(t *testing.T) {
	env := fakeEnv(map[string]string{"DING_CLUSTER_SECRET": "s", "DING_REDIS_PASSWORD": "env-s3cret"})
	c, err := load([]string{"--cluster", "rediss://ding:url-s3cret@10.0.0.1:6380,10.0.0.2:6380?master_name=ding&sentinel_password=sent-s3cret",
		"--node-id", "a", "--advertise", "http://10.0.0.3:7080", "--redis-ca", "/etc/ding/redis-ca.pem"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if rc := c.redis(); rc.Password != "env-s3cret" || rc.CA != "/etc/ding/redis-ca.pem" {
		t.Fatalf("the Redis settings reach cluster.RedisConfig as %+v", rc)
	}
	var out bytes.Buffer
	if err := printConfig(&out, c); err != nil {
		t.Fatal(err)
	}
	printed := out.String()
	for _, secret := range []string{"url-s3cret", "env-s3cret", "sent-s3cret"} {
		if strings.Contains(printed, secret) {
			t.Errorf("--print-config shows %q:\n%s", secret, printed)
		}
	}
	for _, want := range []string{`cluster = "rediss://ding:xxxxx@10.0.0.1:6380,10.0.0.2:6380?master_name=ding&sentinel_password=xxxxx"`, `redis-password = "<redacted>"`, `redis-ca = "/etc/ding/redis-ca.pem"`} {
		if !strings.Contains(printed, want) {
			t.Errorf("--print-config lacks %s:\n%s", want, printed)
		}
	}
	for _, tc := range []struct{ url, want string }{
		{"redis://u:url-s3cret@10.0.0.1", `address "10.0.0.1": want HOST:PORT`},
		{"redis://u:url-s3cret@10.0.0.1:6379?master=ding", "an unknown parameter (known: master_name"},
		{"redis://u:url/s3cret@10.0.0.1:6379", "percent-encode"},
		{"10.0.0.1:6379", "want redis[s]://"},
	} {
		_, err := load([]string{"--cluster", tc.url, "--node-id", "a", "--advertise", "http://10.0.0.3:7080"}, env)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("--cluster %s: %v; want an error saying %q, without the password", tc.url, err, tc.want)
		}
	}
	if _, err := load([]string{"--cluster", "redis://10.0.0.1:6379", "--node-id", "a", "--advertise", "http://10.0.0.3:7080", "--redis-cert", "/c.pem", "--redis-key", "/k.pem"}, env); err == nil || !strings.Contains(err.Error(), "not rediss://") {
		t.Errorf("a client certificate for redis://: %v, want it refused", err)
	}
	// A config file others may read is warned of when its URL holds a
	// password, not otherwise.
	for url, warned := range map[string]bool{"redis://dingd:url-s3cret@10.0.0.1:6379": true, "redis://dingd@10.0.0.1:6379": false} {
		file := filepath.Join(t.TempDir(), "ding.toml")
		body := fmt.Sprintf("cluster = %q\nnode-id = \"a\"\nadvertise = \"http://10.0.0.3:7080\"\n", url)
		if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := load([]string{"--config", file}, env)
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Contains(strings.Join(c.warnings, "\n"), "holds cluster and others may read it")
		if got != warned || strings.Contains(strings.Join(c.warnings, "\n"), "s3cret") {
			t.Errorf("a world-readable file with cluster = %s: warnings %q, want one: %v", cluster.RedactURL(url), c.warnings, warned)
		}
	}
}
