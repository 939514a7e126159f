package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// The broadcast scenario: Conns users online with one device each, all
// members of one ad-hoc group, and one more user who sends Messages
// messages to the group ("group:bcast") back to back: every SUBMIT is
// written without waiting for the acks or the deliveries before it. The
// server expands the group; a message to more recipients than the
// engine's FanoutChunk is acknowledged once its audience is durable and
// its entries are written in background chunks, so this exercises that
// path Messages times over, with every recipient online.
//
// The devices are raw sockets in the dingbench process (rawdevice.go)
// that decode every frame in full (the DELIVER's protobuf, not just its
// length), as a client would. Measured: deliveries/s from the first
// submit written to the last DELIVER decoded, each message's time from
// its submit to its last device, and the CPU of dingd and of the clients.
//
// Baseline, measured first: the naive broadcaster's ceiling mode
// (broadcast.go; a child dingbench, because one process cannot hold both
// ends of 18,000 connections under a 20,000-file limit): the same number
// of loopback connections to the same decoding clients, to which it
// writes the same Messages DELIVER frames (same fields and sizes),
// pre-encoded, one write syscall per delivery from GOMAXPROCS goroutines.
// That is what this machine does with one write per delivery and no
// durability, fanout or bookkeeping at all: an upper bound for a server
// that writes each delivery on its own (dingd may do better by writing
// several frames to a socket at once).

// BroadcastConfig sizes the broadcast scenario.
type BroadcastConfig struct {
	Bin, Tmp string
	// Self is the dingbench binary, started as the baseline's broadcaster
	// (`dingbench announce-naive`, see NaiveBroadcast).
	Self string
	// Against is a second dingd binary measured after Bin in the same
	// run, beside it in the table (dingbench --against); empty means none.
	Against string
	// Profiling: a CPU profile of dingd over the sends (5 s from just
	// before them).
	Profiling
	// Conns online devices, the group's members; zero means 18,000 (what
	// one dingd can hold under a 20,000-file limit, its own files aside).
	Conns int
	// Messages sent to the group back to back; zero means 20.
	Messages int
	// Payload is each message's body size in bytes, at least 8 (the
	// submit time goes in the first 8); zero means 256.
	Payload int
}

func (c *BroadcastConfig) setDefaults() {
	c.Messages = cmp.Or(c.Messages, 20)
	c.Conns = cmp.Or(c.Conns, 18_000)
	c.Payload = max(cmp.Or(c.Payload, 256), 8)
}

// broadcastGroup is the scenario's group.
const broadcastGroup = "bcast"

// broadcastRun is one dingd's run.
type broadcastRun struct {
	subs        []int64 // Unix ns: SUBMIT k written
	lastAck     int64   // Unix ns: the last SUBMIT_ACK read
	toAll       Latencies
	first, last int64 // Unix ns: the first submit written, the last DELIVER decoded
	cpu, self   float64
	span        time.Duration // the CPU figures' span
	runqWait    time.Duration
	frames      float64 // frames per socket write over the run
	commits     float64
	connected   time.Duration
	load        string
	profile     string
}

