package main

import (
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
)

// webhookNotes follows the list of webhook commands in dingctl webhook --help.
const webhookNotes = `Outbound event webhooks POST each event a subscription's filter matches
to its URL, signed (Standard Webhooks: webhook-id, webhook-timestamp,
webhook-signature "v1,<base64 HMAC-SHA256>" with the whsec_ secret that
webhook add prints once), in order, at least once: deduplicate by
webhook-id. A failed delivery is retried with backoff up to dingd
--webhook-horizon (3d), then parked: webhook deliveries lists what was
parked, webhook replay delivers it again. Filters name event types
(ding.confirmed, ding.unanswered, message.read, announcement.read_ratio,
user.added, ...), families (ding.*) or everything (*); webhook list shows
every type. Needs the "webhooks" permission (roles owner and admin).
`

// webhookCmd: webhook add|list|get|remove|pause|resume|deliveries|replay.
func webhookCmd(g *globals, args []string, out io.Writer) error {
	sub, args := args[0], args[1:] // dispatch answered an empty webhook
	switch sub {
	case "add":
		fs := flag.NewFlagSet("webhook add", flag.ContinueOnError)
		events := fs.String("events", "", "comma-separated event types, family.* or *")
		desc := fs.String("description", "", "what the receiver is")
		pos, err := parse(fs, g, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 || *events == "" {
			return exitError{2, "webhook add: want URL --events TYPE[,TYPE...]"}
		}
		var res struct {
			ID     string   `json:"id"`
			URL    string   `json:"url"`
			Events []string `json:"events"`
			Secret string   `json:"secret"`
		}
		body := map[string]any{"url": pos[0], "events": strings.Split(*events, ","), "description": *desc}
		if err := g.call("POST", "/v1/webhooks", body, &res); err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "webhook %s -> %s for %s\nsecret %s (shown this once: give it to the receiver to verify signatures)\n",
			res.ID, res.URL, strings.Join(res.Events, ","), res.Secret)
		return err
	case "list":
		if err := noArgs(g, flag.NewFlagSet("webhook list", flag.ContinueOnError), args); err != nil {
			return err
		}
		return g.printCall(out, "GET", "/v1/webhooks", nil)
	case "get":
		id, err := oneName(g, flag.NewFlagSet("webhook get", flag.ContinueOnError), args)
		if err != nil {
			return err
		}
		return g.printCall(out, "GET", "/v1/webhooks/"+url.PathEscape(id), nil)
	case "remove":
		id, err := oneName(g, flag.NewFlagSet("webhook remove", flag.ContinueOnError), args)
		if err != nil {
			return err
		}
		if err := g.call("DELETE", "/v1/webhooks/"+url.PathEscape(id), nil, nil); err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "removed webhook %s: its undelivered events and dead letters are gone\n", id)
		return err
	case "pause", "resume":
		id, err := oneName(g, flag.NewFlagSet("webhook "+sub, flag.ContinueOnError), args)
		if err != nil {
			return err
		}
		return g.printCall(out, "POST", "/v1/webhooks/"+url.PathEscape(id)+"/"+sub, nil)
	case "deliveries":
		fs := flag.NewFlagSet("webhook deliveries", flag.ContinueOnError)
		after := fs.Uint64("after", 0, "list dead letters after this seq")
		limit := fs.Int("limit", 100, "at most this many")
		pos, err := parse(fs, g, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return exitError{2, "webhook deliveries: want exactly one ID"}
		}
		q := url.Values{"after": {strconv.FormatUint(*after, 10)}, "limit": {strconv.Itoa(*limit)}}
		return g.printCall(out, "GET", "/v1/webhooks/"+url.PathEscape(pos[0])+"/deliveries?"+q.Encode(), nil)
	case "replay":
		fs := flag.NewFlagSet("webhook replay", flag.ContinueOnError)
		ids := fs.String("ids", "", "comma-separated event ids of the dead letters to replay, as deliveries lists them (default: all)")
		pos, err := parse(fs, g, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return exitError{2, "webhook replay: want exactly one ID"}
		}
		body := map[string]any{}
		if *ids != "" {
			body["ids"] = strings.Split(*ids, ",")
		}
		var res struct {
			Replayed int `json:"replayed"`
		}
		if err := g.call("POST", "/v1/webhooks/"+url.PathEscape(pos[0])+"/replay", body, &res); err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "replaying %d dead letters of webhook %s\n", res.Replayed, pos[0])
		return err
	}
	return exitError{2, "webhook: unknown subcommand " + sub + " (want " + subcommands("webhook") + ")"}
}
