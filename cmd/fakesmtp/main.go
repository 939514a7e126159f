// Command fakesmtp runs channels/email/emailtest, a fake SMTP server on
// loopback, for a local demo of DING e-mail steps with no mail server and
// no network:
//
//	go run ./cmd/fakesmtp --click 1 &
//	go run ./cmd/dingd --smtp-addr 127.0.0.1:2525 --smtp-tls none \
//	    --email-from "Ding <ding@example.com>" --public-url http://127.0.0.1:7080
//
// It prints every e-mail dingd sends (the address masked): its subject and
// its confirmation links. With --click N it plays the recipient: after
// --delay it opens link N (the page, a GET) and submits its form (a POST),
// which confirms the DING with that answer. With --fail CODE it refuses
// the next --fail-count messages with that SMTP code (451: dingd retries;
// 550: dingd gives up), to see the ledger's email_failed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/dingmq/ding/channels/email"
	"github.com/dingmq/ding/channels/email/emailtest"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "fakesmtp:", err)
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
	fmt.Fprint(w, `Usage: fakesmtp [flags]

A fake SMTP server on loopback for a local demo of DING e-mail steps, with no
mail server and no network. Point dingd at it with --smtp-addr and
--smtp-tls none; it prints every e-mail dingd sends (addresses masked) with
its confirmation links, and can click one. Exit status: 0 on SIGINT or
SIGTERM, 1 on a failure, 2 on a mistake on the command line.

`)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fs.VisitAll(func(f *flag.Flag) {
		arg, help := flag.UnquoteUsage(f)
		if f.DefValue != "" && f.DefValue != "0" {
			help += " (default " + f.DefValue + ")"
		}
		fmt.Fprintf(tw, "  --%s %s\t%s\n", f.Name, strings.ToUpper(arg), help)
	})
	tw.Flush()
	_, err := fmt.Fprint(w, `
Example:
  fakesmtp --click 1 &
  dingd --smtp-addr 127.0.0.1:2525 --smtp-tls none \
      --email-from "Ding <ding@example.com>" --public-url http://127.0.0.1:7080
`)
	return err
}

// run is fakesmtp with args, until SIGINT or SIGTERM. --help is written
// to stdout and is no error.
func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("fakesmtp", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are one line; --help prints usage
	addr := fs.String("listen", "127.0.0.1:2525", "loopback `address` to serve SMTP on")
	user := fs.String("username", "", "`name` AUTH PLAIN must give; empty: no authentication")
	pass := fs.String("password", "", "`password` AUTH PLAIN must give, with --username")
	click := fs.Int("click", 0, "the recipient opens link `N` of every e-mail and submits it, which confirms; 0: no click")
	fail := fs.Int("fail", 0, "refuse the first --fail-count messages with this SMTP `code` (451: retried, 550: final); 0: accept all")
	failCount := fs.Int("fail-count", 1, "how many messages --fail refuses")
	delay := fs.Duration("delay", time.Second, "time before a --click")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return usage(stdout, fs)
	} else if err != nil {
		msg := err.Error()
		if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
			msg = "unknown flag --" + strings.TrimPrefix(name, "-")
		} else if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
			msg = "a value is needed after --" + strings.TrimPrefix(name, "-")
		}
		return usageError(strings.Replace(msg, " for flag -", " for flag --", 1) + "; see fakesmtp --help")
	}
	switch {
	case fs.NArg() > 0:
		return usageError(fmt.Sprintf("unexpected argument %q; see fakesmtp --help", fs.Arg(0)))
	case *fail != 0 && (*fail < 400 || *fail > 599):
		return usageError(fmt.Sprintf("--fail %d: want a 4xx or 5xx code; see fakesmtp --help", *fail))
	case (*user == "") != (*pass == ""):
		return usageError("--username and --password go together; see fakesmtp --help")
	case *click < 0:
		return usageError("--click wants a link's number, from 1; see fakesmtp --help")
	}
	srv, err := emailtest.Start(emailtest.Config{Addr: *addr, Username: *user, Password: *pass})
	if err != nil {
		return err
	}
	defer srv.Close()
	if *fail != 0 {
		srv.FailNext(*fail, *failCount)
	}
	fmt.Fprintf(stdout, "fake SMTP on %s\n", srv.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	var out sync.Mutex
	for n := 1; ; n++ {
		ms, err := srv.Wait(ctx, n)
		if err != nil {
			return nil // interrupted
		}
		m := ms[n-1]
		links := show(stdout, &out, m)
		if *click > 0 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				recipient(ctx, stdout, &out, links, *click, *delay)
			}()
		}
	}
}

var linkRE = regexp.MustCompile(`https?://\S+` + regexp.QuoteMeta(email.PathConfirm) + `\?t=[A-Za-z0-9_-]+`)

// show prints a received e-mail and returns its confirmation links.
func show(w io.Writer, mu *sync.Mutex, m emailtest.Message) []string {
	mu.Lock()
	defer mu.Unlock()
	subject, text, err := m.Text()
	to := make([]string, len(m.To))
	for i, a := range m.To {
		to[i] = mask(a)
	}
	if err != nil {
		fmt.Fprintf(w, "MAIL to %s: unreadable: %v\n", strings.Join(to, ", "), err)
		return nil
	}
	fmt.Fprintf(w, "MAIL to %s: %q\n", strings.Join(to, ", "), subject)
	links := linkRE.FindAllString(text, -1)
	for i, l := range links {
		fmt.Fprintf(w, "  link %d: %s\n", i+1, l)
	}
	return links
}

// mask hides an address's local part but its first letter.
func mask(addr string) string {
	local, domain, ok := strings.Cut(addr, "@")
	if !ok || local == "" {
		return "***"
	}
	return local[:1] + "***@" + domain
}

// recipient opens link n and submits its form, as a person would.
func recipient(ctx context.Context, w io.Writer, mu *sync.Mutex, links []string, n int, delay time.Duration) {
	say := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(w, format, a...)
	}
	if n > len(links) {
		say("  no link %d to click (the e-mail has %d)\n", n, len(links))
		return
	}
	select {
	case <-time.After(delay):
	case <-ctx.Done():
		return
	}
	link := links[n-1]
	u, err := url.Parse(link)
	if err != nil {
		say("  link %d: %v\n", n, err)
		return
	}
	c := &http.Client{Timeout: 10 * time.Second}
	get, err := c.Get(link)
	if err != nil {
		say("  opening link %d: %v\n", n, err)
		return
	}
	get.Body.Close()
	form := url.Values{"t": {u.Query().Get("t")}}
	u.RawQuery = ""
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		say("  submitting link %d: %v\n", n, err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	say("  clicked link %d: %d %s\n", n, resp.StatusCode, strings.TrimSpace(string(b)))
}
