package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The directory commands: user remove/list, dept, group, directory import
// and audit. Each prints the API's JSON answer.

// idPath is the API path of one resource.
func idPath(base, id string) string { return base + "/" + url.PathEscape(id) }

// printCall calls the API and prints the answer.
func (g *globals) printCall(out io.Writer, method, path string, in any) error {
	var res any
	if err := g.call(method, path, in, &res); err != nil {
		return err
	}
	return printJSON(out, res)
}

// oneArg parses a subcommand that takes exactly one ID and the given flags.
func oneArg(g *globals, fs *flag.FlagSet, args []string) (string, error) {
	pos, err := parse(fs, g, args)
	if err != nil {
		return "", err
	}
	if len(pos) != 1 {
		return "", exitError{2, fs.Name() + ": want exactly one ID"}
	}
	return pos[0], nil
}

// noArgs parses a subcommand that takes only flags.
func noArgs(g *globals, fs *flag.FlagSet, args []string) error {
	pos, err := parse(fs, g, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return exitError{2, fs.Name() + ": unexpected argument " + pos[0]}
	}
	return nil
}

func split(s string) []string {
	out := []string{}
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func userRemove(g *globals, args []string, out io.Writer) error {
	id, err := oneArg(g, flag.NewFlagSet("user remove", flag.ContinueOnError), args)
	if err != nil {
		return err
	}
	return g.printCall(out, "DELETE", idPath("/v1/users", id), nil)
}

func userList(g *globals, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("user list", flag.ContinueOnError)
	status := fs.String("status", "active", "active, removed or all")
	if err := noArgs(g, fs, args); err != nil {
		return err
	}
	return g.printCall(out, "GET", "/v1/users?status="+url.QueryEscape(*status), nil)
}

func dept(g *globals, args []string, out io.Writer) error {
	if len(args) == 0 {
		return exitError{2, "dept: want add, get, list or remove"}
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "add":
		fs := flag.NewFlagSet("dept add", flag.ContinueOnError)
		name := fs.String("name", "", "display name")
		parent := fs.String("parent", "", "parent department id (none: a root)")
		id, err := oneArg(g, fs, args)
		if err != nil {
			return err
		}
		if err := g.printCall(out, "PUT", idPath("/v1/departments", id), map[string]string{"name": *name, "parent": *parent}); err != nil {
			return err
		}
		if g.status == http.StatusOK {
			fmt.Fprintf(os.Stderr, "dingctl: department %s existed: updated (dept add creates, renames or moves)\n", id)
		}
		return nil
	case "get":
		id, err := oneArg(g, flag.NewFlagSet("dept get", flag.ContinueOnError), args)
		if err != nil {
			return err
		}
		return g.printCall(out, "GET", idPath("/v1/departments", id), nil)
	case "list":
		if err := noArgs(g, flag.NewFlagSet("dept list", flag.ContinueOnError), args); err != nil {
			return err
		}
		return g.printCall(out, "GET", "/v1/departments", nil)
	case "remove":
		id, err := oneArg(g, flag.NewFlagSet("dept remove", flag.ContinueOnError), args)
		if err != nil {
			return err
		}
		return g.printCall(out, "DELETE", idPath("/v1/departments", id), nil)
	}
	return exitError{2, "dept: unknown subcommand " + sub}
}

func group(g *globals, args []string, out io.Writer) error {
	if len(args) == 0 {
		return exitError{2, "group: want add, members, get, list or remove"}
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "add":
		fs := flag.NewFlagSet("group add", flag.ContinueOnError)
		name := fs.String("name", "", "display name")
		members := fs.String("members", "", "user ids, comma-separated (replaces the members)")
		id, err := oneArg(g, fs, args)
		if err != nil {
			return err
		}
		if err := g.printCall(out, "PUT", idPath("/v1/groups", id), map[string]any{"name": *name, "members": split(*members)}); err != nil {
			return err
		}
		if g.status == http.StatusOK {
			fmt.Fprintf(os.Stderr, "dingctl: group %s existed: its name and members replaced (group members --add/--remove changes some)\n", id)
		}
		return nil
	case "members":
		fs := flag.NewFlagSet("group members", flag.ContinueOnError)
		add := fs.String("add", "", "user ids to add, comma-separated")
		remove := fs.String("remove", "", "user ids to remove, comma-separated")
		id, err := oneArg(g, fs, args)
		if err != nil {
			return err
		}
		if *add == "" && *remove == "" {
			return exitError{2, "group members: --add or --remove is required"}
		}
		return g.printCall(out, "POST", idPath("/v1/groups", id)+"/members", map[string]any{"add": split(*add), "remove": split(*remove)})
	case "get":
		id, err := oneArg(g, flag.NewFlagSet("group get", flag.ContinueOnError), args)
		if err != nil {
			return err
		}
		return g.printCall(out, "GET", idPath("/v1/groups", id), nil)
	case "list":
		if err := noArgs(g, flag.NewFlagSet("group list", flag.ContinueOnError), args); err != nil {
			return err
		}
		return g.printCall(out, "GET", "/v1/groups", nil)
	case "remove":
		id, err := oneArg(g, flag.NewFlagSet("group remove", flag.ContinueOnError), args)
		if err != nil {
			return err
		}
		return g.printCall(out, "DELETE", idPath("/v1/groups", id), nil)
	}
	return exitError{2, "group: unknown subcommand " + sub}
}

func directory(g *globals, args []string, out io.Writer) error {
	if len(args) == 0 || args[0] != "import" {
		return exitError{2, "directory: want import FILE"}
	}
	fs := flag.NewFlagSet("directory import", flag.ContinueOnError)
	asCSV := fs.Bool("csv", false, "the file is CSV: id,name,phone,department_path[,quiet_hours[,email]]")
	asJSON := fs.Bool("json", false, "the file is JSON: {departments, users, groups}")
	removeMissing := fs.Bool("remove-missing", false, "offboard active users the file does not list")
	apply := fs.Bool("apply", false, "apply the changes (without it the import only prints them: a dry run)")
	fs.Bool("dry-run", true, "print the changes without applying them (the default; --apply applies)")
	force := fs.Bool("force", false, "with --apply --remove-missing: offboard even more than 10% of the active users, or more than 50")
	file, err := oneArg(g, fs, args[1:])
	if err != nil {
		return err
	}
	format := "json"
	switch {
	case *asCSV && *asJSON:
		return exitError{2, "directory import: give --csv or --json, not both"}
	case *asCSV:
		format = "csv"
	case !*asJSON && strings.EqualFold(filepath.Ext(file), ".csv"):
		format = "csv"
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	q := url.Values{"format": {format}}
	if *removeMissing {
		q.Set("remove_missing", "1")
	}
	if !*apply {
		q.Set("dry_run", "1")
	}
	if *force {
		q.Set("force", "1")
	}
	var res any
	if err := g.callBody("POST", "/v1/directory/import?"+q.Encode(), "text/"+format, f, &res); err != nil {
		return err
	}
	if err := printJSON(out, res); err != nil {
		return err
	}
	if !*apply {
		_, err := fmt.Fprintln(os.Stderr, "dry run: nothing was changed; run again with --apply to apply these changes")
		return err
	}
	return nil
}

func audit(g *globals, args []string, out io.Writer) error {
	if len(args) > 0 && args[0] == "verify" {
		return auditVerify(g, args[1:], out)
	}
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	after := fs.Uint64("after", 0, "print entries after this sequence number")
	limit := fs.Int("limit", 100, "at most this many entries (1 to 1000)")
	if err := noArgs(g, fs, args); err != nil {
		return err
	}
	return g.printCall(out, "GET", "/v1/audit?after="+strconv.FormatUint(*after, 10)+"&limit="+strconv.Itoa(*limit), nil)
}

// auditVerify: audit verify [--expect HEAD_HASH] [--head]. It prints the
// server's answer as JSON (--head: only the head hash, once the log
// verifies) and fails, exit 1, when the log does not verify.
func auditVerify(g *globals, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	expect := fs.String("expect", "", "a head_hash recorded earlier: fail unless an entry has it (finds entries cut off the end)")
	head := fs.Bool("head", false, "print only the head hash, to record it for the next --expect")
	if err := noArgs(g, fs, args); err != nil {
		return err
	}
	var res struct {
		OK       bool   `json:"ok"`
		HeadHash string `json:"head_hash"`
		BrokenAt uint64 `json:"broken_at"`
		Reason   string `json:"reason"`
	}
	raw, err := g.request("GET", "/v1/audit/verify?expect="+url.QueryEscape(*expect), "", nil, 5*time.Minute)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return err
	}
	switch {
	case !*head:
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return err
		}
		if err := printJSON(out, v); err != nil {
			return err
		}
	case res.OK:
		if _, err := fmt.Fprintln(out, res.HeadHash); err != nil {
			return err
		}
	}
	switch {
	case res.OK:
		return nil
	case res.BrokenAt != 0:
		return exitError{1, fmt.Sprintf("the audit log is broken at entry %d: %s", res.BrokenAt, res.Reason)}
	}
	return exitError{1, "the audit log does not verify: " + res.Reason}
}

// callBody is call with a raw request body (an import file) instead of JSON.
func (g *globals) callBody(method, path, contentType string, body io.Reader, out any) error {
	raw, err := g.request(method, path, contentType, body, 5*time.Minute)
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, out)
}
