// Command faketwilio runs channels/twilio/twiliotest, a fake Twilio REST
// API, for a local DING demo with no Twilio account and no network:
//
//	go run ./cmd/faketwilio --press 1 &
//	TWILIO_AUTH_TOKEN=demo0token go run ./cmd/dingd --twilio-account-sid ACdemo0000000000000000000000000000 \
//	    --twilio-from +15005550006 --public-url http://127.0.0.1:7080 --twilio-api-url http://127.0.0.1:7090
//
// It prints every SMS and call dingd asks for (numbers masked), and plays
// the carrier: SMS are reported sent and delivered; calls ring, are
// answered, and (with --press) the callee presses a key, which confirms
// the DING; with --reply, every SMS is answered with that text.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dingmq/ding/channels/twilio/twiliotest"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "faketwilio:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("faketwilio", flag.ContinueOnError)
	addr := fs.String("listen", "127.0.0.1:7090", "address to serve the fake REST API on")
	sid := fs.String("sid", "ACdemo0000000000000000000000000000", "account SID to accept")
	tok := fs.String("token", "demo0token", "auth token to accept and sign webhooks with")
	press := fs.String("press", "", "key the callee presses in every call (empty: hang up without pressing)")
	reply := fs.String("reply", "", "text every SMS is answered with (empty: no reply)")
	inbound := fs.String("inbound-url", "http://127.0.0.1:7080/twilio/sms/inbound", "where replies are posted (dingd's public URL + /twilio/sms/inbound)")
	delay := fs.Duration("delay", time.Second, "time between the carrier's steps")
	if err := fs.Parse(args); err != nil {
		return err
	}
	srv, err := twiliotest.Listen(*addr, *sid, *tok)
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Printf("fake Twilio on %s (account %s)\n", srv.URL(), *sid)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for n := 1; ; n++ {
		rs, err := srv.WaitFor(ctx, "", n)
		if err != nil {
			return nil // interrupted
		}
		r := rs[n-1]
		wg.Add(1)
		go func() {
			defer wg.Done()
			carrier(ctx, srv, r, *press, *reply, *inbound, *delay)
		}()
	}
}

// mask hides all but the last two digits of a phone number.
func mask(phone string) string {
	if len(phone) < 4 {
		return phone
	}
	return phone[:2] + strings.Repeat("*", len(phone)-4) + phone[len(phone)-2:]
}

func carrier(ctx context.Context, srv *twiliotest.Server, r twiliotest.Request, press, reply, inbound string, delay time.Duration) {
	wait := func() bool {
		select {
		case <-time.After(delay):
			return true
		case <-ctx.Done():
			return false
		}
	}
	step := func(what string, code int, err error) {
		if err != nil || code != 200 {
			fmt.Printf("  %s %s: webhook answered %d %v\n", r.SID, what, code, err)
		}
	}
	switch r.Kind {
	case "sms":
		fmt.Printf("SMS  %s to %s: %q\n", r.SID, mask(r.To), r.Body)
		for _, st := range []string{"sent", "delivered"} {
			if !wait() {
				return
			}
			code, _, err := srv.SMSStatus(ctx, r.SID, st, "")
			step(st, code, err)
		}
		if reply != "" && wait() {
			code, _, err := srv.Reply(ctx, inbound, r.To, r.From, reply)
			fmt.Printf("  %s replied %q\n", mask(r.To), reply)
			step("reply", code, err)
		}
	case "call":
		fmt.Printf("CALL %s to %s\n", r.SID, mask(r.To))
		for _, st := range []string{"ringing", "in-progress"} {
			if !wait() {
				return
			}
			code, _, err := srv.CallStatus(ctx, r.SID, st)
			step(st, code, err)
		}
		if press != "" && wait() {
			code, body, err := srv.Press(ctx, r.SID, press)
			fmt.Printf("  %s pressed %s: %s\n", mask(r.To), press, strings.TrimSpace(body))
			step("press", code, err)
		}
		if wait() {
			code, _, err := srv.CallStatus(ctx, r.SID, "completed")
			step("completed", code, err)
		}
	}
}
