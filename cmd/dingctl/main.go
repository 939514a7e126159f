// Command dingctl is Ding's admin CLI. It talks to dingd's admin HTTP API
// (and, for listen, to the client socket as a device).
//
//	dingctl --data ./ding-data user add ana --name "Ana" --phone +14155550100
//	dingctl --data ./ding-data send --from ana --to bo "lunch?"
//	dingctl --data ./ding-data listen --user bo --device laptop --read --messages --count 1
//	dingctl --data ./ding-data receipts 01J...
//	dingctl --data ./ding-data ding --from ana --to bo,+14155550123 --policy "inapp,sms@5m,voice@15m" "server down"
//	dingctl --data ./ding-data ding status 01J...
//	dingctl --data ./ding-data directory import hr.csv --dry-run
//	dingctl --data ./ding-data user remove bo
//	dingctl --data ./ding-data secret create --from ana --to bo --level 2
//	dingctl --data ./ding-data send --chat 01J... --from ana "for your eyes only"
//	dingctl --data ./ding-data admin add hr-sync --role directory --expires 90d
//
// The admin token comes from --token, else DING_TOKEN, else DIR/admin.token
// for --data DIR (default ./ding-data): the first owner's, which adds the
// other admins (admin add, each with a role and a token of its own). --server (DING_SERVER, default
// http://127.0.0.1:7080) is the admin API; --socket (DING_SOCKET, default
// 127.0.0.1:7070) the client socket. Global flags may also follow the
// subcommand. Errors: one line on stderr and a non-zero exit.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/internal/buildinfo"
)

func main() {
	err := run(os.Args[1:], os.Stdout)
	var ee exitError
	switch {
	case errors.As(err, &ee):
		fmt.Fprintln(os.Stderr, "dingctl:", ee.msg)
		os.Exit(ee.code)
	case err != nil:
		fmt.Fprintln(os.Stderr, "dingctl:", err)
		os.Exit(1)
	}
}

type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

// globals are accepted before and after the subcommand.
type globals struct {
	token, data, server, socket string
	// ca: a PEM file of the CA to verify the server with (HTTPS and the
	// TLS socket); socketTLS: the socket speaks TLS; insecure: allow the
	// admin token over plain HTTP to a host that is not loopback.
	ca                  string
	socketTLS, insecure bool
	// cert, key: a client certificate (mTLS) presented on HTTPS and the
	// TLS socket; pins: SPKI SHA-256 pins the server's certificate must
	// match (comma-separated).
	cert, key, pins string
	// out is where help goes (stdout: asking for help is not an error).
	out io.Writer
	// envToken is DING_TOKEN; tokenSet and dataSet: --token, --data given
	// on the command line (a flag beats the environment).
	envToken          string
	tokenSet, dataSet bool
	// tokenFrom says where the admin token came from, for errors.
	tokenFrom string
	// status is the last answer's HTTP status (201 created, 200 updated).
	status int
	// retryFor is how long a request answered UNAVAILABLE with "retry":
	// true (a cluster's partition changing owner, a store refusing writes
	// for a moment) is sent again, when sending it again is safe: a read,
	// or a send, which carries a client message id (postSend). Zero: never.
	retryFor time.Duration
	// errOut gets the notes on retries (stderr).
	errOut io.Writer
}

// setFlag is a string flag that also records it was given.
type setFlag struct {
	v   *string
	set *bool
}

func (f setFlag) String() string {
	if f.v == nil {
		return ""
	}
	return *f.v
}
func (f setFlag) Set(s string) error { *f.v, *f.set = s, true; return nil }

