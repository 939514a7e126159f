package bench

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/dingmq/ding/channels/socket/pb"
)

// The cluster scenario's announcement (issue 14: "announcement to
// 100,000 users across 3 nodes, time to last online device"), run the
// same way on one dingd and on the cluster of partitions, each after its
// closed loop: AnnUsers more users (n0 ...) are created through the
// admin API of the entry node (in a cluster, node a, which sends them on
// to the directory's owner), AnnConns of them come online with one raw
// device each (dialled at the entry node; in a cluster a device whose
// user another node serves is redirected there, NOT_OWNER, and dials the
// owner), and u0 announces to "all" through the entry node. The figures
// are from the announcement's 201 to each online device's DELIVER, and
// from the request to the last device.

// annFigures is one announcement to all as the load generator saw it.
type annFigures struct {
	users, conns int
	redirected   int           // devices that dialled the entry node and were sent to their owner
	publish      time.Duration // POST /v1/announcements → 201
	lat          Latencies     // 201 → each online device's DELIVER
	last         time.Duration // POST → the last online device's DELIVER
	cpu          float64       // the nodes' CPU seconds from the POST to the last online device's DELIVER
}

// annText is the announcement's size in bytes.
const annText = 256

// announceToAll runs the announcement through entry; all are the nodes
// (entry alone for one dingd), each of whose directories must hold the
// new users before the devices dial; existing is how many users the org
// has already (the announcement's audience is them and the new ones).
// profs, beside all (or nil), profile each node for 2 s from just before
// the request, to its Profile + ".ann".
func announceToAll(entry *Server, all []*Server, profs []Profiling, users, conns, existing int) (annFigures, error) {
	f := annFigures{users: users + existing, conns: conns}
	fmt.Fprintf(os.Stderr, "cluster: announcement: adding %d users\n", users)
	if err := entry.AddUsers("n", 0, users); err != nil {
		return f, fmt.Errorf("announcement: add users: %w", err)
	}
	if err := waitUser(all, fmt.Sprintf("n%d", users-1), 2*time.Minute); err != nil {
		return f, fmt.Errorf("announcement: %w", err)
	}
	devs := make([]*annDevice, conns)
	for i := range devs {
		devs[i] = &annDevice{user: fmt.Sprintf("n%d", i)}
	}
	var redirected atomic.Int64
	fmt.Fprintf(os.Stderr, "cluster: announcement: %d devices online\n", conns)
	err := connectAll(devs, func(d *annDevice) (net.Conn, error) {
		c, moved, err := dialFollowing(entry, d)
		if moved {
			redirected.Add(1)
		}
		return c, err
	})
	defer closeAll(devs)
	if err != nil {
		return f, fmt.Errorf("announcement: %w", err)
	}
	f.redirected = int(redirected.Load())
	got := newArrivals(conns)
	var rs readers
	for i, d := range devs {
		rs.start(d, i, nil, got)
	}
	var out struct {
		ID string `json:"id"`
	}
	var profiled []func() (string, error)
	for _, p := range profs {
		if p.Profile != "" {
			p.Profile += ".ann"
		}
		profiled = append(profiled, p.begin(2))
	}
	nodesCPU := func() (sum float64) {
		for _, s := range all {
			c, _ := cpuSeconds(s.cmd.Process.Pid)
			sum += c
		}
		return sum
	}
	cpu0 := nodesCPU()
	sent := time.Now().UnixNano()
	err = entry.call("POST", "/v1/announcements", map[string]any{"from": "u0", "to": "all", "text": announceText(annText)}, &out)
	ack := time.Now().UnixNano()
	if err != nil {
		return f, fmt.Errorf("announcement: publish: %w", err)
	}
	f.publish = time.Duration(ack - sent)
	if !got.wait(2 * time.Minute) {
		return f, fmt.Errorf("announcement %s: %d of %d online devices got it within 2 minutes", out.ID, got.got.Load(), conns)
	}
	f.cpu = nodesCPU() - cpu0
	for _, wait := range profiled {
		if file, err := wait(); err != nil {
			fmt.Fprintf(os.Stderr, "cluster: announcement: profile: %v\n", err)
		} else if file != "" {
			fmt.Fprintf(os.Stderr, "cluster: announcement: CPU profile over 2 s from the request in %s\n", file)
		}
	}
	lats, lastAt, _ := got.figures(ack)
	f.lat, f.last = lats, time.Duration(lastAt-sent)
	closeAll(devs)
	if err := rs.wait(); err != nil {
		return f, fmt.Errorf("announcement: %w", err)
	}
	return f, nil
}

// dialFollowing opens device d's raw connection at entry (dialDeviceAt,
// nothing to catch up); a node that does not serve its user answers
// NOT_OWNER naming the owner, which it dials instead (moved).
func dialFollowing(entry *Server, d *annDevice) (c net.Conn, moved bool, err error) {
	addr := entry.Sock
	for hop := 0; hop < 3; hop++ {
		c, err := dialDeviceAt(addr, entry, d, skipNone)
		var refused *refusedHello
		if !errors.As(err, &refused) || refused.e.Code != pb.Code_NOT_OWNER || refused.e.Redirect == "" {
			return c, moved, err
		}
		addr, moved = refused.e.Redirect, true
	}
	return nil, moved, fmt.Errorf("user %s: redirected 3 times", d.user)
}

// annRows are the announcement's rows of the cluster table, beside one
// dingd's.
func annRows(c, one annFigures) []Row {
	if c.users == 0 {
		return nil
	}
	ratio := ""
	if one.last > 0 {
		ratio = fmt.Sprintf("%.2f×", float64(c.last)/float64(one.last))
	}
	return []Row{
		{fmt.Sprintf("announcement to all (%d users; %d online devices, %d of them redirected to their owner): request → last online device", c.users, c.conns, c.redirected),
			ms(c.last), ms(one.last), ratio, ""},
		{"announcement: 201 → online device p50 / p99", c.lat.ms(0.5) + " / " + c.lat.ms(0.99), one.lat.ms(0.5) + " / " + one.lat.ms(0.99), "", ""},
		{"announcement: request → 201", ms(c.publish), ms(one.publish), "", ""},
		{"announcement: the nodes' CPU seconds from the request to the last online device", fmt.Sprintf("%.2f", c.cpu), fmt.Sprintf("%.2f", one.cpu), "", ""},
	}
}
