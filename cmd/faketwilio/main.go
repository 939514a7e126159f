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
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/dingmq/ding/channels/twilio/twiliotest"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "faketwilio:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError is a mistake on the command line: exit status 2, where any
// other failure is 1.
type usageError string

func (e usageError) Error() string { return string(e) }

// usage writes --help: the text, then every flag of fs.
func usage(w io.Writer, fs *flag.FlagSet) error {
	fmt.Fprint(w, `Usage: faketwilio [flags]

A fake Twilio REST API for a local DING demo, with no Twilio account and no
network. Point dingd at it with --twilio-api-url; it prints every SMS and
call dingd asks for (numbers masked) and plays the carrier. Exit status: 0
on SIGINT or SIGTERM, 1 on a failure, 2 on a mistake on the command line.

`)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fs.VisitAll(func(f *flag.Flag) {
		arg, help := flag.UnquoteUsage(f)
		if f.DefValue != "" {
			help += " (default " + f.DefValue + ")"
		}
		fmt.Fprintf(tw, "  --%s %s\t%s\n", f.Name, strings.ToUpper(arg), help)
	})
	tw.Flush()
	_, err := fmt.Fprint(w, `
Example:
  faketwilio --press 1 &
  TWILIO_AUTH_TOKEN=demo0token dingd --twilio-account-sid ACdemo0000000000000000000000000000 \
      --twilio-from +15005550006 --public-url http://127.0.0.1:7080 --twilio-api-url http://127.0.0.1:7090
`)
	return err
}

// run is faketwilio with args, until SIGINT or SIGTERM. --help is written
// to stdout and is no error.
func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("faketwilio", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are one line; --help prints usage
	addr := fs.String("listen", "127.0.0.1:7090", "`address` to serve the fake REST API on")
	sid := fs.String("sid", "ACdemo0000000000000000000000000000", "account `SID` to accept")
	tok := fs.String("token", "demo0token", "auth `token` to accept and sign webhooks with")
	press := fs.String("press", "", "`key` the callee presses in every call, which confirms the DING; empty: hang up without pressing")
	reply := fs.String("reply", "", "`text` every SMS is answered with; empty: no reply")
	inbound := fs.String("inbound-url", "http://127.0.0.1:7080/twilio/sms/inbound", "`URL` replies are posted to: dingd's public URL + /twilio/sms/inbound")
	delay := fs.Duration("delay", time.Second, "time between the carrier's steps")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return usage(stdout, fs)
	} else if err != nil {
		msg := err.Error()
		if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
			msg = "unknown flag --" + strings.TrimPrefix(name, "-")
		} else if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
			msg = "a value is needed after --" + strings.TrimPrefix(name, "-")
		}
		return usageError(strings.Replace(msg, " for flag -", " for flag --", 1) + "; see faketwilio --help")
	}
	if fs.NArg() > 0 {
		return usageError(fmt.Sprintf("unexpected argument %q; see faketwilio --help", fs.Arg(0)))
	}
	srv, err := twiliotest.Listen(*addr, *sid, *tok)
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Fprintf(stdout, "fake Twilio on %s (account %s)\n", srv.URL(), *sid)
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
