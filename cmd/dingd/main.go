// Command dingd is the Ding server.
//
//	go run ./cmd/dingd                      # Pebble in ./ding-data, socket :7070, HTTP :7080
//	dingd --data /var/lib/ding --listen :7070 --http 127.0.0.1:7080
//	dingd --config /etc/ding/dingd.toml     # the same settings from a TOML file
//	dingd --config /etc/ding/dingd.toml --print-config
//
// Every setting is a flag, an environment variable (DING_DATA, DING_LISTEN,
// TWILIO_AUTH_TOKEN, ...) and a key of the TOML config file named by
// --config or DING_CONFIG; a flag on the command line beats the
// environment, which beats the file, which beats the default. --help lists
// them (the table is in config.go). Prefer the environment for
// TWILIO_AUTH_TOKEN: flags show in ps. --print-config prints the effective
// configuration in the file's format (200, not the 0 that stands for it),
// secrets redacted, and exits. dingd check checks a stopped server's
// store or a backup; dingd help [check] and --help print usage on stdout.
// Exit status: 0 after a clean stop or help, 1 on a failure, 2 on a
// mistake on the command line.
//
// A port already taken is found before anything is written in the data
// dir; the data dir is then locked (DATA/dingd.lock names the PID, so a
// second dingd says which process holds it), and --restore-from restores
// a backup atomically: a start that fails leaves no half-restored store.
//
// SMS and voice escalation of DINGs go through Twilio when
// twilio-account-sid, twilio-auth-token, twilio-from and public-url are
// set; twilio-api-url points the client at a Twilio-compatible gateway or a
// fake (channels/twilio/twiliotest) for a local demo. E-mail escalation
// steps go through the SMTP server smtp-addr (smtp-tls, smtp-username,
// smtp-password-file, email-from; the confirmation links start with
// public-url and are signed with DATA/email-link.key, made on first use);
// cmd/fakesmtp is a fake for a local demo. On first start dingd
// writes an admin token to DATA/admin.token (mode 0600).
//
// TLS: tls-cert and tls-key make the HTTP port HTTPS, and tls-listen adds
// a socket port over TLS; SIGHUP (or a change of the files) reloads the
// certificate without dropping connections. Or acme-domain gets the
// certificate from an ACME CA such as Let's Encrypt (acme.go).
//
// Secret chats: burn-after is how long after its first read a secret
// message burns (and the longest delay a level-3 chat may choose),
// secret-unread-ttl how long an unread level-2 or level-3 message lives.
// Their keys are kept in DATA/secret.keys, outside the store.
//
// SIGTERM or SIGINT drains: /readyz turns 503, clients are told
// SHUTTING_DOWN, and dingd waits up to drain-timeout for them to go before
// it closes the store and exits; a second signal cuts the wait short (the
// store is still closed cleanly). deploy/systemd has a unit for it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/engine/store/pebblestore"
	"github.com/dingmq/ding/internal/buildinfo"
	"github.com/dingmq/ding/internal/node"
)

