// Package bench runs Ding's whole-system scenarios for cmd/dingbench: it
// starts a real dingd process on loopback with a fresh data directory,
// drives it with real clients, and measures each figure beside a baseline
// taken in the same run.
package bench

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dingmq/ding/channels/auth"
)

// Server is a dingd child process.
type Server struct {
	Data, Sock, HTTP string
	// TLSSock is the socket port over TLS (StartServerTLS), and TLS the
	// client configuration that trusts its certificate; its HTTP port is
	// then HTTPS.
	TLSSock string
	TLS     *tls.Config
	// WSSock is the WebSocket gateway's listener (StartServerWS).
	WSSock    string
	bin       string
	args, env []string // extra flags and environment, kept for Restart
	cmd       *exec.Cmd
	admin     string
	keys      *auth.Keys
	log       *os.File
}

// StartServer starts dingd (the binary at bin) on loopback in a new
// temporary data directory under tmp, with users u0 .. u<users-1>. args
// are extra dingd flags ("--burn-after", "5s"), kept for Restart.
func StartServer(bin, tmp string, users int, args ...string) (*Server, error) {
	return startServer(bin, tmp, users, false, false, args)
}

// StartServerTLS is StartServer with TLS: a certificate made for this run
// (tls.go), the HTTP port serving HTTPS and the socket protocol over TLS
// on TLSSock beside the plain socket port.
func StartServerTLS(bin, tmp string, users int, args ...string) (*Server, error) {
	return startServer(bin, tmp, users, true, false, args)
}

// StartServerWS is StartServer with the WebSocket gateway's own
// listener (dingd --ws) on WSSock beside the plain socket port.
func StartServerWS(bin, tmp string, users int, args ...string) (*Server, error) {
	return startServer(bin, tmp, users, false, true, args)
}

// StartServerWSS is StartServerTLS with the WebSocket listener, wss
// (dingd --ws with --tls-cert), on WSSock instead of TLSSock.
func StartServerWSS(bin, tmp string, users int, args ...string) (*Server, error) {
	return startServer(bin, tmp, users, true, true, args)
}

// startServer is the StartServer* family: withTLS makes a certificate for
// this run and serves HTTPS, with the socket protocol over TLS on
// TLSSock (or, with ws, wss on WSSock); ws adds dingd --ws on WSSock.
func startServer(bin, tmp string, users int, withTLS, ws bool, args []string) (*Server, error) {
	s, err := newServer(bin, tmp)
	if err != nil {
		return nil, err
	}
	var extra []string
	if withTLS {
		certFile, keyFile, cfg, err := makeCert(s.Data)
		if err != nil {
			s.Stop()
			return nil, err
		}
		s.TLS = cfg
		extra = append(extra, "--tls-cert", certFile, "--tls-key", keyFile)
		if !ws {
			s.TLSSock = freeAddr()
			extra = append(extra, "--tls-listen", s.TLSSock)
		}
	}
	if ws {
		s.WSSock = freeAddr()
		extra = append(extra, "--ws", s.WSSock)
	}
	if err := s.startWith(users, append(extra, args...)); err != nil {
		return nil, err
	}
	return s, nil
}

// startWith starts s with args and creates its users; on an error s is
// stopped.
func (s *Server) startWith(users int, args []string) error {
	s.args = args
	if err := s.start(); err != nil {
		s.Stop()
		return err
	}
	if err := s.AddUsers("u", 0, users); err != nil {
		s.Stop()
		return err
	}
	return nil
}

// url is path on dingd's HTTP port (HTTPS with TLS).
func (s *Server) url(path string) string {
	if s.TLS != nil {
		return "https://" + s.HTTP + path
	}
	return "http://" + s.HTTP + path
}

// web is the HTTP client for dingd's HTTP port.
func (s *Server) web() *http.Client {
	if s.TLS == nil {
		return http.DefaultClient
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: s.TLS}}
}

// newServer makes a data directory under tmp and picks loopback addresses
// for a dingd that is not started yet: set args and env, then call start.
func newServer(bin, tmp string) (*Server, error) {
	data, err := os.MkdirTemp(tmp, "dingbench-data-")
	if err != nil {
		return nil, err
	}
	s := &Server{Data: data, Sock: freeAddr(), HTTP: freeAddr(), bin: bin, env: limitsOff()}
	if s.log, err = os.Create(filepath.Join(data, "dingd.log")); err != nil {
		os.RemoveAll(data)
		return nil, err
	}
	return s, nil
}

// limitsOff is the environment that turns dingd's rate limits off
// (abuse protection: cmd/dingd's --rate-* and --auth-* settings). The
// scenarios act as few users and one admin at machine speed (resume fills
// a stream from one user, escalate sends a thousand DINGs from one);
// ingest's rate per user (about 20/s on loopback) would be under the
// default anyway. The environment, not flags: a --against dingd built
// before the limits ignores it.
func limitsOff() []string {
	return []string{"DING_RATE_USER_SUBMITS=0", "DING_RATE_USER_DINGS=0", "DING_RATE_ADMIN_REQUESTS=0",
		"DING_RATE_TOKEN_MINTS=0", "DING_AUTH_FAILURES_PER_SOURCE=0"}
}