// tlsConfig verifies the server with --ca, or the system's roots, and
// with --pin-sha256 its key too; it presents --cert when given.
func (g *globals) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if g.ca != "" {
		b, err := os.ReadFile(g.ca)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--ca %s holds no PEM certificate", g.ca)
		}
		cfg.RootCAs = pool
	}
	if (g.cert == "") != (g.key == "") {
		return nil, exitError{2, "--cert and --key go together"}
	}
	if g.cert != "" {
		c, err := tls.LoadX509KeyPair(g.cert, g.key)
		if err != nil {
			return nil, fmt.Errorf("--cert %s --key %s: %w", g.cert, g.key, err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	if g.pins != "" {
		verify, err := client.VerifyPins(strings.Split(g.pins, ","))
		if err != nil {
			return nil, exitError{2, "--pin-sha256: " + strings.TrimPrefix(err.Error(), "client: ")}
		}
		cfg.VerifyConnection = verify
	}
	return cfg, nil
}

// checkServer refuses to send the admin token in clear to a host that is
// not this machine, unless --insecure.
func (g *globals) checkServer() error {
	u, err := url.Parse(g.server)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		if !strings.Contains(g.server, "://") {
			return fmt.Errorf("--server %q: want a URL: http://%s (or https:// when dingd has --tls-cert)", g.server, g.server)
		}
		return fmt.Errorf("--server %q: want a URL such as http://127.0.0.1:7080 or https://ding.example.com:7080", g.server)
	}
	if u.Scheme == "https" || g.insecure {
		return nil
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback()) || host == "localhost" {
		return nil
	}
	return fmt.Errorf("refusing to send the admin token in clear to %s: use https:// (dingd --tls-cert), or --insecure", u.Host)
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.Var(setFlag{&g.token, &g.tokenSet}, "token", "admin token (env DING_TOKEN)")
	fs.Var(setFlag{&g.data, &g.dataSet}, "data", "data dir whose admin.token to use (beats DING_TOKEN)")
	fs.StringVar(&g.server, "server", g.server, "admin API URL (env DING_SERVER)")
	fs.StringVar(&g.socket, "socket", g.socket, "client socket address; in a cluster, several: HOST:PORT,HOST:PORT (env DING_SOCKET)")
	fs.StringVar(&g.ca, "ca", g.ca, "PEM file of the CA that signed the server's certificate (HTTPS, --socket-tls); default: the system's roots (env DING_CA)")
	fs.BoolVar(&g.socketTLS, "socket-tls", g.socketTLS, "the socket address speaks TLS (dingd --tls-listen)")
	fs.BoolVar(&g.insecure, "insecure", g.insecure, "allow sending the admin token over plain http:// to a host that is not loopback")
	fs.StringVar(&g.cert, "cert", g.cert, "PEM client certificate (mTLS, dingd --tls-client-ca) for HTTPS and --socket-tls; naming an admin (URI SAN ding:admin/NAME), it replaces the admin token (env DING_CERT)")
	fs.StringVar(&g.key, "key", g.key, "the client certificate's PEM private key (env DING_KEY)")
	fs.DurationVar(&g.retryFor, "retry-for", g.retryFor, "how long to send a request again while dingd answers UNAVAILABLE with retry (a cluster failover): reads, and sends with a client message id (send, ding and announce make one when --client-id is not given); 0: never (env DING_RETRY_FOR)")
	fs.StringVar(&g.pins, "pin-sha256", g.pins, "accept the server only if its certificate's key has this pin (base64 SHA-256 of the SubjectPublicKeyInfo; several: comma-separated), on top of --ca (env DING_PIN_SHA256)")
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run(args []string, out io.Writer) error {
	err := dispatch(args, out)
	if errors.Is(err, errHelpShown) {
		return nil
	}
	return err
}

func dispatch(args []string, out io.Writer) error {
	if len(args) == 1 && (args[0] == "--version" || args[0] == "-version" || args[0] == "version") {
		_, err := fmt.Fprintln(out, buildinfo.String("dingctl"))
		return err
	}
	g := &globals{envToken: os.Getenv("DING_TOKEN"), server: envOr("DING_SERVER", "http://127.0.0.1:7080"), socket: envOr("DING_SOCKET", "127.0.0.1:7070"),
		ca: os.Getenv("DING_CA"), cert: os.Getenv("DING_CERT"), key: os.Getenv("DING_KEY"), pins: os.Getenv("DING_PIN_SHA256"), out: out,
		retryFor: defaultRetryFor, errOut: os.Stderr}
	if v := os.Getenv("DING_RETRY_FOR"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return exitError{2, fmt.Sprintf("DING_RETRY_FOR=%q: want a duration such as 15s, or 0", v)}
		}
		g.retryFor = d
	}
	fs := flag.NewFlagSet("dingctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	g.register(fs)
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(out, usageText())
		return errHelpShown
	} else if err != nil {
		return flagError(fs, err)
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(os.Stderr, usageText())
		return exitError{2, "no command (see dingctl --help)"}
	}
	cmd, rest := rest[0], rest[1:]
	if cmd == "help" {
		if len(rest) == 0 {
			fmt.Fprint(out, usageText())
			return errHelpShown
		}
		// dingctl help ding status: the command's own --help.
		return dispatch(append(append(args[:len(args)-len(rest)-1:len(args)-len(rest)-1], rest...), "--help"), out)
	}
	// A group without a command of its own (user, dept…) asked for help,
	// or given nothing: list its commands.
	if _, own := findCommand(cmd); !own && (len(rest) == 0 || isHelp(rest[0])) {
		if len(rest) > 0 && groupHelp(out, cmd) {
			return errHelpShown
		}
		if len(rest) == 0 && groupHelp(os.Stderr, cmd) {
			return exitError{2, fmt.Sprintf("%s: want %s (see dingctl %s --help)", cmd, subcommands(cmd), cmd)}
		}
	}
	switch cmd {
	case "user":
		if len(rest) == 0 {
			return exitError{2, "user: want add, get, list or remove"}
		}
		switch rest[0] {
		case "add":
			return userAdd(g, rest[1:], out)
		case "set":
			return userSet(g, rest[1:], out)
		case "get":
			return userGet(g, rest[1:], out)
		case "list":
			return userList(g, rest[1:], out)
		case "remove":
			return userRemove(g, rest[1:], out)
		}
		return exitError{2, "user: unknown subcommand " + rest[0]}
	case "token":
		return token(g, rest, out)
	case "send":
		return send(g, rest, out)
	case "secret":
		return secret(g, rest, out)
	case "listen":
		return listen(g, rest, out)
	case "receipts":
		return receipts(g, rest, out)
	case "backup":
		return backup(g, rest, out)
	case "retention":
		return retention(g, rest, out)
	case "ding":
		return ding(g, rest, out)
	case "announce":
		return announce(g, rest, out)
	case "stats":
		return stats(g, rest, out)
	case "policy":
		return policy(g, rest, out)
	case "dept":
		return dept(g, rest, out)
	case "group":
		return group(g, rest, out)
	case "directory":
		return directory(g, rest, out)
	case "audit":
		return audit(g, rest, out)
	case "cluster":
		return clusterCmd(g, rest, out)
	case "admin":
		return admin(g, rest, out)
	case "webhook":
		return webhookCmd(g, rest, out)
	}
	return exitError{2, "unknown command " + cmd + suggest(cmd) + " (see dingctl --help)"}
}

// parse parses a subcommand's flags, allowing flags after positional args.
func parse(fs *flag.FlagSet, g *globals, args []string) ([]string, error) {
	g.register(fs)
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
			commandHelp(g.out, fs)
			return nil, errHelpShown
		} else if err != nil {
			return nil, flagError(fs, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// adminToken is --token, else --data DIR's admin.token, else DING_TOKEN,
// else ./ding-data/admin.token: a flag beats the environment. With a
// client certificate (--cert) and none of the three given, it is none:
// the certificate names the admin.
func (g *globals) adminToken() (string, error) {
	switch {
	case g.tokenSet && g.token != "":
		g.tokenFrom = "--token"
		return g.token, nil
	case !g.dataSet && g.envToken != "":
		g.tokenFrom = "DING_TOKEN"
		return g.envToken, nil
	case !g.dataSet && g.cert != "":
		return "", nil
	}
	dir := g.data
	if dir == "" {
		dir = "ding-data"
	}
	path := filepath.Join(dir, "admin.token")
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("no admin token: pass --token, set DING_TOKEN, or --data DIR, the server's data dir (%v)", err)
	}
	g.tokenFrom = path
	return strings.TrimSpace(string(b)), nil
}

// call does one admin API request with a JSON body (in, unless nil) and
// decodes the JSON answer into out (unless nil).
func (g *globals) call(method, path string, in, out any) error {
	return g.callAs(method, path, in, out, safeMethod(method))
}

// postSend is call for a send (a message, a DING, an announcement): req
// carries a client message id, the one given or one made here, so that
// the send may be asked again (--retry-for) and is stored once.
func (g *globals) postSend(path string, req map[string]any, given string, out any) error {
	if given == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		given = "dingctl-" + hex.EncodeToString(b[:])
	}
	req["client_msg_id"] = given
	return g.callAs(http.MethodPost, path, req, out, true)
}

// callAs is call, asking again while the answer says to (requestAs) if
// retry.
func (g *globals) callAs(method, path string, in, out any, retry bool) error {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	raw, err := g.requestAs(method, path, "application/json", body, 30*time.Second, retry)
	if err != nil || out == nil {
		return err
	}
	return json.Unmarshal(raw, out)
}

// safeMethod reports whether a request of method may be asked again as
// it is.
func safeMethod(method string) bool { return method == http.MethodGet || method == http.MethodHead }

// defaultRetryFor is --retry-for's default: longer than a cluster's
// failover (its goal is 5 s; the default lease is 3 s).
const defaultRetryFor = 15 * time.Second

// request does one admin API request and returns the answer's body; an
// error answer comes back as one line, "CODE: detail". A GET is asked
// again as requestAs says.
func (g *globals) request(method, path, contentType string, body io.Reader, timeout time.Duration) ([]byte, error) {
	return g.requestAs(method, path, contentType, body, timeout, safeMethod(method))
}

// requestAs is request; with retry (asking again is safe: a read, or a
// send carrying a client message id), an answer UNAVAILABLE with
// "retry": true is asked again, after its Retry-After (1 s without), for
// up to --retry-for, with a note on each to errOut.
func (g *globals) requestAs(method, path, contentType string, body io.Reader, timeout time.Duration, retry bool) ([]byte, error) {
	if !retry || g.retryFor <= 0 {
		return g.do(method, path, contentType, body, timeout)
	}
	var held []byte // sent again on each try
	if body != nil {
		b, err := io.ReadAll(body)
		if err != nil {
			return nil, err
		}
		held = b
	}
	deadline := time.Now().Add(g.retryFor)
	for {
		var b io.Reader
		if held != nil {
			b = bytes.NewReader(held)
		}
		raw, err := g.do(method, path, contentType, b, timeout)
		u, ok := errors.AsType[*unavailableError](err)
		if !ok || time.Now().Add(u.wait).After(deadline) {
			return raw, err
		}
		fmt.Fprintf(g.errOut, "dingctl: %v; asking again in %s\n", err, u.wait)
		time.Sleep(u.wait)
	}
}

// unavailableError is an answer UNAVAILABLE with "retry": true, which asks
// to wait before sending the request again.
type unavailableError struct {
	msg  string
	wait time.Duration
}

func (e *unavailableError) Error() string { return e.msg }

// do is one try of request.
func (g *globals) do(method, path, contentType string, body io.Reader, timeout time.Duration) ([]byte, error) {
	if err := g.checkServer(); err != nil {
		return nil, err
	}
	tok, err := g.adminToken()
	if err != nil {
		return nil, err
	}
	if g.pins != "" && !strings.HasPrefix(g.server, "https://") {
		return nil, exitError{2, "--pin-sha256 pins the certificate of an https:// server; --server is " + g.server}
	}
	tc, err := g.tlsConfig()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequest(method, strings.TrimRight(g.server, "/")+path, body)
	if err != nil {
		return nil, err
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := (&http.Client{Timeout: timeout, Transport: &http.Transport{TLSClientConfig: tc}}).Do(req)
	if err != nil {
		hint := ""
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			hint = ": nothing listens there; is dingd running? (--server or DING_SERVER names its HTTP port)"
		case strings.Contains(err.Error(), "malformed HTTP"):
			hint = ": that is not dingd's HTTP port (the socket port? --server names the HTTP port, 7080 by default)"
		}
		return nil, fmt.Errorf("cannot reach %s: %v%s", g.server, err, hint)
	}
	defer resp.Body.Close()
	g.status = resp.StatusCode
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct {
				Code, Detail string
				Retry        bool
			} `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error.Code != "" {
			detail := strings.ReplaceAll(e.Error.Detail, "\n", " ")
			switch {
			case resp.StatusCode == http.StatusUnauthorized && tok == "":
				detail += " (the client certificate " + g.cert + ")"
			case resp.StatusCode == http.StatusUnauthorized:
				detail += " (the admin token from " + g.tokenFrom + ")"
			case resp.Header.Get("Retry-After") != "":
				detail += " (retry after " + resp.Header.Get("Retry-After") + "s)"
			}
			msg := e.Error.Code + ": " + detail
			if resp.StatusCode == http.StatusServiceUnavailable && e.Error.Code == "UNAVAILABLE" && e.Error.Retry {
				wait := time.Second
				if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
					wait = time.Duration(s) * time.Second
				}
				return nil, &unavailableError{msg, wait}
			}
			return nil, errors.New(msg)
		}
		return nil, fmt.Errorf("server answered %s", resp.Status)
	}
	return raw, nil
}

func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func userAdd(g *globals, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("user add", flag.ContinueOnError)
	name := fs.String("name", "", "display name")
	phone := fs.String("phone", "", "phone in E.164, like +14155550100")
	email := fs.String("email", "", "e-mail address for DING e-mail steps, like ana@example.com")
	quiet := fs.String("quiet-hours", "", `daily window without non-critical DINGs, "22:00-07:00" (UTC) or "22:00-07:00 Europe/Berlin"`)
	department := fs.String("department", "", "department id")
	pos, err := parse(fs, g, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return exitError{2, "user add: want exactly one ID"}
	}
	if strings.TrimSpace(*name) == "" {
		return exitError{2, "user add: --name is required (the name people see)"}
	}
	var u map[string]any
	if err := g.call("POST", "/v1/users", map[string]string{"id": pos[0], "name": *name, "phone": *phone, "email": *email, "quiet_hours": *quiet, "department": *department}, &u); err != nil {
		return err
	}
	return printJSON(out, u)
}

// userSet: user set ID [--name N] [--phone P] [--email E] [--quiet-hours Q]
// [--department D]: PATCH with the flags given only ("" clears a field).
func userSet(g *globals, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("user set", flag.ContinueOnError)
	fs.String("name", "", "display name")
	fs.String("phone", "", `phone in E.164, like +14155550100 ("" clears it)`)
	fs.String("email", "", `e-mail address, like ana@example.com ("" clears it)`)
	fs.String("quiet-hours", "", `daily window without non-critical DINGs ("" clears it)`)
	fs.String("department", "", `department id ("" takes the user out of theirs)`)
	pos, err := parse(fs, g, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return exitError{2, "user set: want exactly one ID"}
	}
	patch := map[string]string{}
	fs.Visit(func(f *flag.Flag) {
		if k, ok := map[string]string{"name": "name", "phone": "phone", "email": "email", "quiet-hours": "quiet_hours", "department": "department"}[f.Name]; ok {
			patch[k] = f.Value.String()
		}
	})
	if len(patch) == 0 {
		return exitError{2, "user set: nothing to change (give --name, --phone, --email, --quiet-hours or --department)"}
	}
	var u map[string]any
	if err := g.call("PATCH", "/v1/users/"+url.PathEscape(pos[0]), patch, &u); err != nil {
		return err
	}
	return printJSON(out, u)
}

func userGet(g *globals, args []string, out io.Writer) error {
	pos, err := parse(flag.NewFlagSet("user get", flag.ContinueOnError), g, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return exitError{2, "user get: want exactly one ID"}
	}
	var u map[string]any
	if err := g.call("GET", "/v1/users/"+pos[0], nil, &u); err != nil {
		return err
	}
	return printJSON(out, u)
}

func mintToken(g *globals, user, device string, ttl time.Duration) (string, error) {
	var res struct{ Token string }
	err := g.call("POST", "/v1/tokens", map[string]any{"user": user, "device": device, "ttl_seconds": int64(ttl.Seconds())}, &res)
	return res.Token, err
}

func token(g *globals, args []string, out io.Writer) error {
	if len(args) > 0 && args[0] == "revoke" {
		return revokeTokens(g, args[1:], out)
	}
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	user := fs.String("user", "", "user id")
	device := fs.String("device", "", "device id")
	ttl := fs.Duration("ttl", 24*time.Hour, "lifetime")
	if _, err := parse(fs, g, args); err != nil {
		return err
	}
	if *user == "" || *device == "" {
		return exitError{2, "token: --user and --device are required"}
	}
	tok, err := mintToken(g, *user, *device, *ttl)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, tok)
	return err
}

// revokeTokens: token revoke --user ID [--device DEV].
func revokeTokens(g *globals, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("token revoke", flag.ContinueOnError)
	user := fs.String("user", "", "user id")
	device := fs.String("device", "", "only this device's tokens (default: every device's)")
	if _, err := parse(fs, g, args); err != nil {
		return err
	}
	if *user == "" {
		return exitError{2, "token revoke: --user is required"}
	}
	var res struct {
		Closed int `json:"connections_closed"`
	}
	if err := g.call("POST", "/v1/users/"+url.PathEscape(*user)+"/revoke-tokens", map[string]string{"device": *device}, &res); err != nil {
		return err
	}
	what := "every client token of " + *user
	if *device != "" {
		what = "the client tokens of " + *user + "'s device " + *device
	}
	_, err := fmt.Fprintf(out, "revoked %s issued until now (for good; new tokens work); %d connections closed\n", what, res.Closed)
	return err
}

func send(g *globals, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	from := fs.String("from", "", "sender user id")
	to := fs.String("to", "", "recipients, comma-separated")
	chat := fs.String("chat", "", "send in this secret chat (instead of --to)")
	fwd := fs.String("forward-of", "", "the message this one forwards")
	quote := fs.String("quote-of", "", "the message this one quotes")
	cid := fs.String("client-id", "", "client message id: a retry with the same id is stored once (default: one made for this command, so that --retry-for may send it again)")
	pos, err := parse(fs, g, args)
	if err != nil {
		return err
	}
	text := strings.Join(pos, " ")
	if (len(pos) == 1 && pos[0] == "-") || (len(pos) == 0 && !isTerminal(stdin)) {
		b, err := io.ReadAll(io.LimitReader(stdin, 16<<20))
		if err != nil {
			return fmt.Errorf("send: read the body from stdin: %w", err)
		}
		text = strings.TrimSuffix(string(b), "\n") // echo's, a file's last line end
	} else if len(pos) == 0 {
		text = ""
	}
	switch {
	case *from == "":
		return exitError{2, "send: --from is required (the sender's user id)"}
	case (*to == "") == (*chat == ""):
		return exitError{2, "send: give either --to or --chat: recipients, or a secret chat (not both)"}
	case len(pos) == 0 && text == "" && isTerminal(stdin):
		return exitError{2, "send: no text: give TEXT, or - to read it from stdin"}
	}
	req := map[string]any{"from": *from, "text": text}
	if *to != "" {
		req["to"] = split(*to)
	}
	for k, v := range map[string]string{"chat": *chat, "forward_of": *fwd, "quote_of": *quote} {
		if v != "" {
			req[k] = v
		}
	}
	var res struct{ ID string }
	err = g.postSend("/v1/messages", req, *cid, &res)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, res.ID)
	return err
}

func listen(g *globals, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("listen", flag.ContinueOnError)
	user := fs.String("user", "", "user id")
	device := fs.String("device", "", "device id")
	read := fs.Bool("read", false, "mark each message read")
	confirm := fs.Int("confirm", -1, "confirm each DING with this answer (0: no choice; N: the Nth choice)")
	count := fs.Int("count", 0, "exit after printing this many lines (entries; with --messages, messages) (0: no limit)")
	messagesOnly := fs.Bool("messages", false, "print messages only (receipts, DING events, burns and secret-chat events are acknowledged, not printed)")
	timeout := fs.Duration("timeout", 0, "exit after this long (0: no limit)")
	cursor := fs.Int64("cursor", -1, "resume after this seq (default: the server's stored cursor)")
	until := fs.String("until", "", "exit after printing the first line of this type: message, receipt, ding_event, burn or secret_event")
	if _, err := parse(fs, g, args); err != nil {
		return err
	}
	if *user == "" || *device == "" {
		return exitError{2, "listen: --user and --device are required"}
	}
	if strings.Contains(g.socket, "://") {
		return exitError{2, fmt.Sprintf("listen: --socket %q: want HOST:PORT, the client socket (7070 by default), not a URL", g.socket)}
	}
	switch *until {
	case "", "message":
	case "receipt", "ding_event", "burn", "secret_event":
		if *messagesOnly {
			return exitError{2, "listen: --until " + *until + " waits for a line --messages does not print"}
		}
	default:
		return exitError{2, "listen: --until wants message, receipt, ding_event, burn or secret_event"}
	}
	tok, err := mintToken(g, *user, *device, time.Hour)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	cfg := client.Config{Addr: g.socket, Token: tok, Device: *device}
	if g.socketTLS {
		if cfg.TLS, err = g.tlsConfig(); err != nil {
			return err
		}
	}
	if *cursor >= 0 {
		c := uint64(*cursor)
		cfg.Cursor = &c
	}
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	enc := json.NewEncoder(out)
	got := 0
	for {
		select {
		case <-ctx.Done():
			if *count > 0 && got < *count {
				return exitError{3, fmt.Sprintf("timed out after %d of %d lines", got, *count)}
			}
			if *until != "" {
				return exitError{3, "timed out before a " + *until + " line"}
			}
			return nil
		case e, ok := <-c.Entries():
			if !ok {
				return fmt.Errorf("connection ended: %v", c.Err())
			}
			// print writes one line for a non-message entry and acks it; it
			// reports whether --count is reached.
			print := func(o map[string]any) bool {
				if !*messagesOnly {
					enc.Encode(o)
					got++
				}
				c.Ack(e.Seq)
				return (*count > 0 && got >= *count) || (!*messagesOnly && o["type"] == *until)
			}
			if e.Receipt != nil {
				r := e.Receipt
				if print(map[string]any{"type": "receipt", "seq": e.Seq, "ids": r.IDs, "user": r.User,
					"state": stateName(r.State), "at": r.At.UTC()}) {
					return nil
				}
				continue
			}
			if d := e.Ding; d != nil {
				o := map[string]any{"type": "ding_event", "seq": e.Seq, "id": d.ID, "recipient": d.Recipient,
					"event": d.Event, "at": d.At.UTC()}
				for k, v := range map[string]string{"channel": d.Channel, "device": d.Device, "detail": d.Detail} {
					if v != "" {
						o[k] = v
					}
				}
				if print(o) {
					return nil
				}
				continue
			}
			if b := e.Burn; b != nil {
				// Its own kind, with the id only: delete the message.
				if print(map[string]any{"type": "burn", "seq": e.Seq, "id": b.ID}) {
					return nil
				}
				continue
			}
			if s := e.Secret; s != nil {
				o := map[string]any{"type": "secret_event", "seq": e.Seq, "chat": s.Chat, "event": s.Event,
					"level": s.Level, "burn_after_s": s.BurnAfter.Seconds(), "at": s.At.UTC()}
				for k, v := range map[string]string{"id": s.ID, "by": s.By, "you": s.You, "peer": s.Peer} {
					if v != "" {
						o[k] = v
					}
				}
				if print(o) {
					return nil
				}
				continue
			}
			m := e.Message
			if m == nil {
				c.Ack(e.Seq) // an entry kind this dingctl does not know
				continue
			}
			o := map[string]any{"type": "message", "seq": e.Seq, "id": m.ID, "from": m.From, "to": m.To,
				"kind": strings.ToLower(m.Kind.String()), "created": m.Created.UTC()}
			if m.Chat != "" {
				o["chat"], o["level"], o["burn_after_s"] = m.Chat, m.Level, m.BurnAfter.Seconds()
				o["no_copy"], o["no_forward"] = m.NoCopy, m.NoForward
				if m.Watermark != "" {
					o["watermark"] = m.Watermark
				}
			}
			for k, v := range map[string]string{"forward_of": m.ForwardOf, "quote_of": m.QuoteOf} {
				if v != "" {
					o[k] = v
				}
			}
			switch m.Kind {
			case pb.Kind_TEXT, pb.Kind_DING, pb.Kind_ANNOUNCEMENT:
				o["body"] = string(m.Body)
			default:
				o["body_base64"] = m.Body
			}
			if len(m.Choices) > 0 {
				o["choices"] = m.Choices
			}
			if m.Confirm {
				o["confirm"] = true
			}
			if err := enc.Encode(o); err != nil {
				return err
			}
			if *read {
				if err := c.Read(ctx, m.ID); err != nil {
					return fmt.Errorf("mark %s read: %v", m.ID, err)
				}
			}
			if *confirm >= 0 && (m.Kind == pb.Kind_DING || m.Confirm) {
				earlier, err := c.ConfirmCheck(ctx, m.ID, *confirm)
				if err != nil {
					return fmt.Errorf("confirm %s: %v", m.ID, err)
				}
				if earlier != nil {
					// On stderr: stdout keeps one JSON line per entry.
					fmt.Fprintf(os.Stderr, "dingctl: confirm %s: ignored, already confirmed %s; --confirm %d changed nothing\n",
						m.ID, describeConfirmed(earlier), *confirm)
				}
			}
			c.Ack(e.Seq)
			got++
			if (*count > 0 && got >= *count) || *until == "message" {
				return nil
			}
		}
	}
}

func stateName(s pb.State) string {
	switch s {
	case pb.State_SENT:
		return "sent"
	case pb.State_DELIVERED:
		return "delivered"
	case pb.State_READ_STATE:
		return "read"
	case pb.State_CONFIRMED:
		return "confirmed"
	}
	return "unknown"
}

func receipts(g *globals, args []string, out io.Writer) error {
	pos, err := parse(flag.NewFlagSet("receipts", flag.ContinueOnError), g, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return exitError{2, "receipts: want exactly one message ID"}
	}
	var res map[string]any
	if err := g.call("GET", "/v1/messages/"+pos[0]+"/receipts", nil, &res); err != nil {
		return err
	}
	return printJSON(out, res)
}

func backup(g *globals, args []string, out io.Writer) error {
	if len(args) > 0 && args[0] == "verify" {
		fs := flag.NewFlagSet("backup verify", flag.ContinueOnError)
		pos, err := parse(fs, g, args[1:])
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return exitError{2, "backup verify: want the backup's name (or its path under the backup dir)"}
		}
		var res map[string]any
		if err := g.call("POST", "/v1/backup/verify", map[string]string{"dir": pos[0]}, &res); err != nil {
			return err
		}
		return printJSON(out, res)
	}
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	dir := fs.String("out", "", "the backup's name under the server's backup dir (or an absolute path inside it), on the server's machine")
	if _, err := parse(fs, g, args); err != nil {
		return err
	}
	if *dir == "" {
		return exitError{2, "backup: --out is required"}
	}
	var res struct{ Dir string }
	if err := g.call("POST", "/v1/backup", map[string]string{"dir": *dir}, &res); err != nil {
		return err
	}
	_, err := fmt.Fprintln(out, res.Dir)
	return err
}

// retention: retention sweep, now.
func retention(g *globals, args []string, out io.Writer) error {
	if len(args) == 0 || args[0] != "sweep" {
		return exitError{2, "retention: want sweep"}
	}
	if _, err := parse(flag.NewFlagSet("retention sweep", flag.ContinueOnError), g, args[1:]); err != nil {
		return err
	}
	var res map[string]any
	if err := g.call("POST", "/v1/retention/sweep", nil, &res); err != nil {
		return err
	}
	return printJSON(out, res)
}

// clusterCmd: cluster status, handover and drain, on the member --server
// names (a member that does not serve answers status and drain itself
// and proxies the rest to the owner).
func clusterCmd(g *globals, args []string, out io.Writer) error {
	if len(args) == 0 || (args[0] != "status" && args[0] != "handover" && args[0] != "drain" && args[0] != "forget") {
		return exitError{2, "cluster: want status, handover, drain or forget"}
	}
	fs := flag.NewFlagSet("cluster "+args[0], flag.ContinueOnError)
	part := -1
	if args[0] == "handover" {
		fs.IntVar(&part, "partition", -1, "with --partitions: the partition to hand over (one this node owns)")
	}
	pos, err := parse(fs, g, args[1:])
	if err != nil {
		return err
	}
	switch args[0] {
	case "forget":
		if len(pos) != 1 {
			return exitError{2, "cluster forget: want the id of the member gone for good"}
		}
		return g.printCall(out, "POST", "/v1/cluster/forget?member="+url.QueryEscape(pos[0]), nil)
	case "handover":
		path := "/v1/cluster/handover"
		if part >= 0 {
			path += "?p=" + strconv.Itoa(part)
		}
		if err := g.call("POST", path, nil, nil); err != nil {
			return err
		}
		_, err := fmt.Fprintln(out, "handing over: the standby takes the partition; this member drains and becomes its standby")
		return err
	case "drain":
		if err := g.call("POST", "/v1/cluster/drain", nil, nil); err != nil {
			return err
		}
		_, err := fmt.Fprintln(out, "draining: this member gives up its role (an owner hands the partition to its standby, a standby lets a spare take its place) and takes none again until restarted; `cluster status` on it says drained, then stop it")
		return err
	}
	return g.printCall(out, "GET", "/v1/cluster", nil)
}

// stdin is where send reads a body from (tests replace it).
var stdin io.Reader = os.Stdin

// isTerminal reports whether r is a character device (a person typing),
// not a pipe or a file.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