// runMember runs dingd as a cluster member until SIGTERM or SIGINT (a
// clean stop) or until it is deposed (exit status 1: run it again and it
// rejoins as the standby).
func runMember(c *config, ncfg node.Config, log *slog.Logger) error {
	cluster.LogRedisTo(log)
	coord, closeRedis, err := cluster.DialRedis(c.redis())
	if err != nil {
		return err
	}
	defer closeRedis()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// SIGHUP reloads the TLS certificate of the node this member serves
	// (its default action would end the process: an unplanned failover).
	var serving atomic.Pointer[node.Node]
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			if n := serving.Load(); n != nil {
				if err := n.ReloadTLS(); err != nil {
					log.Error("reloading the TLS certificate failed; the old one stays", "err", err)
				} else {
					log.Info("reloaded the TLS certificate")
				}
			}
		}
	}()
	log.Info("cluster mode", "member", c.NodeID, "redis", cluster.RedactURL(c.Cluster), "advertise", c.Advertise)
	return node.RunMember(ctx, node.MemberConfig{
		Node: ncfg, Coord: coord, ID: c.NodeID, Advertise: c.Advertise, AdvertiseSocket: c.AdvertiseSocket, AdvertiseTLSSocket: c.AdvertiseTLSSocket,
		Secret: c.ClusterSecret, LeaseTTL: c.LeaseTTL, OwnerOnly: c.AckReplicas == 0, PeerCA: c.ClusterCA,
		Started: func(n *node.Node) {
			serving.Store(n)
			if c.Partitions > 1 {
				fmt.Fprintf(os.Stderr, "dingd: member %s serves as a node of %d partitions, each with its own owner: socket %s, http %s, data %s\n", c.NodeID, c.Partitions, n.SocketAddr(), n.HTTPAddr(), c.Data)
				return
			}
			fmt.Fprintf(os.Stderr, "dingd: member %s owns the partition: socket %s, http %s, data %s\n", c.NodeID, n.SocketAddr(), n.HTTPAddr(), c.Data)
		},
	})
}

func main() {
	if err := run(os.Args[1:], os.LookupEnv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "dingd:", err)
		os.Exit(exitCode(err))
	}
}

