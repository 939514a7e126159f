// Command dingd is the Ding server.
//
//	go run ./cmd/dingd                      # Pebble in ./ding-data, socket :7070, HTTP :7080
//	dingd --data /var/lib/ding --listen :7070 --http 127.0.0.1:7080
//
// Every flag has an environment equivalent (DING_DATA, DING_LISTEN,
// DING_HTTP, DING_MAX_BODY, DING_LOG_LEVEL, TWILIO_ACCOUNT_SID,
// TWILIO_AUTH_TOKEN, ...; --help lists them); a flag given on the command
// line wins. Prefer the environment for TWILIO_AUTH_TOKEN: flags show in ps.
//
// SMS and voice escalation of DINGs go through Twilio when
// --twilio-account-sid, --twilio-auth-token, --twilio-from and --public-url
// are set; --twilio-api-url points the client at a Twilio-compatible
// gateway or a fake (channels/twilio/twiliotest) for a local demo. On first start dingd writes an admin token to DATA/admin.token
// (mode 0600). SIGTERM or SIGINT drains and stops cleanly.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/dingmq/ding/channels/twilio"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/internal/node"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "dingd:", err)
		os.Exit(1)
	}
}

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func envInt(name string, def int) (int, error) {
	v, ok := os.LookupEnv(name)
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return n, nil
}

func run(args []string) error {
	fs := flag.NewFlagSet("dingd", flag.ContinueOnError)
	data := fs.String("data", env("DING_DATA", "./ding-data"), "data directory (env DING_DATA)")
	listen := fs.String("listen", env("DING_LISTEN", ":7070"), "client socket address (env DING_LISTEN)")
	httpAddr := fs.String("http", env("DING_HTTP", ":7080"), "admin HTTP address (env DING_HTTP)")
	maxBody, err := strconv.Atoi(env("DING_MAX_BODY", "65536"))
	if err != nil {
		return fmt.Errorf("DING_MAX_BODY: %w", err)
	}
	fs.IntVar(&maxBody, "max-body", maxBody, "largest message body in bytes (env DING_MAX_BODY)")
	level := fs.String("log-level", env("DING_LOG_LEVEL", "info"), "debug, info, warn or error (env DING_LOG_LEVEL)")
	drain := fs.Duration("drain-timeout", 15*time.Second, "how long SIGTERM waits for connections to drain")
	pprofAddr := fs.String("pprof", env("DING_PPROF", ""), "serve net/http/pprof on this address, e.g. 127.0.0.1:6060 (env DING_PPROF; off by default)")
	var tw twilio.Config
	fs.StringVar(&tw.AccountSID, "twilio-account-sid", env("TWILIO_ACCOUNT_SID", ""), "Twilio account SID (env TWILIO_ACCOUNT_SID); empty: SMS and voice steps are not configured")
	fs.StringVar(&tw.AuthToken, "twilio-auth-token", env("TWILIO_AUTH_TOKEN", ""), "Twilio auth token (env TWILIO_AUTH_TOKEN; prefer the env)")
	fs.StringVar(&tw.From, "twilio-from", env("TWILIO_FROM", ""), "E.164 number SMS and calls come from (env TWILIO_FROM)")
	fs.StringVar(&tw.PublicURL, "public-url", env("DING_PUBLIC_URL", ""), "base URL where Twilio reaches this server's webhooks, e.g. https://ding.example.com (env DING_PUBLIC_URL)")
	fs.StringVar(&tw.APIURL, "twilio-api-url", env("TWILIO_API_URL", ""), "base URL replacing https://api.twilio.com (env TWILIO_API_URL)")
	var q engine.Quotas
	if q.DingsPerSenderPerDay, err = envInt("DING_SENDER_DAILY", 0); err != nil {
		return err
	}
	fs.IntVar(&q.DingsPerSenderPerDay, "ding-sender-daily", q.DingsPerSenderPerDay, "DINGs one sender may send per UTC day; 0: 200, -1: unlimited (env DING_SENDER_DAILY)")
	interval, err := time.ParseDuration(env("DING_RECIPIENT_INTERVAL", "0s"))
	if err != nil {
		return fmt.Errorf("DING_RECIPIENT_INTERVAL: %w", err)
	}
	fs.DurationVar(&q.RecipientInterval, "ding-recipient-interval", interval, "shortest time between DINGs from one sender to the same recipient; 0: 5m, negative: none (env DING_RECIPIENT_INTERVAL)")
	if q.SMSPerDay, err = envInt("DING_SMS_PER_DAY", 0); err != nil {
		return err
	}
	fs.IntVar(&q.SMSPerDay, "sms-per-day", q.SMSPerDay, "org-wide SMS budget per UTC day; 0: 10000, -1: unlimited (env DING_SMS_PER_DAY)")
	if q.CallsPerDay, err = envInt("DING_CALLS_PER_DAY", 0); err != nil {
		return err
	}
	fs.IntVar(&q.CallsPerDay, "calls-per-day", q.CallsPerDay, "org-wide call budget per UTC day; 0: 2000, -1: unlimited (env DING_CALLS_PER_DAY)")
	noFallback := fs.Bool("no-call-fallback", env("DING_NO_CALL_FALLBACK", "") != "", "do not send an SMS at once when an escalation call is busy, unanswered or fails (env DING_NO_CALL_FALLBACK=1)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))

	if *pprofAddr != "" {
		ln, err := net.Listen("tcp", *pprofAddr)
		if err != nil {
			return fmt.Errorf("--pprof: %w", err)
		}
		defer ln.Close()
		go http.Serve(ln, nil) // ends with the process; pprof registers on the default mux
	}
	n, err := node.Start(node.Config{
		DataDir: *data, SocketAddr: *listen, HTTPAddr: *httpAddr, MaxBody: maxBody, Logger: log,
		Twilio: tw, Quotas: q, NoCallFallback: *noFallback,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "dingd: socket %s, http %s, data %s (admin token in %s/%s)\n",
		n.SocketAddr(), n.HTTPAddr(), *data, *data, node.AdminTokenFile)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	log.Info("draining", "signal", s.String())
	ctx, cancel := context.WithTimeout(context.Background(), *drain)
	defer cancel()
	return n.Shutdown(ctx)
}
