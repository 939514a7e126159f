package main

import (
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// adminRoles is what admin add --role takes, for help and usage errors;
// the server's table (channels/httpapi access.go, SECURITY.md) decides.
const adminRoles = "owner, admin, directory, operator, sender or dept-admin"

// adminNotes follows the list of admin commands in dingctl admin --help.
const adminNotes = `Every admin token belongs to a named admin with a role. The token dingd
writes at its first start (DATA/admin.token) is the admin "owner"'s.
Roles (SECURITY.md has every route's permission):
  owner       everything, managing admins included
  admin       everything but managing admins
  directory   users, departments, groups, directory import (an HR sync job)
  operator    read-only: receipts, DING ledgers, statistics, audit log, /metrics
  sender      send messages, DINGs and announcements; their receipts and ledgers
  dept-admin  (--dept D) DING, message, announce to and manage the users of
              department D and the departments under it only
A token is shown once, by admin add; use it with --token or DING_TOKEN.
admin revoke stops it at once (the next request gets 401).
`

// admin: admin add|list|revoke|whoami.
func admin(g *globals, args []string, out io.Writer) error {
	sub, args := args[0], args[1:] // dispatch answered an empty admin
	switch sub {
	case "add":
		return adminAdd(g, args, out)
	case "list":
		if err := noArgs(g, flag.NewFlagSet("admin list", flag.ContinueOnError), args); err != nil {
			return err
		}
		return g.printCall(out, "GET", "/v1/admins", nil)
	case "whoami":
		if err := noArgs(g, flag.NewFlagSet("admin whoami", flag.ContinueOnError), args); err != nil {
			return err
		}
		return g.printCall(out, "GET", "/v1/admins/me", nil)
	case "revoke":
		name, err := oneName(g, flag.NewFlagSet("admin revoke", flag.ContinueOnError), args)
		if err != nil {
			return err
		}
		var res struct {
			Role           string `json:"role"`
			AlreadyRevoked bool   `json:"already_revoked"`
		}
		if err := g.call("POST", "/v1/admins/"+url.PathEscape(name)+"/revoke", nil, &res); err != nil {
			return err
		}
		if res.AlreadyRevoked {
			_, err = fmt.Fprintf(out, "admin %s (role %s) was already revoked: nothing changed\n", name, res.Role)
			return err
		}
		_, err = fmt.Fprintf(out, "revoked admin %s (role %s): its token no longer works\n", name, res.Role)
		return err
	}
	return exitError{2, "admin: unknown subcommand " + sub + " (want " + subcommands("admin") + ")"}
}

// oneName parses a subcommand that takes exactly one NAME.
func oneName(g *globals, fs *flag.FlagSet, args []string) (string, error) {
	pos, err := parse(fs, g, args)
	if err != nil {
		return "", err
	}
	if len(pos) != 1 {
		return "", exitError{2, fs.Name() + ": want exactly one NAME"}
	}
	return pos[0], nil
}

// adminAdd: admin add NAME --role ROLE [--dept DEPT] [--expires 90d]:
// prints the new token, the only time it is shown, on stdout.
func adminAdd(g *globals, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("admin add", flag.ContinueOnError)
	role := fs.String("role", "", adminRoles)
	dept := fs.String("dept", "", "the department a dept-admin acts within (with the departments under it)")
	expires := fs.String("expires", "", "the token's lifetime: 90d, 12h, 30m...; empty: it does not expire")
	name, err := oneName(g, fs, args)
	if err != nil {
		return err
	}
	if *role == "" {
		return exitError{2, "admin add: --role is required: " + adminRoles + " (see dingctl admin --help)"}
	}
	ttl, err := parseLifetime(*expires)
	if err != nil {
		return exitError{2, "admin add: --expires " + strconv.Quote(*expires) + ": " + err.Error()}
	}
	var res struct {
		Token   string `json:"token"`
		Expires string `json:"expires"`
	}
	req := map[string]any{"name": name, "role": *role, "dept": *dept, "ttl_seconds": int64(ttl / time.Second)}
	if err := g.call("POST", "/v1/admins", req, &res); err != nil {
		return err
	}
	until := "it does not expire"
	if res.Expires != "" {
		until = "it expires " + res.Expires
	}
	// On stderr: stdout is the token alone, for a script to capture.
	fmt.Fprintf(os.Stderr, "dingctl: added admin %s (role %s; %s); its token, on stdout, is shown this once: keep it in a secret store and use it with --token or DING_TOKEN\n",
		name, *role, until)
	_, err = fmt.Fprintln(out, res.Token)
	return err
}

// parseLifetime reads a lifetime in days ("90d"), weeks ("2w") or as a
// Go duration ("12h", "1h30m"); "" is none.
func parseLifetime(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	unit := map[byte]time.Duration{'d': 24 * time.Hour, 'w': 7 * 24 * time.Hour}[s[len(s)-1]]
	var d time.Duration
	if unit != 0 {
		n, err := strconv.ParseUint(strings.TrimSpace(s[:len(s)-1]), 10, 32)
		if err != nil {
			return 0, fmt.Errorf("want a lifetime like 90d, 2w, 12h or 30m")
		}
		if n > 36500 {
			return 0, fmt.Errorf("at most 100 years (leave --expires out for a token that does not expire)")
		}
		d = time.Duration(n) * unit
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("want a lifetime like 90d, 2w, 12h or 30m")
		}
	}
	if d < time.Second {
		return 0, fmt.Errorf("a lifetime is at least 1s (leave --expires out for a token that does not expire)")
	}
	return d, nil
}