// exitCode is dingd's exit status for err: 2 for a mistake on the command
// line, 1 for any other failure.
func exitCode(err error) int {
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// run is dingd with args. Help (--help, help, check --help) is written
// to stdout and is no error.
func run(args []string, getenv func(string) (string, bool), stdout io.Writer) error {
	if len(args) == 1 && (args[0] == "--version" || args[0] == "-version" || args[0] == "version") {
		_, err := fmt.Fprintln(stdout, buildinfo.String("dingd"))
		return err
	}
	if len(args) > 0 && args[0] == "help" {
		switch {
		case len(args) == 1:
			usage(stdout)
		case len(args) == 2 && args[1] == "check":
			checkUsage(stdout)
		default:
			return usageError(fmt.Sprintf("no help on %q: dingd help [check]", strings.Join(args[1:], " ")))
		}
		return nil
	}
	if len(args) > 0 && args[0] == "check" {
		return check(args[1:], stdout)
	}
	c, err := load(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		usage(stdout)
		return nil
	}
	if err != nil {
		return err
	}
	if c.PrintConfig {
		return printConfig(stdout, c)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: c.logLevel()}))
	for _, w := range c.warnings {
		log.Warn(w)
	}

	if c.PProf != "" {
		ln, err := net.Listen("tcp", c.PProf)
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("the pprof port %s is in use (--pprof chooses another)", c.PProf)
		} else if err != nil {
			return fmt.Errorf("pprof: %w", err)
		}
		defer ln.Close()
		go http.Serve(ln, nil) // ends with the process; pprof registers on the default mux
	}
	ncfg := node.Config{
		DataDir: c.Data, SocketAddr: c.Listen, HTTPAddr: c.HTTP, MaxBody: c.MaxBody, Logger: log,
		Twilio: c.Twilio, Quotas: c.Quotas, NoCallFallback: c.NoCallFallback, DrainDelay: c.DrainDelay,
		BurnAfter: c.BurnAfter, SecretUnreadTTL: c.SecretUnreadTTL, MetricsAuth: c.MetricsAuth,
		Webhooks: c.Webhooks,
	}
	if c.SMTPAddr != "" {
		pw, err := readPassword(c.SMTPPasswordFile)
		if err != nil {
			return err
		}
		ncfg.Email = c.email(pw)
	}
	ncfg.Push = c.push()
	ncfg.Socket.IdleTimeout = c.IdleTimeout
	ncfg.Socket.NewDeviceWindow = c.NewDeviceWindow
	ncfg.Retention = c.engineRetention()
	ncfg.TLSCert, ncfg.TLSKey, ncfg.TLSSocketAddr, ncfg.TLSClientCA = c.TLSCert, c.TLSKey, c.TLSListen, c.TLSClientCA
	ncfg.ACME = c.acme()
	ncfg.WSAddr = c.WS
	for _, o := range strings.Split(c.WSOrigins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			ncfg.Socket.WSOrigins = append(ncfg.Socket.WSOrigins, o)
		}
	}
	ncfg.BackupDir = c.BackupDir
	ncfg.DiskReserve = int64(c.DiskReserveMB) << 20
	if c.DiskReserveMB == 0 {
		ncfg.DiskReserve = -1 // 0 MiB: no reserve, no guard
	}
	ncfg.Socket.MaxPreAuthPerSource, ncfg.MaxHTTPConnsPerSource = orNone(c.PreAuthPerSource), orNone(c.HTTPConnsPerSource)
	ncfg.Limits = c.limits()
	if c.RestoreFrom != "" && c.Cluster != "" {
		return errors.New("--restore-from restores one node; a cluster member joins from its owner's snapshot")
	}
	if c.Partitions > 1 && c.RestoreFrom != "" {
		return errors.New("--partitions (experimental) does not restore backups yet: --restore-from restores the store of one partition")
	}
	ncfg.Partitions = c.Partitions
	// Start restores the backup, if asked, once the listeners are bound
	// and the data dir locked: a start that fails leaves no half-restored
	// store behind.
	ncfg.RestoreFrom = c.RestoreFrom
	if c.Cluster != "" {
		return startError(runMember(c, ncfg, log))
	}
	n, err := node.Start(ncfg)
	if err != nil {
		return startError(err)
	}
	fmt.Fprintf(os.Stderr, "dingd: socket %s, http %s, data %s (admin token in %s)\n",
		n.SocketAddr(), n.HTTPAddr(), c.Data, filepath.Join(c.Data, node.AdminTokenFile))

	if a := n.WSAddr(); a != "" {
		fmt.Fprintf(os.Stderr, "dingd: WebSocket ws://%s/ws (and /ws on the HTTP port)\n", a)
	}
	if a := n.TLSSocketAddr(); a != "" {
		fmt.Fprintf(os.Stderr, "dingd: socket over TLS %s; https on %s\n", a, n.HTTPAddr())
	}
	if c.ACMEDomain != "" {
		fmt.Fprintf(os.Stderr, "dingd: certificates for %s from ACME, kept in %s; the first handshake naming one gets it\n",
			c.ACMEDomain, filepath.Join(c.Data, node.ACMEDir))
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() { // SIGHUP: reload the TLS certificate
		for range hup {
			if err := n.ReloadTLS(); err != nil {
				log.Error("reloading the TLS certificate failed; the old one stays", "err", err)
			} else {
				log.Info("reloaded the TLS certificate")
			}
		}
	}()
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	signal.Stop(hup)
	log.Info("draining", "signal", s.String(), "timeout", c.DrainTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), c.DrainTimeout)
	defer cancel()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // a second signal cuts the drain short
		defer wg.Done()
		select {
		case s := <-sig:
			log.Warn("second signal: closing connections now", "signal", s.String())
			cancel()
		case <-done:
		}
	}()
	err = n.Shutdown(ctx)
	close(done)
	wg.Wait()
	return err
}

// startError rewrites the errors met first when a start fails into one
// line saying what to do; others are returned as they are.
func startError(err error) error {
	var port *node.AddrInUseError
	if errors.As(err, &port) {
		flag := map[string]string{"socket": "--listen", "http": "--http", "TLS socket": "--tls-listen", "websocket": "--ws"}[port.Listener]
		return fmt.Errorf("the %s port %s is in use (another dingd? %s chooses another)", port.Listener, port.Addr, flag)
	}
	var dir *node.DataDirInUseError
	if errors.As(err, &dir) {
		return fmt.Errorf("the data dir %s is in use by %s: stop it, or --data chooses another", dir.Dir, dir.Holder())
	}
	return err
}