// start runs dingd for the first time and reads the admin token and the
// client token keys it wrote.
func (s *Server) start() error {
	if _, _, err := s.exec(); err != nil {
		return err
	}
	tok, err := os.ReadFile(filepath.Join(s.Data, "admin.token"))
	if err != nil {
		return err
	}
	s.admin = strings.TrimSpace(string(tok))
	s.keys, err = auth.LoadOrCreate(s.Data)
	return err
}

// exec starts the dingd process on s.Data and waits until /readyz answers
// 200 (polled every 5 ms). It returns when the process was started and
// when it was first seen ready.
func (s *Server) exec() (started, ready time.Time, err error) {
	if started, err = s.launch(); err != nil {
		return started, time.Time{}, err
	}
	deadline := started.Add(30 * time.Second)
	for !s.Ready() {
		if time.Now().After(deadline) {
			return started, time.Time{}, fmt.Errorf("dingd not ready after 30s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return started, time.Now(), nil
}

// launch starts the dingd process on s.Data without waiting for it.
func (s *Server) launch() (time.Time, error) {
	args := append([]string{"--data", s.Data, "--listen", s.Sock, "--http", s.HTTP, "--log-level", "warn"}, s.args...)
	s.cmd = exec.Command(s.bin, args...)
	s.cmd.Stderr = s.log
	if s.env != nil {
		s.cmd.Env = append(os.Environ(), s.env...)
	}
	started := time.Now()
	if err := s.cmd.Start(); err != nil {
		return started, fmt.Errorf("start %s: %w", s.bin, err)
	}
	return started, nil
}

// Ready reports whether dingd's /readyz answers 200 (in cluster mode:
// whether it is the member serving).
func (s *Server) Ready() bool {
	resp, err := s.web().Get(s.url("/readyz"))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

// Kill sends dingd sig (os.Kill for a crash, syscall.SIGTERM for a clean
// stop) and waits for the process to end. It returns when it ended; the
// data directory stays for Restart.
func (s *Server) Kill(sig os.Signal) (time.Time, error) {
	if err := s.cmd.Process.Signal(sig); err != nil {
		return time.Time{}, err
	}
	s.cmd.Wait() // the exit status of a killed process is an error; expected
	return time.Now(), nil
}

// Restart starts dingd again on the same data directory and addresses,
// after Kill. It returns when the process was started and when /readyz
// first answered 200.
func (s *Server) Restart() (started, ready time.Time, err error) { return s.exec() }

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Stop terminates dingd and removes its data directory.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			s.cmd.Process.Kill()
			<-done
		}
	}
	if s.log != nil {
		s.log.Close()
	}
	os.RemoveAll(s.Data)
}

// RSS returns dingd's resident set size in bytes.
func (s *Server) RSS() (int64, error) { return rssOf(s.cmd.Process.Pid) }

func rssOf(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// Token mints a client token (the bench owns the data dir and its secret).
func (s *Server) Token(user, device string) string {
	tok, err := s.keys.MintClient(user, device, 24*time.Hour)
	if err != nil {
		panic(err)
	}
	return tok
}

// AddUsers creates users u<from> .. u<to-1> through the batch API.
func (s *Server) AddUsers(prefix string, from, to int) error {
	for lo := from; lo < to; lo += 1000 {
		hi := min(lo+1000, to)
		users := make([]map[string]string, 0, hi-lo)
		for i := lo; i < hi; i++ {
			id := fmt.Sprintf("%s%d", prefix, i)
			users = append(users, map[string]string{"id": id, "name": id})
		}
		if err := s.call("POST", "/v1/users/batch", map[string]any{"users": users}, nil); err != nil {
			return err
		}
	}
	return nil
}

// waitUser waits up to d until every server's directory holds user (in
// a cluster, the others' copies follow the directory's owner: polled).
// Users added in one go are applied in order, so the last one stands
// for them all.
func waitUser(servers []*Server, user string, d time.Duration) error {
	for _, s := range servers {
		deadline := time.Now().Add(d)
		for s.call("GET", "/v1/users/"+user, nil, nil) != nil {
			if time.Now().After(deadline) {
				return fmt.Errorf("node %s's directory does not hold %s after %v", s.HTTP, user, d)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// Metric returns the sum of a metric family's samples scraped from /metrics
// (histograms: their _sum and _count are addressed by those names).
func (s *Server) Metric(name string) (float64, error) {
	m, err := s.Scrape()
	if err != nil {
		return 0, err
	}
	return m.Sum(name), nil
}

func (s *Server) call(method, path string, in, out any) error {
	b, _ := json.Marshal(in)
	req, _ := http.NewRequest(method, s.url(path), bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+s.admin)
	resp, err := s.web().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, raw)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}
