// Command dingbench runs Ding's whole-system scenarios against a real dingd
// process on loopback and prints one Markdown table per scenario, each
// figure beside a baseline measured in the same run.
//
//	make build && ./bin/dingbench all          # ingest, idle, resume, broadcast, escalate, secret (~6 min)
//	./bin/dingbench ingest --conns 1000 --run 10s   # closed loop (peak), then open loop at half the peak
//	./bin/dingbench ingest --rate 5000              # open loop alone at 5,000 msgs/s offered
//	./bin/dingbench idle --conns 18000
//	./bin/dingbench idle --ws                 # plain, then the same through dingd --ws (WebSocket)
//	./bin/dingbench ingest --ws
//	./bin/dingbench idle --ws --tls           # plain, then through dingd --ws over TLS (wss)
//	./bin/dingbench resume --missed 100000
//	./bin/dingbench broadcast --conns 18000 --messages 20  # group messages back to back to 18,000 online devices
//	./bin/dingbench announce --users 100000 --conns 18000  # one announcement to all (~45 s); not in all
//	./bin/dingbench escalate --steps 1000000  # DING escalation timers (~75 s)
//	./bin/dingbench push --devices 10000 --push-messages 100000  # push notifications to offline devices through a fake APNs
//	./bin/dingbench secret --chats 3000       # secret chats: submits, burn lateness, bulk burns, restarts (~70 s)
//
// --dingd names the server binary; by default the dingd next to dingbench.
//
// --against OTHER_DINGD measures every scenario asked for with that dingd
// too, right after this one, and puts its figures in a column beside this
// one's with the ratio new/old; the baseline is measured once, before
// both (escalate and secret measure theirs within each binary's run). The
// two binaries must accept the same flags, e.g. the previous commit's:
//
//	git worktree add /tmp/prev HEAD~1 && (cd /tmp/prev && make build)
//	./bin/dingbench ingest --against /tmp/prev/bin/dingd
//
// The ingest scenario runs two loops, each against a fresh dingd: a
// closed loop (each connection one submit at a time) for the peak
// acknowledged rate, then an open loop offering half that peak (the same
// rate for the --against dingd): submits scheduled evenly, several in
// flight per connection, every latency timed from the submit's scheduled
// time, and submits written late counted as behind schedule. --rate N
// runs the open loop alone at N msgs/s.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/dingmq/ding/bench"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "dingbench:", err)
		os.Exit(1)
	}
}

const usage = "usage: dingbench ingest|idle|resume|broadcast|announce|escalate|secret|cluster|all [--against OTHER_DINGD] [flags]"

