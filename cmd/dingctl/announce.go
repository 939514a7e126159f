package main

import (
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/dingmq/ding/engine"
)

// announce publishes an announcement, or runs one of its subcommands.
func announce(g *globals, args []string, out io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "stats":
			return announceStats(g, args[1:], out)
		case "reding":
			return announceReding(g, args[1:], out)
		}
	}
	fs := flag.NewFlagSet("announce", flag.ContinueOnError)
	from := fs.String("from", "", "sender user id (default: admin)")
	to := fs.String("to", "", "all, dept:ID or group:ID (comma-separated for several)")
	confirm := fs.Bool("confirm", false, "ask every recipient to confirm")
	cid := fs.String("client-id", "", "client message id: a retry with the same id is stored once (default: one made for this command, so that --retry-for may send it again)")
	pos, err := parse(fs, g, args)
	if err != nil {
		return err
	}
	if *to == "" || len(pos) == 0 {
		return exitError{2, "announce: --to and TEXT are required"}
	}
	var res struct{ ID string }
	if err := g.postSend("/v1/announcements", map[string]any{
		"from": *from, "to": split(*to), "text": strings.Join(pos, " "), "confirm": *confirm,
	}, *cid, &res); err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, res.ID)
	return err
}

func announceStats(g *globals, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("announce stats", flag.ContinueOnError)
	unread := fs.Bool("unread", false, "list who has not read it")
	unconfirmed := fs.Bool("unconfirmed", false, "list who has not confirmed it")
	asCSV := fs.Bool("csv", false, "one CSV row per recipient (with --unread or --unconfirmed: only those)")
	pos, err := parse(fs, g, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return exitError{2, "announce stats: want exactly one id"}
	}
	path := "/v1/announcements/" + url.PathEscape(pos[0]) + "/stats"
	if !*asCSV {
		q := ""
		if *unread || *unconfirmed {
			q = "?lists=1"
		}
		var res map[string]any
		if err := g.call("GET", path+q, nil, &res); err != nil {
			return err
		}
		if !*unread {
			delete(res, "unread")
		}
		if !*unconfirmed {
			delete(res, "unconfirmed")
		}
		return printJSON(out, res)
	}
	q := url.Values{"format": {"csv"}}
	switch {
	case *unread:
		q.Set("only", "unread")
	case *unconfirmed:
		q.Set("only", "unconfirmed")
	}
	return g.raw("GET", path+"?"+q.Encode(), out)
}

func announceReding(g *globals, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("announce reding", flag.ContinueOnError)
	policy := fs.String("policy", "", "a stored policy's name, or a policy (default: the default policy)")
	unread := fs.Bool("unread", false, "DING those who have not read it (default: those who have not confirmed)")
	from := fs.String("from", "", "DING as this user (default: the announcement's sender)")
	pos, err := parse(fs, g, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return exitError{2, "announce reding: want exactly one id"}
	}
	req := map[string]any{"unread": *unread, "from": *from}
	if *policy != "" {
		if _, err := engine.ParsePolicy(*policy); err == nil {
			req["policy"] = *policy
		} else {
			req["policy_name"] = *policy
		}
	}
	var res map[string]any
	if err := g.call("POST", "/v1/announcements/"+url.PathEscape(pos[0])+"/reding", req, &res); err != nil {
		return err
	}
	return printJSON(out, res)
}

// raw does one admin API request and copies the answer to out.
func (g *globals) raw(method, path string, out io.Writer) error {
	raw, err := g.request(method, path, "", nil, 60*time.Second)
	if err != nil {
		return err
	}
	_, err = out.Write(raw)
	return err
}

// stats prints the admin statistics for a range of days.
func stats(g *globals, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("stats", flag.ContinueOnError)
	from := fs.String("from", "", "first day, YYYY-MM-DD (default: 29 days before --to)")
	to := fs.String("to", "", "last day, YYYY-MM-DD (default: today, UTC)")
	dept := fs.String("dept", "", "only these departments, comma-separated")
	top := fs.Int("top", 10, "how many of the people who most often leave DINGs unanswered")
	if _, err := parse(fs, g, args); err != nil {
		return err
	}
	q := url.Values{"top": {fmt.Sprint(*top)}}
	for k, v := range map[string]string{"from": *from, "to": *to, "dept": *dept} {
		if v != "" {
			q.Set(k, v)
		}
	}
	var res map[string]any
	if err := g.call("GET", "/v1/stats?"+q.Encode(), nil, &res); err != nil {
		return err
	}
	return printJSON(out, res)
}
