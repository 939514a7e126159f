// Command fakepush runs channels/push/pushtest, a fake APNs and a fake
// FCM on loopback, for a local push demo with no Apple or Google account
// and no network:
//
//	go run ./cmd/fakepush --dir /tmp/fakepush &
//	go run ./cmd/dingd --push-apns-key-file /tmp/fakepush/AuthKey_KEY1234567.p8 \
//	    --push-apns-key-id KEY1234567 --push-apns-team-id TEAM123456 --push-apns-endpoint https://127.0.0.1:7093 \
//	    --push-fcm-credentials-file /tmp/fakepush/service-account.json --push-fcm-endpoint https://127.0.0.1:7094 \
//	    --push-ca-file /tmp/fakepush/pushtest-ca.pem
//
// It writes the APNs signing key, the service account and the fakes' CA
// into --dir, prints the dingd flags that use them, and prints every
// notification dingd sends (tokens masked): provider, title, body, badge,
// and a DING's actions. With --fail-every N, every Nth request is answered
// 503 (to watch dingd retry).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/dingmq/ding/channels/push/pushtest"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "fakepush:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError is a mistake on the command line: exit status 2.
type usageError string

func (e usageError) Error() string { return string(e) }

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("fakepush", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	apns := fs.String("apns", "127.0.0.1:7093", "the fake APNs's listen address (loopback)")
	fcm := fs.String("fcm", "127.0.0.1:7094", "the fake FCM's listen address (loopback)")
	dir := fs.String("dir", "", "where to write the APNs key, the service account and the CA (required)")
	failEvery := fs.Int("fail-every", 0, "answer every Nth request 503 (0: never)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stdout, "Usage: fakepush --dir DIR [--apns ADDR] [--fcm ADDR] [--fail-every N]\n\nA fake APNs and a fake FCM on loopback for a local push demo; prints the dingd flags to use them.")
			return nil
		}
		return usageError(err.Error())
	}
	if *dir == "" || fs.NArg() > 0 || *failEvery < 0 {
		return usageError("--dir is required; --fail-every is 0 or more; no arguments")
	}
	// Signals are caught from here on, before anything is printed.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	srv, err := pushtest.StartAt(*apns, *fcm)
	if err != nil {
		return err
	}
	defer srv.Close()
	key, err := srv.WriteAPNsKey(*dir)
	if err != nil {
		return err
	}
	sa, err := srv.WriteServiceAccount(*dir)
	if err != nil {
		return err
	}
	ca, err := srv.WriteCA(*dir)
	if err != nil {
		return err
	}
	if *failEvery > 0 {
		srv.FailEvery(*failEvery, 503)
	}
	fmt.Fprintf(stdout, "fake APNs on %s, fake FCM on %s; run dingd with:\n  --push-apns-key-file %s --push-apns-key-id %s --push-apns-team-id %s --push-apns-endpoint %s \\\n  --push-fcm-credentials-file %s --push-fcm-endpoint %s --push-ca-file %s\n",
		srv.APNsURL(), srv.FCMURL(), key, srv.KeyID, srv.TeamID, srv.APNsURL(), sa, srv.FCMURL(), ca)
	for seen := 0; ; {
		reqs, err := srv.Wait(ctx, seen+1)
		if err != nil {
			return nil // a signal
		}
		for _, r := range reqs[seen:] {
			fmt.Fprintln(stdout, describe(r))
		}
		seen = len(reqs)
	}
}

// describe is one line about a request: never the whole token.
func describe(r pushtest.Request) string {
	tok := r.Token
	if len(tok) > 8 {
		tok = tok[:4] + "…" + tok[len(tok)-4:]
	}
	var title, body, extra string
	switch r.Provider {
	case pushtest.APNs:
		var p struct {
			Aps struct {
				Alert struct{ Title, Body string } `json:"alert"`
				Badge *int                         `json:"badge"`
				Level string                       `json:"interruption-level"`
			} `json:"aps"`
			Ding *struct {
				Choices []string `json:"choices"`
				Actions []string `json:"actions"`
			} `json:"ding"`
		}
		_ = json.Unmarshal(r.Body, &p)
		title, body = p.Aps.Alert.Title, p.Aps.Alert.Body
		if p.Aps.Badge != nil {
			extra += fmt.Sprintf(" badge=%d", *p.Aps.Badge)
		}
		if p.Ding != nil {
			extra += fmt.Sprintf(" %s actions=%s choices=%q", p.Aps.Level, strings.Join(p.Ding.Actions, ","), p.Ding.Choices)
		}
	case pushtest.FCM:
		var p struct {
			Message struct {
				Notification struct{ Title, Body string } `json:"notification"`
				Data         map[string]string            `json:"data"`
				Android      struct {
					Priority string `json:"priority"`
				} `json:"android"`
			} `json:"message"`
		}
		_ = json.Unmarshal(r.Body, &p)
		title, body = p.Message.Notification.Title, p.Message.Notification.Body
		extra = " priority=" + p.Message.Android.Priority
		if a := p.Message.Data["actions"]; a != "" {
			extra += " actions=" + a + " choices=" + p.Message.Data["choices"]
		}
	}
	return fmt.Sprintf("%s %d token=%s title=%q body=%q%s", r.Provider, r.Status, tok, title, body, extra)
}