// Broadcast runs the broadcast scenario: the baseline first, then Bin,
// then Against if set.
func Broadcast(cfg BroadcastConfig) (Table, error) {
	cfg.setDefaults()
	sender := fmt.Sprintf("u%d", cfg.Conns)
	body := make([]byte, cfg.Payload)
	copy(body[8:], announceText(cfg.Payload))
	fmt.Fprintf(os.Stderr, "broadcast: baseline, %d messages to %d connections\n", cfg.Messages, cfg.Conns)
	// What dingd sends for a message to the group (channels/session deliverOf).
	like := &pb.Deliver{
		Id: stampID(time.Now()), From: sender, To: []string{"group:" + broadcastGroup}, Kind: pb.Kind_TEXT,
		Body: body, CreatedMs: time.Now().UnixMilli(),
	}
	base, err := naiveBaseline(cfg.Self, cfg.Conns, like, cfg.Messages, "ceiling")
	if err != nil {
		return Table{}, err
	}
	ceiling := base.rounds[0]
	t, err := Compare(cfg.Bin, cfg.Against, "the baseline", func(bin string) (Table, error) {
		c := cfg
		if bin != cfg.Bin {
			c.Bin, c.Profiling = bin, cfg.forAgainst()
		}
		r, err := broadcastOnce(c)
		if err != nil {
			return Table{}, err
		}
		return broadcastTable(c, r, ceiling), nil
	})
	if err != nil {
		return Table{}, err
	}
	t.Scenario = "broadcast"
	frame := len(wire.Encode(pb.FrameType_DELIVER, like))
	t.Setup = fmt.Sprintf("%d users online over loopback with one device each, all members of one ad-hoc group; one more user sends %d messages of %d bytes to \"group:%s\" back to back over a raw socket (every SUBMIT written without waiting for acks or deliveries). "+
		"The devices (raw sockets in the dingbench process) decode every frame in full. Deliveries/s: %d × %d deliveries over the first submit written → the last DELIVER decoded; time to all: each message's submit → the last device to decode it. "+
		"Baseline: the naive broadcaster's ceiling mode in a child dingbench: %d accepted loopback connections from the same decoding clients, to which it writes the same %d DELIVER frames (%d bytes each, the fields dingd sends), pre-encoded, one write syscall per delivery from %d goroutines, timed from its loop start: what the machine does with one write per delivery and no durability, fanout or bookkeeping.",
		cfg.Conns, cfg.Messages, cfg.Payload, broadcastGroup, cfg.Conns, cfg.Messages, cfg.Conns, cfg.Messages, frame, runtime.GOMAXPROCS(0)) + t.Setup
	return t, nil
}

// broadcastOnce runs the sends against a fresh dingd from cfg.Bin.
func broadcastOnce(cfg BroadcastConfig) (*broadcastRun, error) {
	n := cfg.Conns
	srv, err := StartServer(cfg.Bin, cfg.Tmp, n+1, cfg.dingdArgs()...)
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
	if err := putGroup(srv, broadcastGroup, "u", n); err != nil {
		return nil, err
	}
	r := &broadcastRun{}
	devs := make([]*annDevice, n)
	for i := range devs {
		devs[i] = &annDevice{user: fmt.Sprintf("u%d", i)}
	}
	t0 := time.Now()
	if err := connectAll(devs, func(d *annDevice) (net.Conn, error) { return dialDevice(srv, d, 0) }); err != nil {
		closeAll(devs)
		return nil, err
	}
	defer closeAll(devs)
	r.connected = time.Since(t0)
	fmt.Fprintf(os.Stderr, "broadcast: %s: %d devices connected in %v\n", cfg.Bin, n, r.connected.Round(time.Millisecond))
	sender, err := dialRaw(srv, fmt.Sprintf("u%d", n), "d")
	if err != nil {
		return nil, err
	}
	defer sender.nc.Close()
	senderDone := make(chan error, 1)
	go func() { senderDone <- sender.readLoop(nil) }()
	arrs := make([]*arrivals, cfg.Messages)
	for k := range arrs {
		arrs[k] = newArrivals(n)
	}
	rs := readers{kind: pb.Kind_TEXT}
	for i, d := range devs {
		rs.start(d, i, nil, arrs...)
	}
	err = r.send(cfg, srv, sender, arrs)
	closeAll(devs)
	sender.nc.Close()
	return r, errors.Join(err, rs.wait(), <-senderDone)
}

