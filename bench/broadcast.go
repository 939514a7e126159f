package bench

import (
	"bufio"
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

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/engine"
)

// naiveRound is one message the broadcaster sent, as the clients saw it.
type naiveRound struct {
	arr        *arrivals
	start, end int64   // Unix ns: the broadcaster's loop began and ended
	cpu        float64 // the broadcaster's CPU seconds in the loop
	clientCPU  float64 // the clients' (this process's) CPU seconds from "go" to the last receipt
}

// naiveResult is the baseline: the naive round, then the ceiling round.
type naiveResult struct {
	naive, ceiling naiveRound
	connected      time.Duration
}

// naiveBaseline starts the naive broadcaster (a child dingbench), connects
// cfg.Conns raw clients to it and has it send the announcement twice: the
// naive way, then the ceiling way (see NaiveBroadcast).
func naiveBaseline(cfg AnnounceConfig, id, text string) (naiveResult, error) {
	var res naiveResult
	cmd := exec.Command(cfg.Self, "announce-naive", "--conns", strconv.Itoa(cfg.Conns))
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
		return res, fmt.Errorf("start naive broadcaster %s: %w", cfg.Self, err)
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
	devs := make([]*annDevice, cfg.Conns)
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
	fmt.Fprintf(os.Stderr, "announce: baseline: %d connections to the naive broadcaster in %v\n", cfg.Conns, res.connected.Round(time.Millisecond))
	res.naive.arr, res.ceiling.arr = newArrivals(cfg.Conns), newArrivals(cfg.Conns)
	var rs readers
	for i, d := range devs {
		rs.start(d, i, nil, res.naive.arr, res.ceiling.arr)
	}
	var roundErr error
	for _, r := range []struct {
		mode  string
		round *naiveRound
	}{{"naive", &res.naive}, {"ceiling", &res.ceiling}} {
		time.Sleep(time.Second)
		self0 := selfCPUSeconds()
		fmt.Fprintf(in, "go %s %s %d\n", r.mode, id, len(text))
		f, err = line("done")
		if err != nil || len(f) != 3 {
			roundErr = fmt.Errorf("naive broadcaster %s result: %v", r.mode, err)
			break
		}
		r.round.start, _ = strconv.ParseInt(f[0], 10, 64)
		r.round.end, _ = strconv.ParseInt(f[1], 10, 64)
		r.round.cpu, _ = strconv.ParseFloat(f[2], 64)
		if !r.round.arr.wait(60 * time.Second) {
			roundErr = fmt.Errorf("naive broadcaster %s: %d of %d clients got it within 60s", r.mode, r.round.arr.got.Load(), cfg.Conns)
			break
		}
		r.round.clientCPU = selfCPUSeconds() - self0
	}
	closeAll(devs)
	return res, errors.Join(roundErr, rs.wait())
}

// NaiveBroadcast is the announce scenario's baseline, run as `dingbench
// announce-naive` in a child process: a plain TCP server on loopback that
// accepts conns connections, then sends one announcement to all of them
// each time it reads "go MODE ID TEXTBYTES" on in:
//
//   - naive: for each connection in turn, encode its DELIVER frame (its
//     own seq: the message's number, counting from 1) and write it with
//     one conn.Write, one write syscall;
//   - ceiling: encode the frame once and write it from GOMAXPROCS
//     goroutines, each taking a share of the connections: what one write
//     syscall per connection allows at best on this machine.
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
	for seq := uint64(1); sc.Scan(); seq++ {
		f := strings.Fields(sc.Text())
		if len(f) != 4 || f[0] != "go" {
			return fmt.Errorf("naive broadcaster: want \"go MODE ID TEXTBYTES\", got %q", sc.Text())
		}
		n, err := strconv.Atoi(f[3])
		if err != nil {
			return err
		}
		deliver := &pb.Deliver{
			Seq: seq, Id: f[2], From: "admin", To: []string{engine.AllStaff}, Kind: pb.Kind_ANNOUNCEMENT,
			Body: []byte(announceText(n)), CreatedMs: time.Now().UnixMilli(),
		}
		start, cpu0 := time.Now(), selfCPUSeconds()
		switch f[1] {
		case "naive":
			for _, c := range cs {
				if _, err := c.Write(wire.Encode(pb.FrameType_DELIVER, deliver)); err != nil {
					return fmt.Errorf("naive broadcaster: write: %w", err)
				}
			}
		case "ceiling":
			frame := wire.Encode(pb.FrameType_DELIVER, deliver)
			workers := runtime.GOMAXPROCS(0)
			errs := make(chan error, workers)
			for w := range workers {
				go func() {
					for i := w; i < len(cs); i += workers {
						if _, err := cs[i].Write(frame); err != nil {
							errs <- fmt.Errorf("naive broadcaster: write: %w", err)
							return
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
