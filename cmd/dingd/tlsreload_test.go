package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// dingd reloads its certificate under 1,000 live TLS connections, on
// SIGHUP and on a change of the files with no signal: every connection
// stays up (no client reconnected; dingd counts 1,000 devices and 1,000
// handshakes throughout), new connections on the TLS socket port and the
// HTTPS port get the new certificate, and afterwards each of the 1,000
// connections sends a message and receives its neighbour's.
//
// 500 users with two devices each; the file descriptors are dingd's 1,000
// and the test's 1,000, far under the machine's limit.
func TestTLSReloadKeeps1000Connections(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 connections: not in -short")
	}
	const users, devices, dialers = 500, 2, 20
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	ca := newTestCA(t)
	ca.issue(t, 100, certFile, keyFile)
	p := newProc(t, t.TempDir())
	tlsSock := nodetest.FreeAddr(t)
	p.launch(t, p.args("--tls-cert", certFile, "--tls-key", keyFile, "--tls-listen", tlsSock)...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dingd's stderr:\n%s", p.stderr)
		}
	})
	https := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool}}}
	nodetest.WaitFor(t, "dingd over HTTPS", 20*time.Second, func() bool {
		resp, err := https.Get("https://" + p.http + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	var csv strings.Builder
	csv.WriteString("id,name,phone,department_path\n")
	for u := range users {
		fmt.Fprintf(&csv, "u%03d,U %d,,\n", u, u)
	}
	req, _ := http.NewRequest("POST", "https://"+p.http+"/v1/directory/import?format=csv", strings.NewReader(csv.String()))
	req.Header.Set("Authorization", "Bearer "+readAdminToken(t, p))
	resp, err := https.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("import of %d users: %v %v", users, resp, err)
	}
	resp.Body.Close()

	// 1,000 connections, dialled by 20 goroutines (so that at most 20 are
	// unauthenticated at once, under --preauth-per-source).
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	clients := make([]*client.Client, users*devices) // index u*devices+d
	t.Cleanup(func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	})
	eachClient(t, dialers, len(clients), func(i int) error {
		user, dev := fmt.Sprintf("u%03d", i/devices), "d"+strconv.Itoa(i%devices)
		c, err := client.Dial(ctx, client.Config{Addr: tlsSock, Token: p.token(t, user, dev), Device: dev,
			TLS: &tls.Config{RootCAs: ca.pool}, DialTimeout: 10 * time.Second})
		clients[i] = c // each goroutine writes its own indexes; read after eachClient returns
		return err
	})
	wantGauges := func(when string) {
		t.Helper()
		m := scrapeHTTPS(t, https, "https://"+p.http+"/metrics")
		if m["ding_fanout_devices"] != float64(len(clients)) || m[`ding_socket_handshakes_total{result="ok"}`] != float64(len(clients)) {
			t.Fatalf("%s: dingd counts %v devices attached and %v handshakes, want %d and %d (none made again)", when,
				m["ding_fanout_devices"], m[`ding_socket_handshakes_total{result="ok"}`], len(clients), len(clients))
		}
	}
	wantGauges("all connected")

	// The serial number a new connection's certificate has, on each port.
	serial := func(addr string) int64 {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.pool})
		if err != nil {
			return 0
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	// SIGHUP.
	ca.issue(t, 200, certFile, keyFile)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	nodetest.WaitFor(t, "the certificate after SIGHUP", 10*time.Second, func() bool {
		return serial(tlsSock) == 200 && serial(p.http) == 200
	})
	wantGauges("after SIGHUP")
	// The files change, no signal: seen within a second of a handshake.
	ca.issue(t, 300, certFile, keyFile)
	nodetest.WaitFor(t, "the certificate after the files changed", 10*time.Second, func() bool {
		return serial(tlsSock) == 300 && serial(p.http) == 300
	})
	wantGauges("after the files changed")

	// Each connection sends to the next user, and gets both messages the
	// user before it sent.
	ids := make([]string, len(clients))
	eachClient(t, dialers, len(clients), func(i int) error {
		to := fmt.Sprintf("u%03d", (i/devices+1)%users)
		res, err := clients[i].Send(ctx, []string{to}, []byte("after two reloads"))
		ids[i] = res.ID
		return err
	})
	// Their entries wait in each client's queue: 20 goroutines drain
	// them in turn (the race detector allows 8,128 goroutines, and the
	// clients hold a few each).
	eachClient(t, dialers, len(clients), func(i int) error {
		from := (i/devices + users - 1) % users
		want := map[string]bool{}
		for d := range devices {
			want[ids[from*devices+d]] = true
		}
		for len(want) > 0 {
			select {
			case e, ok := <-clients[i].Entries():
				if !ok {
					return fmt.Errorf("stopped: %v", clients[i].Err())
				}
				if e.Message != nil {
					delete(want, e.Message.ID)
				}
			case <-ctx.Done():
				return fmt.Errorf("%d messages of u%03d missing", len(want), from)
			}
		}
		if n := clients[i].Stats().Connects; n != 1 {
			return fmt.Errorf("connected %d times", n)
		}
		return nil
	})
	wantGauges("after sending")
}

// eachClient runs f(i) for i in [0, n) on workers goroutines and fails
// the test with the first errors, on the test goroutine.
func eachClient(t *testing.T, workers, n int, f func(i int) error) {
	t.Helper()
	next := make(chan int)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if failed++; failed <= 5 {
			t.Error(err)
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d connections failed", failed, n)
	}
}

// scrapeHTTPS reads the unlabelled and labelled samples of a Prometheus
// text page, by their name with labels as written.
func scrapeHTTPS(t *testing.T, c *http.Client, url string) map[string]float64 {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
				m[line[:i]] = v
			}
		}
	}
	return m
}

// readAdminToken is the owner's token dingd wrote in its data dir.
func readAdminToken(t *testing.T, p *proc) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
