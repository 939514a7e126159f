package bench

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// naiveRound is one mode of the broadcaster's sends, as the clients saw
// it.
type naiveRound struct {
	arrs       []*arrivals // per message sent, in order
	start, end int64       // Unix ns: the broadcaster's loop began and ended
	cpu        float64     // the broadcaster's CPU seconds in the loop
	clientCPU  float64     // the clients' (this process's) CPU seconds from "go" to the last receipt
}

// naiveResult is the baseline: one round per mode asked for, in order.
type naiveResult struct {
	rounds    []naiveRound
	connected time.Duration
}

// naiveBaseline starts the naive broadcaster (the child dingbench at
// self), connects conns raw clients to it and has it send count copies of
// d (seq 1, 2, ...: d's Seq is ignored) to all of them in each of modes in
// turn (see NaiveBroadcast). The clients decode every frame and count the
// DELIVERs of d's kind.
func naiveBaseline(self string, conns int, d *pb.Deliver, count int, modes ...string) (naiveResult, error) {
	var res naiveResult
	d = proto.Clone(d).(*pb.Deliver)
	d.Seq = 0
	msg, err := proto.Marshal(d)
	if err != nil {
		return res, err
	}
	cmd := exec.Command(self, "announce-naive", "--conns", strconv.Itoa(conns))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return res, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start naive broadcaster %s: %w", self, err)
	}
	defer func() {
		in.Close()
		cmd.Wait()
	}()
	out := bufio.NewScanner(outPipe)
	line := func(prefix string) ([]string, error) {
		if !out.Scan() {
			return nil, fmt.Errorf("naive broadcaster ended before %q: %v", prefix, out.Err())
		}
		f := strings.Fields(out.Text())
		if len(f) == 0 || f[0] != prefix {
			return nil, fmt.Errorf("naive broadcaster said %q, want %q", out.Text(), prefix)
		}
		return f[1:], nil
	}
	f, err := line("listen")
	if err != nil || len(f) != 1 {
		return res, fmt.Errorf("naive broadcaster address: %v", err)
	}
	devs := make([]*annDevice, conns)
	for i := range devs {
		devs[i] = &annDevice{user: fmt.Sprintf("naive%d", i)}
	}
	t0 := time.Now()
	if err := connectAll(devs, func(*annDevice) (net.Conn, error) { return net.DialTimeout("tcp", f[0], 10*time.Second) }); err != nil {
		closeAll(devs)
		return res, err
	}
	if _, err := line("ready"); err != nil {
		closeAll(devs)
		return res, err
	}
	res.connected = time.Since(t0)
	fmt.Fprintf(os.Stderr, "baseline: %d connections to the naive broadcaster in %v\n", conns, res.connected.Round(time.Millisecond))
	res.rounds = make([]naiveRound, len(modes))
	var all []*arrivals
	for i := range res.rounds {
		for range count {
			res.rounds[i].arrs = append(res.rounds[i].arrs, newArrivals(conns))
		}
		all = append(all, res.rounds[i].arrs...)
	}
	rs := readers{kind: d.Kind}
	for i, dev := range devs {
		rs.start(dev, i, nil, all...)
	}
	var roundErr error
	for i, mode := range modes {
		r := &res.rounds[i]
		time.Sleep(time.Second)
		self0 := selfCPUSeconds()
		fmt.Fprintf(in, "go %s %d %s\n", mode, count, hex.EncodeToString(msg))
		f, err = line("done")
		if err != nil || len(f) != 3 {
			roundErr = fmt.Errorf("naive broadcaster %s result: %v", mode, err)
			break
		}
		r.start, _ = strconv.ParseInt(f[0], 10, 64)
		r.end, _ = strconv.ParseInt(f[1], 10, 64)
		r.cpu, _ = strconv.ParseFloat(f[2], 64)
		last := r.arrs[len(r.arrs)-1]
		if !last.wait(60 * time.Second) {
			roundErr = fmt.Errorf("naive broadcaster %s: %d of %d clients got its last message within 60s", mode, last.got.Load(), conns)
			break
		}
		r.clientCPU = selfCPUSeconds() - self0
	}
	closeAll(devs)
	return res, errors.Join(roundErr, rs.wait())
}

// NaiveBroadcast is the baseline of the announce and broadcast
// scenarios, run as `dingbench announce-naive` in a child process: a plain
// TCP server on loopback that accepts conns connections, then sends to all
// of them each time it reads "go MODE COUNT DELIVER" on in, where DELIVER
// is a hex-encoded DELIVER payload: COUNT copies of it, back to back, each
// with its own seq (counting from 1 over the whole run), in one of two
// modes:
//
//   - naive: for each message, for each connection in turn, encode its
//     DELIVER frame and write it with one conn.Write, one write syscall;
//   - ceiling: encode each message's frame once and write them from
//     GOMAXPROCS goroutines, each taking a share of the connections and
//     writing every message to them in turn: what one write syscall per
//     delivery allows at best on this machine.
//
// It reports on out "listen ADDR", "ready" once every connection is
// accepted, and "done START END CPU" (Unix ns around each send, and its
// CPU seconds in it); it returns when in ends.
func NaiveBroadcast(in io.Reader, out io.Writer, conns int) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Fprintf(out, "listen %s\n", ln.Addr())
	cs := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	for len(cs) < conns {
		c, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("naive broadcaster: accept: %w", err)
		}
		cs = append(cs, c)
	}
	fmt.Fprintln(out, "ready")
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	seq := uint64(0)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 || f[0] != "go" {
			return fmt.Errorf("naive broadcaster: want \"go MODE COUNT DELIVER\", got %q", sc.Text())
		}
		count, err := strconv.Atoi(f[2])
		if err != nil {
			return err
		}
		raw, err := hex.DecodeString(f[3])
		if err != nil {
			return err
		}
		msgs := make([]*pb.Deliver, count)
		for k := range msgs {
			msgs[k] = &pb.Deliver{}
			if err := proto.Unmarshal(raw, msgs[k]); err != nil {
				return fmt.Errorf("naive broadcaster: DELIVER: %w", err)
			}
			seq++
			msgs[k].Seq = seq
		}
		start, cpu0 := time.Now(), selfCPUSeconds()
		switch f[1] {
		case "naive":
			for _, m := range msgs {
				for _, c := range cs {
					if _, err := c.Write(wire.Encode(pb.FrameType_DELIVER, m)); err != nil {
						return fmt.Errorf("naive broadcaster: write: %w", err)
					}
				}
			}
		case "ceiling":
			frames := make([][]byte, len(msgs))
			for k, m := range msgs {
				frames[k] = wire.Encode(pb.FrameType_DELIVER, m)
			}
			workers := runtime.GOMAXPROCS(0)
			errs := make(chan error, workers)
			for w := range workers {
				go func() {
					for _, frame := range frames {
						for i := w; i < len(cs); i += workers {
							if _, err := cs[i].Write(frame); err != nil {
								errs <- fmt.Errorf("naive broadcaster: write: %w", err)
								return
							}
						}
					}
					errs <- nil
				}()
			}
			for range workers {
				err = errors.Join(err, <-errs)
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("naive broadcaster: unknown mode %q", f[1])
		}
		end, cpu := time.Now(), selfCPUSeconds()-cpu0
		fmt.Fprintf(out, "done %d %d %.6f\n", start.UnixNano(), end.UnixNano(), cpu)
	}
	return sc.Err()
}