func run(args []string) error {
	if len(args) == 0 {
		return errors.New(usage + "; dingbench -h lists the flags")
	}
	scenario := args[0]
	fs := flag.NewFlagSet("dingbench", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), usage)
		fs.PrintDefaults()
	}
	self, _ := os.Executable()
	bin := fs.String("dingd", filepath.Join(filepath.Dir(self), "dingd"), "dingd binary")
	tmp := fs.String("tmp", os.TempDir(), "where data directories go")
	against := fs.String("against", "", "another dingd binary (e.g. the previous commit's) measured right after --dingd in the same run, its figures beside this one's; not for announce-naive")
	conns := fs.Int("conns", 0, "connections (ingest default 1000; idle, broadcast and announce default 18000)")
	payload := fs.Int("payload", 256, "message body bytes")
	warm := fs.Duration("warmup", 3*time.Second, "ingest warm-up, before each loop's window")
	runFor := fs.Duration("run", 10*time.Second, "ingest measured window, of each loop")
	offered := fs.Float64("rate", 0, "ingest: run the open loop alone, offering this many msgs/s across the connections (0: closed loop, then open loop at half its peak)")
	messages := fs.Int("messages", 20, "broadcast: messages sent to the group back to back")
	baseline := fs.Int("baseline-workers", 64, "ingest baseline goroutines")
	missed := fs.Int("missed", 100000, "resume: messages missed")
	hold := fs.Duration("hold", 0, "idle: keep the connections up this long after measuring (for profiling)")
	cpuprofile := fs.String("cpuprofile", "", "write the load generator's CPU profile here")
	raw := fs.Bool("raw", false, "ingest: drive connections with hand-written frames instead of the Go client")
	steps := fs.Int("steps", 1_000_000, "escalate: pending escalation steps loaded")
	fires := fs.Int("fires", 3000, "escalate: steps that fall due during the lateness window")
	window := fs.Duration("window", 30*time.Second, "escalate: the lateness window (whole seconds)")
	overdue := fs.Int("overdue", 100, "escalate: steps that fall due while dingd is down, per restart")
	serverPprof := fs.String("server-pprof", "", "escalate, announce, broadcast, secret, cluster: start dingd with --pprof on this address, to profile it during the run (cluster --partitions: one port per node from this one on)")
	users := fs.Int("users", 100_000, "announce: users in the org (--conns of them online)")
	devices := fs.Int("devices", 10_000, "push: users, each with one registered device and no connection")
	pushMsgs := fs.Int("push-messages", 100_000, "push: messages in the burst, each to one of --devices users")
	coalesce := fs.Duration("push-coalesce", 10*time.Second, "push: dingd's --push-coalesce")
	serverProfile := fs.String("server-profile", "", "announce, broadcast: with --server-pprof, write dingd's CPU profile over the publish or the sends to this file (the --against dingd's to FILE.against); secret: to this prefix, one file per phase; cluster: over the measured window (--partitions: FILE.a, .b, .c)")
	pairs := fs.Int("pairs", 500, "secret: user pairs sending to each other in the throughput phase (2×pairs connections)")
	round := fs.Duration("round", 2*time.Second, "secret: each kind's window per round in the throughput phase (at least 2s)")
	rounds := fs.Int("rounds", 3, "secret: rounds of the throughput phase")
	chats := fs.Int("chats", 3000, "secret: level-3 chats in the burn-lateness phase, each between two users online")
	perChat := fs.Int("per-chat", 2, "secret: messages per chat in the burn-lateness phase")
	live := fs.Int("live", 50_000, "secret: live messages held at a restart")
	restarts := fs.Int("restarts", 3, "secret: restarts of each server")
	failovers := fs.Int("failovers", 5, "cluster: times the serving member is killed")
	pauses := fs.Int("pauses", 0, "cluster --partitions: times the node serving u0 is paused (SIGSTOP) while u0 sends, then woken")
	rolling := fs.Int("rolling", 0, "cluster --partitions: rounds of rolling restarts (each node drained, stopped with SIGTERM and started again in turn) under a sender per partition: lost messages, the longest submit→ack")
	upgradeTo := fs.String("upgrade-to", "", "cluster --rolling: start each node again from this dingd binary instead (a rolling upgrade from --dingd to it; with --rolling 1, the later rounds restart the new build)")
	pongTimeout := fs.Duration("pong-timeout", 0, "cluster --pauses: the probing client's PongTimeout (0: the client's default; 3 ping intervals or more: as clients before PongTimeout)")
	sweep := fs.String("sweep", "", "cluster --partitions: after the main closed loop, run it again at each of these connection counts (comma-separated, e.g. 400,800), on one dingd and on the cluster alike: each one's peak beside the other's")
	annUsers := fs.Int("ann-users", 100_000, "cluster --partitions: after the closed loop, create this many more users and announce to all, on one dingd and on the cluster (0: no announcement)")
	annConns := fs.Int("ann-conns", 18_000, "cluster --partitions: of the announcement's users, how many are online (one raw device each)")
	handovers := fs.Int("handovers", 3, "cluster --partitions: times a partition is handed over while a user of another sends into it")
	overTLS := fs.Bool("tls", false, "idle and ingest: also measure connections over TLS (dingd --tls-listen), beside plain ones in the same run")
	overWS := fs.Bool("ws", false, "idle and ingest: also measure connections through the WebSocket gateway (dingd --ws), beside plain ones in the same run")
	clusterParts := fs.Int("partitions", 0, "cluster: three nodes of this many partitions each (a member per partition), not one partition")
	ownerOnly := fs.Bool("ack-replicas-0", false, "cluster: also run the load against members with --ack-replicas 0 (the cost of waiting for the standby, in the same run; with --partitions, three fresh nodes at the main count and at each --sweep count, after the rest)")
	switch scenario {
	case "-h", "-help", "--help", "help":
		fs.SetOutput(os.Stdout)
		fs.Usage()
		return nil
	}
	if err := fs.Parse(args[1:]); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if _, err := os.Stat(*bin); err != nil {
		return fmt.Errorf("dingd binary: %v (build it: make build)", err)
	}
	if *against != "" {
		if _, err := os.Stat(*against); err != nil {
			return fmt.Errorf("--against dingd binary: %v", err)
		}
	}
	pick := func(v, def int) int {
		if v == 0 {
			return def
		}
		return v
	}
	profiling := bench.Profiling{Pprof: *serverPprof, Profile: *serverProfile}
	var scenarios []func() (bench.Table, error)
	ingest := func() (bench.Table, error) {
		return bench.Ingest(bench.IngestConfig{Bin: *bin, Tmp: *tmp, Against: *against, Conns: pick(*conns, 1000), Payload: *payload,
			Warmup: *warm, Run: *runFor, Baseline: *baseline, Raw: *raw, Rate: *offered, TLS: *overTLS, WS: *overWS})
	}
	idle := func() (bench.Table, error) {
		return bench.Idle(bench.IdleConfig{Bin: *bin, Tmp: *tmp, Against: *against, Conns: pick(*conns, 18000), Hold: *hold, TLS: *overTLS, WS: *overWS, Profiling: profiling})
	}
	resume := func() (bench.Table, error) {
		return bench.Resume(bench.ResumeConfig{Bin: *bin, Tmp: *tmp, Against: *against, Missed: *missed, Payload: *payload})
	}
	broadcast := func() (bench.Table, error) {
		return bench.Broadcast(bench.BroadcastConfig{Bin: *bin, Tmp: *tmp, Self: self, Against: *against, Conns: pick(*conns, 18000),
			Messages: *messages, Payload: *payload, Profiling: profiling})
	}
	escalate := func() (bench.Table, error) {
		return wholeRuns(*bin, *against, func(b string) (bench.Table, error) {
			return bench.Escalate(bench.EscalateConfig{Bin: b, Tmp: *tmp, Steps: *steps, Fires: *fires, Window: *window, Overdue: *overdue, Pprof: *serverPprof})
		})
	}
	announce := func() (bench.Table, error) {
		return bench.Announce(bench.AnnounceConfig{Bin: *bin, Tmp: *tmp, Self: self, Against: *against, Users: *users, Conns: pick(*conns, 18000),
			Text: *payload, Profiling: profiling})
	}
	secret := func() (bench.Table, error) {
		return wholeRuns(*bin, *against, func(b string) (bench.Table, error) {
			profile := *serverProfile
			if b != *bin && profile != "" {
				profile += "-against"
			}
			return runSecret(secretConfig{Bin: b, Tmp: *tmp, Pairs: *pairs, Payload: *payload, Round: *round, Rounds: *rounds,
				Chats: *chats, PerChat: *perChat, Live: *live, Restarts: *restarts, Pprof: *serverPprof, Profile: profile})
		})
	}
	var sweepCounts []int
	for f := range strings.SplitSeq(*sweep, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return fmt.Errorf("dingbench: --sweep %q: want connection counts, comma-separated", *sweep)
		}
		sweepCounts = append(sweepCounts, n)
	}
	cluster := func() (bench.Table, error) {
		return wholeRuns(*bin, *against, func(b string) (bench.Table, error) {
			return bench.Cluster(bench.ClusterConfig{Bin: b, Tmp: *tmp, Conns: pick(*conns, 200), Payload: *payload,
				Warmup: *warm, Run: *runFor, Failovers: *failovers, Pauses: *pauses, Rolling: *rolling, UpgradeTo: *upgradeTo, PongTimeout: *pongTimeout, OwnerOnly: *ownerOnly, Profiling: profiling, Partitions: *clusterParts, Handovers: *handovers,
				AnnUsers: *annUsers, AnnConns: *annConns, Sweep: sweepCounts})
		})
	}
	pushScenario := func() (bench.Table, error) {
		return bench.Push(bench.PushConfig{Bin: *bin, Tmp: *tmp, Devices: *devices, Messages: *pushMsgs, Coalesce: *coalesce})
	}
	switch scenario {
	case "announce-naive": // the announce scenario's baseline, run by it as a child process
		return bench.NaiveBroadcast(os.Stdin, os.Stdout, pick(*conns, 18000))
	case "announce":
		scenarios = append(scenarios, announce)
	case "ingest":
		scenarios = append(scenarios, ingest)
	case "idle":
		scenarios = append(scenarios, idle)
	case "resume":
		scenarios = append(scenarios, resume)
	case "broadcast":
		scenarios = append(scenarios, broadcast)
	case "escalate":
		scenarios = append(scenarios, escalate)
	case "secret":
		scenarios = append(scenarios, secret)
	case "cluster":
		scenarios = append(scenarios, cluster)
	case "push":
		scenarios = append(scenarios, pushScenario)
	case "all":
		scenarios = append(scenarios, ingest, idle, resume, broadcast, escalate, secret)
	default:
		return fmt.Errorf("unknown scenario %q", scenario)
	}
	for _, s := range scenarios {
		t, err := s()
		if err != nil {
			return err
		}
		fmt.Println(t.Markdown())
	}
	return nil
}

// wholeRuns measures a scenario whose baselines are taken inside its run
// (escalate, secret) with bin and, if against is set, again with against,
// and merges the tables: the baseline column is bin's run's.
func wholeRuns(bin, against string, measure func(bin string) (bench.Table, error)) (bench.Table, error) {
	t, err := bench.Compare(bin, against, "", measure)
	if err == nil && against != "" {
		t.Setup += " Each binary's run measured its own baselines; the baseline column shows this dingd's run's."
	}
	return t, err
}
