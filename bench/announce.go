package bench

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/engine"
)

// The announce scenario: an org of Users users, Conns of them online with
// one device each over loopback, and one announcement to "all".
//
// It runs the baselines (C below) first, then two phases against one
// dingd data directory (with --against, two more against a fresh data
// directory of the other dingd):
//
//	A  publish #1 with nothing else running: delivery times, fanout time,
//	   server CPU, and the bytes stored per recipient (dingd is stopped
//	   cleanly before the publish and after the fanout, and the store is
//	   measured each time, see storeFigures);
//	B  dingd restarted, the same devices reconnect (cursor = the seq they
//	   had), plus a pair of users exchanging 1:1 messages one at a time:
//	   1:1 latency without a fanout, then publish #2 and the 1:1 latency
//	   during its fanout (the fairness requirement), and #2's delivery
//	   times under that load;
//	C  the baselines: the naive broadcaster (broadcast.go; a child
//	   dingbench process, because one process cannot hold both ends of
//	   18,000 connections under a 20,000-file limit) with the same number
//	   of accepted connections from the same raw clients, which for one
//	   message encodes the DELIVER frame and calls conn.Write once per
//	   recipient, then writes one pre-encoded frame from every core (the
//	   ceiling of one write syscall per connection); and the fanout's keys
//	   written straight into a fresh Pebble (storesize.go).
//
// The devices are raw sockets (rawdevice.go). Times cross processes as
// Unix nanoseconds of the wall clock (one machine, one clock). Devices
// never ACK inside a timing window.

// AnnounceConfig sizes the announce scenario.
type AnnounceConfig struct {
	Bin, Tmp string
	// Against is a second dingd binary measured after Bin in the same
	// run, beside it in the table (dingbench --against); empty means none.
	Against string
	// Self is the dingbench binary, started as the naive broadcaster
	// (`dingbench announce-naive`, see NaiveBroadcast).
	Self string
	// Users in the org; zero means 100,000.
	Users int
	// Conns online devices, users u0 .. u<Conns-1>; zero means 18,000.
	Conns int
	// Text is the announcement's size in bytes; zero means 256.
	Text int
	// Quiet is how long the 1:1 pair runs before publish #2 (their latency
	// without a fanout); zero means 3s.
	Quiet time.Duration
	// Profiling: a CPU profile of dingd covering publish #1 (5 s from
	// just before it).
	Profiling
}

func (c *AnnounceConfig) setDefaults() {
	if c.Users == 0 {
		c.Users = 100_000
	}
	if c.Conns == 0 {
		c.Conns = 18_000
	}
	if c.Text == 0 {
		c.Text = 256
	}
	if c.Quiet == 0 {
		c.Quiet = 3 * time.Second
	}
}

// announceText returns n bytes of ASCII text.
func announceText(n int) string {
	const s = "All hands: the office moves to the new building on Monday; badges work from 8:00. "
	return strings.Repeat(s, n/len(s)+1)[:n]
}

// publication is one publish as the load generator saw it.
type publication struct {
	id         string
	sent, ack  int64 // Unix ns: request written, 201 read
	applied    int64 // Unix ns: the fanout counter first seen at the audience (0: never moved)
	fanoutDone int64 // Unix ns: every recipient's entry written (see publish)
	doneBy     string
	cpu        float64       // dingd CPU seconds from sent until every device had it
	selfCPU    float64       // dingbench CPU seconds over the same span
	cpuSpan    time.Duration // that span
	commitTime time.Duration // dingd's time in Batch.Commit (write and fsync) over that span
	commits    int           // commit batches over that span
	runqWait   time.Duration // dingd's threads' time runnable but waiting for a CPU over that span
	load       string        // /proc/loadavg at its end
}