// orNone maps a flag's 0 (no bound) to the -1 the node takes for it (its
// 0 is the default).
func orNone(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// checkPartitions checks every store of a data dir of p partitions
// (--partitions): the directory's, then each partition's. It prints one
// JSON object, {"partitions": p, "stores": [{"store": "dir/store",
// "report": {...}}, ...]}, and fails if any store breaks an invariant.
func checkPartitions(data string, p int, stdout io.Writer) error {
	type storeReport struct {
		Store  string             `json:"store"`
		Report engine.CheckReport `json:"report"`
	}
	out := struct {
		Partitions int           `json:"partitions"`
		Stores     []storeReport `json:"stores"`
	}{Partitions: p}
	names := []string{filepath.Join("dir", "store")}
	for i := range p {
		names = append(names, filepath.Join("p", strconv.Itoa(i), "store"))
	}
	problems := 0
	for _, name := range names {
		dir := filepath.Join(data, name)
		if ms, _ := filepath.Glob(filepath.Join(dir, "MANIFEST-*")); len(ms) == 0 {
			return fmt.Errorf("check: %s holds no store", dir)
		}
		db, err := pebblestore.Open(dir, pebblestore.Options{ReadOnly: true})
		if err != nil {
			return fmt.Errorf("check: %w (is its dingd still running? stop it)", err)
		}
		r, err := engine.Check(db)
		db.Close()
		if err != nil {
			return fmt.Errorf("check: %s: %w", dir, err)
		}
		problems += len(r.Problems)
		out.Stores = append(out.Stores, storeReport{Store: name, Report: r})
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	if problems > 0 {
		return fmt.Errorf("check: %d broken invariants in the stores of %s", problems, data)
	}
	return nil
}

// checkUsage writes dingd check --help.
func checkUsage(w io.Writer) {
	fmt.Fprint(w, `Usage: dingd check [--data DIR | --store DIR]

Checks the invariants of a store (engine.Check): that of a data dir whose
dingd is stopped, or a backup (a directory dingctl backup wrote). Prints
the report as JSON. Exit status: 0 if every invariant holds, 1 if one is
broken or the store cannot be read, 2 on a mistake on the command line.

  --data DIR    the data dir whose store to check, its dingd stopped (default ./ding-data);
                with partitions (--partitions), every store in it, one report each
  --store DIR   check this store directory instead, e.g. a backup

Example:
  dingd check --data /var/lib/ding
  dingd check --store /var/lib/ding/backups/nightly
`)
}

// check runs the store's integrity check (engine.Check) on a data dir
// whose dingd is stopped, or on a backup: dingd check --data DIR (or
// --store DIR for a backup's directory). It prints the report as JSON and
// fails (exit status 1) if an invariant is broken.
func check(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("dingd check", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned as one line; --help prints checkUsage
	data := fs.String("data", "./ding-data", "")
	storeDir := fs.String("store", "", "")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		checkUsage(stdout)
		return nil
	} else if err != nil {
		return flagError(err, "dingd check --help")
	}
	if fs.NArg() > 0 {
		return usageError(fmt.Sprintf("unexpected argument %q; see dingd check --help", fs.Arg(0)))
	}
	dir := *storeDir
	if dir == "" {
		if p, err := node.RecordedPartitions(*data); err != nil {
			return fmt.Errorf("check: %w", err)
		} else if p > 1 {
			return checkPartitions(*data, p, stdout)
		}
		dir = filepath.Join(*data, "store")
	}
	if ms, _ := filepath.Glob(filepath.Join(dir, "MANIFEST-*")); len(ms) == 0 {
		return fmt.Errorf("check: %s holds no store", dir)
	}
	db, err := pebblestore.Open(dir, pebblestore.Options{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("check: %w (is its dingd still running? stop it, or check a backup)", err)
	}
	defer db.Close()
	r, err := engine.Check(db)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return err
	}
	if !r.OK() {
		return fmt.Errorf("check: %d broken invariants in %s", len(r.Problems), dir)
	}
	return nil
}