// send writes the messages back to back, waits until every device has
// decoded every one, and takes the run's figures.
func (r *broadcastRun) send(cfg BroadcastConfig, srv *Server, sender *rawConn, arrs []*arrivals) error {
	time.Sleep(time.Second) // let the handshakes' after-work settle
	profiled := cfg.begin(5)
	m0, err := srv.Scrape()
	if err != nil {
		return err
	}
	pid := srv.cmd.Process.Pid
	cpu0, err := cpuSeconds(pid)
	if err != nil {
		return err
	}
	self0 := selfCPUSeconds()
	_, wait0 := schedWait(pid)

	to := []string{"group:" + broadcastGroup}
	answers := make([]<-chan submitAnswer, cfg.Messages)
	r.subs = make([]int64, cfg.Messages)
	for k := range answers {
		body := make([]byte, cfg.Payload)
		copy(body[8:], announceText(cfg.Payload))
		now := time.Now()
		stampBody(body, now)
		r.subs[k] = now.UnixNano()
		if answers[k], err = sender.submit(&pb.Submit{
			Ref: uint64(k + 1), To: to, Kind: pb.Kind_TEXT, Body: body, ClientMsgId: fmt.Sprintf("bcast-%d", k),
		}); err != nil {
			return fmt.Errorf("submit %d: %w", k, err)
		}
	}
	r.first = r.subs[0]
	byID := make(map[string]int, cfg.Messages)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for k, ch := range answers {
		select {
		case a := <-ch:
			if a.err != nil {
				return fmt.Errorf("submit %d: %w", k, a.err)
			}
			byID[a.id] = k
			r.lastAck = max(r.lastAck, a.at.UnixNano())
		case <-ctx.Done():
			return fmt.Errorf("submit %d: no answer within 60s", k)
		}
	}
	for k, a := range arrs {
		if !a.wait(120 * time.Second) {
			return fmt.Errorf("message %d: %d of %d devices decoded it within 120s", k, a.got.Load(), a.want)
		}
	}
	cpu1, err := cpuSeconds(pid)
	if err != nil {
		return err
	}
	r.self = selfCPUSeconds() - self0
	r.cpu = cpu1 - cpu0
	if n, wait1 := schedWait(pid); n > 0 {
		r.runqWait = wait1 - wait0
	}
	r.load = loadAvg()
	r.span = time.Duration(time.Now().UnixNano() - r.first)
	m1, err := srv.Scrape()
	if err != nil {
		return err
	}
	if flushes := m1.Sum("ding_socket_flush_frames_count") - m0.Sum("ding_socket_flush_frames_count"); flushes > 0 {
		r.frames = (m1.Sum("ding_socket_flush_frames_sum") - m0.Sum("ding_socket_flush_frames_sum")) / flushes
	}
	r.commits = m1.Sum("ding_engine_commit_duration_seconds_count") - m0.Sum("ding_engine_commit_duration_seconds_count")
	// Every device got the messages in the same order (each recipient's
	// stream is in commit order): the k-th to arrive is one message.
	for k, a := range arrs {
		_, last, _ := a.figures(0)
		r.last = max(r.last, last)
		id := a.ids[0]
		if i := slices.IndexFunc(a.ids, func(s string) bool { return s != id }); i >= 0 {
			return fmt.Errorf("the %d-th message device %d decoded is %s, device 0's is %s", k+1, i, a.ids[i], id)
		}
		sub, ok := byID[id]
		if !ok {
			return fmt.Errorf("devices decoded message %s, which was not sent", id)
		}
		r.toAll = append(r.toAll, time.Duration(last-r.subs[sub]))
	}
	r.profile, err = profiled()
	return err
}

// putGroup makes group id of users prefix0 .. prefix<n-1>, a few thousand
// members per request (the admin API limits a request's size).
func putGroup(srv *Server, id, prefix string, n int) error {
	const per = 4000
	names := func(lo, hi int) []string {
		out := make([]string, 0, hi-lo)
		for i := lo; i < hi; i++ {
			out = append(out, fmt.Sprintf("%s%d", prefix, i))
		}
		return out
	}
	first := min(per, n)
	if err := srv.call("PUT", "/v1/groups/"+id, map[string]any{"name": id, "members": names(0, first)}, nil); err != nil {
		return err
	}
	for lo := first; lo < n; lo += per {
		if err := srv.call("POST", "/v1/groups/"+id+"/members", map[string]any{"add": names(lo, min(lo+per, n))}, nil); err != nil {
			return err
		}
	}
	return nil
}