// publish publishes the announcement and waits until every device has it
// and the fanout is done.
func (an *announcer) publish(a *arrivals) (publication, error) {
	var p publication
	entries0, err := an.srv.Metric("ding_engine_fanout_entries_total")
	if err != nil {
		return p, err
	}
	cpu0, err := cpuSeconds(an.srv.cmd.Process.Pid)
	if err != nil {
		return p, err
	}
	self0 := selfCPUSeconds()
	_, wait0 := schedWait(an.srv.cmd.Process.Pid)
	csum0, cn0, err := an.commitTotals()
	if err != nil {
		return p, err
	}
	var out struct {
		ID string `json:"id"`
	}
	p.sent = time.Now().UnixNano()
	err = an.srv.call("POST", "/v1/announcements", map[string]any{"to": "all", "text": an.text}, &out) // from: the admin
	p.ack = time.Now().UnixNano()
	if err != nil {
		return p, fmt.Errorf("publish: %w", err)
	}
	p.id = out.ID
	// Poll the fanout counter while the devices receive: entries are
	// counted as each chunk is applied, just before its commit. Every poll
	// costs dingd a /metrics render, so not too often.
	reached := make(chan int64, 1)
	stop := make(chan struct{})
	go func() {
		for {
			v, err := an.srv.Metric("ding_engine_fanout_entries_total")
			if err == nil && v-entries0 >= float64(an.cfg.Users) {
				reached <- time.Now().UnixNano()
				return
			}
			select {
			case <-stop:
				reached <- 0
				return
			case <-time.After(fanoutPoll):
			}
		}
	}()
	ok := a.wait(60 * time.Second)
	cpu1, err := cpuSeconds(an.srv.cmd.Process.Pid)
	if err != nil {
		close(stop)
		return p, err
	}
	p.cpu, p.selfCPU, p.cpuSpan = cpu1-cpu0, selfCPUSeconds()-self0, time.Duration(time.Now().UnixNano()-p.sent)
	if n, wait1 := schedWait(an.srv.cmd.Process.Pid); n > 0 {
		p.runqWait = wait1 - wait0
	}
	p.load = loadAvg()
	csum1, cn1, err := an.commitTotals()
	if err != nil {
		close(stop)
		return p, err
	}
	p.commitTime, p.commits = time.Duration((csum1-csum0)*1e9), int(cn1-cn0)
	if !ok {
		close(stop)
		return p, fmt.Errorf("publish %s: %d of %d devices got it within 60s", p.id, a.got.Load(), a.want)
	}
	_, last, _ := a.figures(p.ack)
	// Done is when every recipient's entry is durable: the counter reached
	// the audience (applied) and, since online devices sit in every chunk
	// up to the last, the last device got its push (committed). Small orgs
	// are written before the ack and never touch the counter: then ask the
	// stats API.
	select {
	case t := <-reached:
		p.applied, p.fanoutDone, p.doneBy = t, max(t, last), "the fanout counter and the last delivery"
	case <-time.After(500 * time.Millisecond):
		close(stop)
		if t := <-reached; t != 0 {
			p.applied, p.fanoutDone, p.doneBy = t, max(t, last), "the fanout counter and the last delivery"
			return p, nil
		}
		for {
			var st struct {
				Pending int `json:"pending"`
			}
			if err := an.srv.call("GET", "/v1/announcements/"+p.id+"/stats", nil, &st); err != nil {
				return p, err
			}
			if st.Pending == 0 {
				p.fanoutDone, p.doneBy = max(p.ack, last), "the last delivery (stats pending 0: the fanout was written before the ack)"
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return p, nil
}

// commitTotals returns dingd's total time in commits (write and fsync)
// and the number of commit batches so far.
func (an *announcer) commitTotals() (seconds, batches float64, err error) {
	seconds, err1 := an.srv.Metric("ding_engine_commit_duration_seconds_sum")
	batches, err2 := an.srv.Metric("ding_engine_commit_duration_seconds_count")
	return seconds, batches, errors.Join(err1, err2)
}

// fanoutPoll is how often publish reads the fanout counter.
const fanoutPoll = 25 * time.Millisecond

type announcer struct {
	cfg  AnnounceConfig
	srv  *Server
	text string
	devs []*annDevice
}

// Announce runs the announce scenario: the baselines first, then the
// phases against Bin and, with Against, against that dingd.
func Announce(cfg AnnounceConfig) (Table, error) {
	cfg.setDefaults()
	if cfg.Users < cfg.Conns+2 {
		return Table{}, fmt.Errorf("announce: %d users cannot hold %d devices and the 1:1 pair", cfg.Users, cfg.Conns)
	}
	text := announceText(cfg.Text)
	// The naive broadcaster sends what dingd would: a DELIVER of the same
	// size (an id of the same length; the real one is not known yet).
	naive, err := naiveBaseline(cfg.Self, cfg.Conns, &pb.Deliver{
		Id: stampID(time.Now()), From: "admin", To: []string{engine.AllStaff}, Kind: pb.Kind_ANNOUNCEMENT,
		Body: []byte(text), CreatedMs: time.Now().UnixMilli(),
	}, 1, "naive", "ceiling")
	if err != nil {
		return Table{}, err
	}
	storeRate, err := pebbleFanout(cfg.Tmp, cfg.Users)
	if err != nil {
		return Table{}, err
	}
	return Compare(cfg.Bin, cfg.Against, "the baselines", func(bin string) (Table, error) {
		c := cfg
		if bin != cfg.Bin {
			c.Bin, c.Profiling = bin, cfg.forAgainst()
		}
		return announceOnce(c, text, naive, storeRate)
	})
}

// stampID is a message id's text form for a message made at t (what the
// baselines put in their frames, for the size).
func stampID(t time.Time) string {
	var id engine.ID
	binary.BigEndian.PutUint64(id[:8], uint64(t.UnixMilli())<<16)
	return id.String()
}

// announceOnce runs phases A and B against a dingd from cfg.Bin.
func announceOnce(cfg AnnounceConfig, text string, naive naiveResult, storeRate float64) (Table, error) {
	srv, err := newServer(cfg.Bin, cfg.Tmp)
	if err != nil {
		return Table{}, err
	}
	srv.args = cfg.dingdArgs()
	if err := srv.start(); err != nil {
		srv.Stop()
		return Table{}, err
	}
	defer srv.Stop()
	an := &announcer{cfg: cfg, srv: srv, text: text}
	t0 := time.Now()
	if err := srv.AddUsers("u", 0, cfg.Users); err != nil {
		return Table{}, err
	}
	fmt.Fprintf(os.Stderr, "announce: %s: %d users created in %v\n", cfg.Bin, cfg.Users, time.Since(t0).Round(time.Millisecond))
	an.devs = make([]*annDevice, cfg.Conns)
	for i := range an.devs {
		an.devs[i] = &annDevice{user: fmt.Sprintf("u%d", i)}
	}

	a, err := an.phaseA()
	if err != nil {
		return Table{}, err
	}
	b, err := an.phaseB()
	if err != nil {
		return Table{}, err
	}
	return an.table(a, b, naive, storeRate), nil
}

// phaseAResult: publish #1 alone, and the store before and after it.
type phaseAResult struct {
	pub       publication
	arr       *arrivals
	connected time.Duration
	store     storeFigures
	profile   string
}

func (an *announcer) phaseA() (phaseAResult, error) {
	var res phaseAResult
	srv := an.srv
	// The store before: stop cleanly, flush, measure, start again.
	if _, err := srv.Kill(syscall.SIGTERM); err != nil { // a clean stop: drain, close the store
		return res, err
	}
	before, err := measureStore(srv.Data, nil)
	if err != nil {
		return res, err
	}
	if _, _, err := srv.Restart(); err != nil {
		return res, err
	}
	t0 := time.Now()
	if err := connectAll(an.devs, func(d *annDevice) (net.Conn, error) { return dialDevice(srv, d, 0) }); err != nil {
		closeAll(an.devs)
		return res, err
	}
	res.connected = time.Since(t0)
	fmt.Fprintf(os.Stderr, "announce: phase A: %d devices connected in %v\n", len(an.devs), res.connected.Round(time.Millisecond))
	res.arr = newArrivals(len(an.devs))
	var rs readers
	for i, d := range an.devs {
		rs.start(d, i, nil, res.arr)
	}
	time.Sleep(time.Second) // let the handshakes' after-work settle
	profiled := an.cfg.begin(5)
	res.pub, err = an.publish(res.arr)
	var perr error
	res.profile, perr = profiled()
	err = cmp.Or(err, perr)
	if err != nil {
		closeAll(an.devs)
		rs.wait()
		return res, err
	}
	// The store after: stop cleanly (the server closes the devices).
	if _, err := srv.Kill(syscall.SIGTERM); err != nil { // a clean stop: drain, close the store
		return res, err
	}
	closeAll(an.devs)
	if err := rs.wait(); err != nil {
		return res, err
	}
	for i, id := range res.arr.ids {
		if id != res.pub.id {
			return res, fmt.Errorf("device %s got announcement %s, published %s", an.devs[i].user, id, res.pub.id)
		}
	}
	id, err := engine.ParseID(res.pub.id)
	if err != nil {
		return res, err
	}
	after, err := measureStore(srv.Data, &id)
	if err != nil {
		return res, err
	}
	res.store = storeFigures{before: before, after: after}
	return res, nil
}

// phaseBResult: 1:1 latency without and during publish #2's fanout.
type phaseBResult struct {
	pub           publication
	arr           *arrivals
	quiet, during Latencies
	delivered     int // stats "delivered" of #2 after every device acked
	total         int
}

func (an *announcer) phaseB() (phaseBResult, error) {
	var res phaseBResult
	srv := an.srv
	if _, _, err := srv.Restart(); err != nil {
		return res, err
	}
	t0 := time.Now()
	if err := connectAll(an.devs, func(d *annDevice) (net.Conn, error) { return dialDevice(srv, d, d.last.Load()) }); err != nil {
		closeAll(an.devs)
		return res, err
	}
	n := len(an.devs)
	sender := &annDevice{user: fmt.Sprintf("u%d", n)}
	receiver := &annDevice{user: fmt.Sprintf("u%d", n+1)}
	all := append(an.devs[:n:n], sender, receiver)
	if err := connectAll([]*annDevice{sender, receiver}, func(d *annDevice) (net.Conn, error) { return dialDevice(srv, d, skipNone) }); err != nil {
		closeAll(all)
		return res, err
	}
	fmt.Fprintf(os.Stderr, "announce: phase B: %d devices reconnected (cursor = their last seq) and the 1:1 pair in %v\n", n, time.Since(t0).Round(time.Millisecond))
	res.arr = newArrivals(n + 2)
	p := &pair{acks: make(chan error, 1)}
	var rs readers
	for i, d := range an.devs {
		rs.start(d, i, nil, res.arr)
	}
	rs.start(sender, n, p, res.arr)
	rs.start(receiver, n+1, p, res.arr)
	time.Sleep(time.Second)

	stop := make(chan struct{})
	sent := make(chan error, 1)
	go func() { sent <- sendPair(sender.conn, receiver.user, p, stop) }()
	quietFrom := time.Now().Add(200 * time.Millisecond).UnixNano() // past the first submits
	time.Sleep(an.cfg.Quiet)
	var err error
	res.pub, err = an.publish(res.arr)
	time.Sleep(100 * time.Millisecond)
	close(stop)
	if serr := <-sent; serr != nil && err == nil {
		err = serr
	}
	if err != nil {
		closeAll(all)
		rs.wait()
		return res, err
	}
	res.quiet = p.window(quietFrom, res.pub.sent)
	res.during = p.window(res.pub.sent, res.pub.fanoutDone)

	// Every device acks what it has; the stats must then count each one
	// delivered (an end-to-end check, outside the timing windows).
	for _, d := range all {
		if _, err := d.conn.Write(wire.Encode(pb.FrameType_ACK, &pb.Ack{Seq: d.last.Load()})); err != nil {
			closeAll(all)
			rs.wait()
			return res, fmt.Errorf("ack %s: %w", d.user, err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var st struct {
			Total, Delivered int
		}
		if err := srv.call("GET", "/v1/announcements/"+res.pub.id+"/stats", nil, &st); err != nil {
			closeAll(all)
			rs.wait()
			return res, err
		}
		res.delivered, res.total = st.Delivered, st.Total
		if st.Delivered >= len(all) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	closeAll(all)
	if err := rs.wait(); err != nil {
		return res, err
	}
	return res, nil
}

// sendPair submits 1:1 messages to user one at a time until stop, each
// body starting with its submit time.
func sendPair(c net.Conn, to string, p *pair, stop chan struct{}) error {
	body := make([]byte, 64)
	for ref := uint64(1); ; ref++ {
		select {
		case <-stop:
			return nil
		default:
		}
		binary.BigEndian.PutUint64(body, uint64(time.Now().UnixNano()))
		f := wire.Encode(pb.FrameType_SUBMIT, &pb.Submit{Ref: ref, To: []string{to}, Kind: pb.Kind_TEXT, Body: body})
		if _, err := c.Write(f); err != nil {
			return fmt.Errorf("1:1 submit: %w", err)
		}
		select {
		case err := <-p.acks:
			if err != nil {
				return err
			}
		case <-time.After(30 * time.Second):
			return errors.New("1:1 submit: no SUBMIT_ACK within 30s")
		}
	}
}

// chunkCadence says when each fanout chunk's online devices got
// publish #1, from the ack: the audience of "all" is the sorted user ids,
// written fanoutChunk at a time, so user u<i>'s chunk is its rank in that
// order over fanoutChunk.
func chunkCadence(cfg AnnounceConfig, a phaseAResult) string {
	names := make([]string, cfg.Users)
	for i := range names {
		names[i] = "u" + strconv.Itoa(i)
	}
	slices.Sort(names)
	rank := make(map[string]int, len(names))
	for i, u := range names {
		rank[u] = i
	}
	chunks := (cfg.Users + fanoutChunk - 1) / fanoutChunk
	first, last := make([]int64, chunks), make([]int64, chunks)
	for i, t := range a.arr.at {
		if t == 0 {
			continue
		}
		c := rank["u"+strconv.Itoa(i)] / fanoutChunk
		if first[c] == 0 || t < first[c] {
			first[c] = t
		}
		last[c] = max(last[c], t)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Per fanout chunk of %d recipients (sorted ids), its online devices' first–last delivery after the ack, ms:", fanoutChunk)
	for c := range chunks {
		if last[c] == 0 {
			fmt.Fprintf(&b, " [%d] none;", c)
			continue
		}
		fmt.Fprintf(&b, " [%d] %.0f–%.0f;", c, float64(first[c]-a.pub.ack)/1e6, float64(last[c]-a.pub.ack)/1e6)
	}
	return strings.TrimSuffix(b.String(), ";") + "."
}

func appliedAt(p publication) string {
	if p.applied == 0 {
		return "with the ack (one batch)"
	}
	return ms(time.Duration(p.applied - p.ack))
}

// table renders the scenario's result.
func (an *announcer) table(a phaseAResult, b phaseBResult, nv naiveResult, storeRate float64) Table {
	cfg := an.cfg
	n := int64(cfg.Conns)
	dLats, dLast, _ := a.arr.figures(a.pub.ack)
	naive, ceiling := nv.rounds[0], nv.rounds[1]
	nLats, nLast, _ := naive.arrs[0].figures(naive.start)
	_, cLast, _ := ceiling.arrs[0].figures(ceiling.start)
	dWin := time.Duration(dLast - a.pub.ack)
	nWin := time.Duration(nLast - naive.start)
	cWin := time.Duration(cLast - ceiling.start)
	early := 0
	for _, l := range dLats {
		if l < 0 {
			early++
		}
	}
	fan := time.Duration(a.pub.fanoutDone - a.pub.ack)
	fanRate := rate(int64(cfg.Users), fan)
	_, bLast, _ := b.arr.figures(b.pub.ack)
	bWin := time.Duration(bLast - b.pub.ack)

	st := a.store
	users := float64(cfg.Users)
	per := func(after, before int64) float64 { return float64(after-before) / users }
	sstPer := per(st.after.sst, st.before.sst)
	keyPer := float64(st.after.entryBytes+st.after.rcptBytes+st.after.msgBytes) / users
	copyPer := float64(st.after.msgBytes + st.after.entryBytes/max(st.after.entries, 1) + st.after.rcptBytes/max(st.after.receipts, 1))
	dRate, nRate, cRate := rate(n, dWin), rate(n, nWin), rate(n, cWin)
	qr := func(x, y Latencies, p float64) string { return ratio(float64(x.Quantile(p)), float64(y.Quantile(p))) }
	rows := []Row{
		{"publish ack → last online device's DELIVER", ms(dWin), ms(nWin) + " naive: loop start → last receipt", ratio(float64(dWin), float64(nWin)), "≤ 1 s" + met(dWin <= time.Second)},
		{"… p50 across devices", dLats.ms(0.5), nLats.ms(0.5), qr(dLats, nLats, 0.5), ""},
		{"… p99 across devices", dLats.ms(0.99), nLats.ms(0.99), qr(dLats, nLats, 0.99), ""},
		{"deliveries/s to online devices", fmt.Sprintf("%.0f", dRate), fmt.Sprintf("%.0f naive", nRate), ratio(dRate, nRate), "≥ 250,000" + met(dRate >= 250_000)},
		{"… against the write-syscall ceiling", fmt.Sprintf("%.0f", dRate), fmt.Sprintf("%.0f ceiling (%s)", cRate, ms(cWin)), ratio(dRate, cRate), ""},
		{"publish request → ack", ms(time.Duration(a.pub.ack - a.pub.sent)), "", "", ""},
		{fmt.Sprintf("whole fanout: %d stream entries + receipts, ack → done", cfg.Users), ms(fan), ms(time.Duration(float64(cfg.Users) / storeRate * 1e9)), ratio(float64(fan), float64(cfg.Users)/storeRate*1e9), ""},
		{"… recipients written/s", fmt.Sprintf("%.0f", fanRate), fmt.Sprintf("%.0f store only", storeRate), ratio(fanRate, storeRate), ""},
		{fmt.Sprintf("… every entry applied (fanout counter, read every %v)", fanoutPoll), appliedAt(a.pub), "", "", ""},
		{"… dingd time in commits (write + fsync)", fmt.Sprintf("%s in %d batches", ms(a.pub.commitTime), a.pub.commits), "", "", ""},
		{"dingd CPU, publish request → last device", fmt.Sprintf("%.2f s in %s (%.2f cores); runnable but waiting for a CPU %s", a.pub.cpu, ms(a.pub.cpuSpan), a.pub.cpu/a.pub.cpuSpan.Seconds(), ms(a.pub.runqWait)), "", "", ""},
		{"stored bytes per recipient (sstables, clean stop + flush, settled)", fmt.Sprintf("%.1f B", sstPer), fmt.Sprintf("%.1f B a copy per recipient (key+value)", copyPer), ratio(sstPer, copyPer), "≤ 64 B" + met(sstPer <= 64)},
		{"… data dir growth right after the clean stop (as dingd left it)", fmt.Sprintf("%.1f B", per(st.after.raw, st.before.flushed)), "", "", ""},
		{"… data dir growth after flush", fmt.Sprintf("%.1f B", per(st.after.flushed, st.before.flushed)), "", "", ""},
		{"… logical key+value bytes (entry + receipt + body/recipients)", fmt.Sprintf("%.1f B", keyPer), fmt.Sprintf("%.1f B", copyPer), ratio(keyPer, copyPer), ""},
		{"1:1 submit → delivered p50, during fanout #2", b.during.ms(0.5), b.quiet.ms(0.5) + " without fanout", qr(b.during, b.quiet, 0.5), ""},
		{"1:1 submit → delivered p99, during fanout #2", b.during.ms(0.99), b.quiet.ms(0.99) + " without fanout", qr(b.during, b.quiet, 0.99), ""},
		{"1:1 max, during fanout #2", b.during.ms(1), b.quiet.ms(1) + " without fanout", qr(b.during, b.quiet, 1), ""},
		{"#2 (1:1 pair running) ack → last online device", ms(bWin), ms(nWin) + " naive", ratio(float64(bWin), float64(nWin)), "≤ 1 s" + met(bWin <= time.Second)},
	}
	notes := []string{
		fmt.Sprintf("Deliveries that reached a device before the publish ack was read: %d of %d (negative latencies). Publish request → last device: %s. The naive loop itself (encode + write for %d connections) took %s; the ceiling's writes (%d goroutines) %s. Fanout done measured by: %s.",
			early, n, ms(time.Duration(dLast-a.pub.sent)), n, ms(time.Duration(naive.end-naive.start)), runtime.GOMAXPROCS(0), ms(time.Duration(ceiling.end-ceiling.start)), a.pub.doneBy),
		fmt.Sprintf("Machine load (/proc/loadavg) at the end of publish #1: %s; of publish #2: %s; this is a shared 2-core machine, and other processes ran during the run.", a.pub.load, b.pub.load),
		fmt.Sprintf("CPU per delivery to an online device, sender (dingd: all its work for the publish, the fanout to %d recipients included) / receiving clients: Ding %.1f / %.1f µs; naive %.1f / %.1f µs; ceiling %.1f / %.1f µs. Connecting %d devices took %s (phase A), %d naive connections %s.",
			cfg.Users, a.pub.cpu/float64(n)*1e6, a.pub.selfCPU/float64(n)*1e6, naive.cpu/float64(n)*1e6, naive.clientCPU/float64(n)*1e6,
			ceiling.cpu/float64(n)*1e6, ceiling.clientCPU/float64(n)*1e6, n, a.connected.Round(time.Millisecond), n, nv.connected.Round(time.Millisecond)),
		fmt.Sprintf("Store (announcement #1, nothing else written): %d stream entries = %d B key+value (%.1f B each), %d receipts = %d B (%.1f B each), message record %d B once; audience/job keys left: %d. Data dir when dingd started for the publish (flushed) %d B; right after the clean stop %d B (WAL files %d B); flushed %d B; sstables %d → %d B (%d → %d tables).",
			st.after.entries, st.after.entryBytes, float64(st.after.entryBytes)/float64(max(st.after.entries, 1)),
			st.after.receipts, st.after.rcptBytes, float64(st.after.rcptBytes)/float64(max(st.after.receipts, 1)), st.after.msgBytes, st.after.audience,
			st.before.flushed, st.after.raw, st.after.walFiles, st.after.flushed, st.before.sst, st.after.sst, st.before.tables, st.after.tables),
		fmt.Sprintf("1:1 samples: %d without fanout (%s), %d during fanout #2 (publish → done, %s; dingd time in commits %s in %d batches). Announcement #2 stats after every device acked: delivered %d of %d (online %d).",
			len(b.quiet), cfg.Quiet, len(b.during), ms(time.Duration(b.pub.fanoutDone-b.pub.sent)), ms(b.pub.commitTime), b.pub.commits, b.delivered, b.total, cfg.Conns+2),
	}
	notes = append(notes, chunkCadence(cfg, a))
	if a.profile != "" {
		notes = append(notes, fmt.Sprintf("dingd CPU profile over publish #1: %s (go tool pprof -top %s %s).", a.profile, cfg.Bin, a.profile))
	}
	return Table{
		Scenario: "announce",
		Setup: fmt.Sprintf("An org of %d users, %d of them online with one device each over loopback (raw frames, load generator in its own process); one %d-byte announcement to \"all\" through the admin API. "+
			"Times are from the publish ack to each device's DELIVER. Stored bytes: the store's growth from before the publish to after the fanout, dingd stopped cleanly (SIGTERM) both times, divided by %d recipients. "+
			"1:1: two more online users, one 64-byte message at a time, during a second announcement. "+
			"Baselines: naive, a plain TCP server in a child process with %d accepted loopback connections from the same raw clients, encoding the DELIVER and calling conn.Write once per recipient, timed from its loop start to the last client's receipt; "+
			"ceiling, the same server writing one pre-encoded frame from %d goroutines; store only, the fanout's keys written into a fresh Pebble in synced batches of %d; "+
			"a copy per recipient, what storing the message in each inbox would take (the message record plus an entry and a receipt).",
			cfg.Users, cfg.Conns, cfg.Text, cfg.Users, cfg.Conns, runtime.GOMAXPROCS(0), fanoutChunk),
		Rows:  rows,
		Notes: notes,
	}
}
