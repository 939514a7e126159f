package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/engine"
)

// ding sends a DING, or runs one of its subcommands.
func ding(g *globals, args []string, out io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "status":
			return dingStatus(g, args[1:], out)
		case "list":
			return dingList(g, args[1:], out)
		case "cancel":
			return dingCancel(g, args[1:], out)
		}
	}
	fs := flag.NewFlagSet("ding", flag.ContinueOnError)
	from := fs.String("from", "", "sender user id")
	to := fs.String("to", "", "recipients, comma-separated: user ids or E.164 numbers")
	policy := fs.String("policy", "", `a stored policy's name, or a policy like "inapp,sms@5m,voice@15m until=confirmed"`)
	choices := fs.String("choices", "", `response menu, comma-separated, e.g. "attend,decline"`)
	critical := fs.Bool("critical", false, "ignore recipients' quiet hours")
	cid := fs.String("client-id", "", "client message id: a retry with the same id is stored once (default: one made for this command, so that --retry-for may send it again)")
	pos, err := parse(fs, g, args)
	if err != nil {
		return err
	}
	if *from == "" || *to == "" || len(pos) == 0 {
		return exitError{2, "ding: --from, --to and TEXT are required"}
	}
	req := map[string]any{
		"from": *from, "to": split(*to), "text": strings.Join(pos, " "),
		"critical": *critical,
	}
	if *policy != "" {
		// A policy that parses is a policy, and so is anything that cannot
		// be a name or starts like a step ("sms@…": the server then says
		// why it does not parse); anything else names a stored one.
		if _, err := engine.ParsePolicy(*policy); err == nil || !engine.ValidName(*policy) || looksLikeSteps(*policy) {
			req["policy"] = *policy
		} else {
			req["policy_name"] = *policy
		}
	}
	if *choices != "" {
		req["choices"] = strings.Split(*choices, ",")
	}
	var res struct {
		ID      string
		Refused []struct {
			Recipient  string
			Reason     string
			RetryAfter int64 `json:"retry_after"`
		}
	}
	if err := g.postSend("/v1/dings", req, *cid, &res); err != nil {
		return err
	}
	for _, r := range res.Refused {
		fmt.Fprintf(os.Stderr, "dingctl: not escalating to %s: %s\n", r.Recipient, r.Reason)
	}
	_, err = fmt.Fprintln(out, res.ID)
	return err
}

func oneID(g *globals, name string, args []string) (string, error) {
	pos, err := parse(flag.NewFlagSet(name, flag.ContinueOnError), g, args)
	if err != nil {
		return "", err
	}
	if len(pos) != 1 {
		return "", exitError{2, name + ": want exactly one DING id"}
	}
	return url.PathEscape(pos[0]), nil
}

// dingStatus: ding status ID [--wait D]. With --wait it asks again every
// half second until every recipient is settled: stopped (confirmed, read,
// cancelled, removed, refused: "ended" is set) or exhausted (the ledger's
// last event: nothing more to try, awaiting a confirmation), then prints
// the last answer; exit 3 if D passes first. A policy of in-app only is
// never exhausted: it waits for the confirmation.
func dingStatus(g *globals, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("ding status", flag.ContinueOnError)
	wait := fs.Duration("wait", 0, "wait up to this long for every recipient to be stopped or exhausted, then print (0: print now)")
	pos, err := parse(fs, g, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return exitError{2, "ding status: want exactly one DING id"}
	}
	deadline := time.Now().Add(*wait)
	for {
		var res struct {
			Recipients []struct {
				Ended  *string `json:"ended"`
				Events []struct {
					Event string `json:"event"`
				} `json:"events"`
			} `json:"recipients"`
		}
		raw, err := g.request("GET", "/v1/dings/"+url.PathEscape(pos[0]), "", nil, 30*time.Second)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return err
		}
		open := 0
		for _, r := range res.Recipients {
			exhausted := len(r.Events) > 0 && r.Events[len(r.Events)-1].Event == string(engine.LedgerExhausted)
			if r.Ended == nil && !exhausted {
				open++
			}
		}
		if open == 0 || *wait <= 0 || time.Now().After(deadline) {
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				return err
			}
			if err := printJSON(out, v); err != nil {
				return err
			}
			if open > 0 && *wait > 0 {
				return exitError{3, fmt.Sprintf("ding status: %d recipients still escalating after %v", open, *wait)}
			}
			return nil
		}
		time.Sleep(500 * time.Millisecond) // a poll of the admin API, not a synchronisation
	}
}

func dingCancel(g *globals, args []string, out io.Writer) error {
	id, err := oneID(g, "ding cancel", args)
	if err != nil {
		return err
	}
	var res map[string]any
	if err := g.call("POST", "/v1/dings/"+id+"/cancel", nil, &res); err != nil {
		return err
	}
	return printJSON(out, res)
}

func dingList(g *globals, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("ding list", flag.ContinueOnError)
	from := fs.String("from", "", "only DINGs from this sender")
	after := fs.String("after", "", "only DINGs after this id (paging)")
	limit := fs.Int("limit", 100, "at most this many")
	if _, err := parse(fs, g, args); err != nil {
		return err
	}
	q := url.Values{"limit": {fmt.Sprint(*limit)}}
	if *from != "" {
		q.Set("from", *from)
	}
	if *after != "" {
		q.Set("after", *after)
	}
	var res map[string]any
	if err := g.call("GET", "/v1/dings?"+q.Encode(), nil, &res); err != nil {
		return err
	}
	return printJSON(out, res)
}

func policy(g *globals, args []string, out io.Writer) error {
	if len(args) == 0 {
		return exitError{2, "policy: want set or list"}
	}
	switch args[0] {
	case "set":
		pos, err := parse(flag.NewFlagSet("policy set", flag.ContinueOnError), g, args[1:])
		if err != nil {
			return err
		}
		if len(pos) < 2 {
			return exitError{2, `policy set: want NAME SPEC, e.g. policy set oncall "inapp,sms@5m,voice@15m until=confirmed"`}
		}
		var res struct{ Name, Policy string }
		if err := g.call("PUT", "/v1/policies/"+url.PathEscape(pos[0]), map[string]string{"policy": strings.Join(pos[1:], " ")}, &res); err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "%s: %s\n", res.Name, res.Policy)
		return err
	case "list":
		if _, err := parse(flag.NewFlagSet("policy list", flag.ContinueOnError), g, args[1:]); err != nil {
			return err
		}
		var res map[string]any
		if err := g.call("GET", "/v1/policies", nil, &res); err != nil {
			return err
		}
		return printJSON(out, res)
	}
	return exitError{2, "policy: unknown subcommand " + args[0]}
}

// looksLikeSteps reports whether spec starts with a channel and a step's
// punctuation (sms@…, voice*…): a policy written inline, not a name.
func looksLikeSteps(spec string) bool {
	i := strings.IndexAny(spec, "@*")
	if i <= 0 {
		return false
	}
	_, err := engine.ParseChannel(spec[:i])
	return err == nil
}

// describeConfirmed says how a DING was confirmed: "with answer 1
// (attend) in the app at 2026-12-04T09:30:00Z".
func describeConfirmed(c *client.Confirmed) string {
	answer := "without a choice"
	if c.Answer > 0 {
		answer = fmt.Sprintf("with answer %d (%s)", c.Answer, c.Choice)
	}
	via := map[string]string{"inapp": "in the app", "sms": "by SMS reply", "voice": "by a keypress in a call"}[c.Channel]
	if via == "" {
		via = "by " + c.Channel
	}
	return fmt.Sprintf("%s %s at %s", answer, via, c.At.UTC().Format(time.RFC3339))
}