// broadcastTable renders one dingd's run beside the baseline's.
func broadcastTable(cfg BroadcastConfig, r *broadcastRun, c naiveRound) Table {
	deliveries := int64(cfg.Conns) * int64(cfg.Messages)
	win := time.Duration(r.last - r.first)
	var cLast int64
	var cToAll Latencies
	for _, a := range c.arrs {
		_, last, _ := a.figures(0)
		cLast = max(cLast, last)
		cToAll = append(cToAll, time.Duration(last-c.start))
	}
	cWin := time.Duration(cLast - c.start)
	dRate, cRate := rate(deliveries, win), rate(deliveries, cWin)
	met := " (NOT met)"
	if dRate >= 100_000 {
		met = " (met)"
	}
	us := func(cpu float64) float64 { return cpu / float64(deliveries) * 1e6 }
	qr := func(p float64) string { return ratio(float64(r.toAll.Quantile(p)), float64(cToAll.Quantile(p))) }
	rows := []Row{
		{"deliveries/s (first submit → last DELIVER decoded)", fmt.Sprintf("%.0f", dRate), fmt.Sprintf("%.0f ceiling", cRate), ratio(dRate, cRate), "≥ 100,000" + met},
		{"first submit → last DELIVER decoded", ms(win), ms(cWin), ratio(float64(win), float64(cWin)), ""},
		{fmt.Sprintf("per message, submit → all %d devices, p50", cfg.Conns), r.toAll.ms(0.5), cToAll.ms(0.5) + " from the loop start", qr(0.5), ""},
		{fmt.Sprintf("per message, submit → all %d devices, p99", cfg.Conns), r.toAll.ms(0.99), cToAll.ms(0.99) + " from the loop start", qr(0.99), ""},
		{fmt.Sprintf("first submit → last SUBMIT_ACK (%d pipelined)", cfg.Messages), ms(time.Duration(r.lastAck - r.first)), "", "", ""},
		{"server CPU per delivery", fmt.Sprintf("%.2f µs (%.2f s, %.2f cores)", us(r.cpu), r.cpu, r.cpu/r.span.Seconds()), fmt.Sprintf("%.2f µs writer", us(c.cpu)), ratio(us(r.cpu), us(c.cpu)), ""},
		{"clients' CPU per delivery (decoding every frame)", fmt.Sprintf("%.2f µs (%.2f s, %.2f cores)", us(r.self), r.self, r.self/r.span.Seconds()), fmt.Sprintf("%.2f µs", us(c.clientCPU)), ratio(us(r.self), us(c.clientCPU)), ""},
		{"DELIVER frames per socket write", fmt.Sprintf("%.2f", r.frames), "1.00", ratio(r.frames, 1), ""},
	}
	notes := []string{
		fmt.Sprintf("dingd: %.0f commit batches over the run; runnable but waiting for a CPU %s; CPU figures over %s (first submit → every device had every message). %d devices connected in %s. Machine load (/proc/loadavg) at the end: %s; a shared 2-core machine.",
			r.commits, ms(r.runqWait), ms(r.span), cfg.Conns, r.connected.Round(time.Millisecond), r.load),
		fmt.Sprintf("Per-message submit → all devices, ms, in arrival order: %s.", joinMS(r.toAll)),
	}
	if r.profile != "" {
		notes = append(notes, fmt.Sprintf("dingd CPU profile over the sends: %s (go tool pprof -top %s %s).", r.profile, cfg.Bin, r.profile))
	}
	return Table{Rows: rows, Notes: notes}
}

func joinMS(l Latencies) string {
	s := make([]string, len(l))
	for i, d := range l {
		s[i] = fmt.Sprintf("%.0f", float64(d)/1e6)
	}
	return strings.Join(s, ", ")
}
