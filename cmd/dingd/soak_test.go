//go:build soak

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/twilio/twiliotest"
)

// Run with `make soak` (SOAK_DURATION=30m for the long run in
// bench/RESULTS.md). Not in make test.

var (
	soakFor  = flag.Duration("soak.duration", 10*time.Minute, "how long the soak runs")
	soakKill = flag.Duration("soak.kill-every", time.Minute, "SIGKILL dingd this often (then restart it)")
	soakProf = flag.String("soak.pprof", "", "dingd --pprof: serve net/http/pprof on this address (heap profiles of a long run)")
	soakKeep = flag.Duration("soak.retention", 3*time.Minute, "dingd --retention-max-age and --dedupe-window (swept every 30s); 0: retention off, and every acknowledged message must be in bo's stream at the end")
)

// The soak: one dingd under mixed traffic for soak.duration — 1:1 sends
// from 8 devices, group sends, DINGs escalating to SMS through the real
// twilio-go client to a fake Twilio, announcements to all, secret chats,
// clients reconnecting — with SIGKILL every soak.kill-every and a restart.
// With retention on (soak.retention, 3 minutes by default), a live
// device of bo, reconnecting by itself, is the checker: every message
// acknowledged to a sender must reach it (it is never away for longer than
// the retention); without, every one must be in bo's stream at the end.
// Either way the store passes dingd check. The kills stop after two
// thirds of the run: the last third is one calm incarnation, long enough
// to tell warm-up (Pebble's block cache and memtables filling, the Go
// heap finding its size) from a leak. Its RSS, goroutines and open files
// are reported with their slope over the calm phase's second half, after
// the warm-up, and must not grow there by more than a quarter; the peak
// RSS of each incarnation is reported (a leak across restarts shows as
// later incarnations peaking higher). The store's disk use over the whole
// run (it must not grow in the second half by more than half, with
// retention on) and the submit→ack p50/p99 per sixth of the run are
// reported too.
func TestSoak(t *testing.T) {
	const sid, tok = "AC00000000000000000000000000000009", "secret0token0for0tests"
	fake := twiliotest.NewServer(sid, tok)
	defer fake.Close()
	data := t.TempDir()
	p := newProc(t, data)
	p.env = []string{"TWILIO_AUTH_TOKEN=" + tok}
	args := p.args("--twilio-account-sid", sid, "--twilio-from", "+15005550006", "--public-url", "http://{http}",
		"--twilio-api-url", fake.URL(), "--burn-after", "5s")
	if *soakKeep > 0 {
		args = append(args, "--retention-max-age", soakKeep.String(), "--dedupe-window", soakKeep.String(), "--retention-interval", "30s")
	}
	if *soakProf != "" {
		args = append(args, "--pprof", *soakProf)
	}
	p.start(t, args...)
	users := []string{"ana", "bo", "cy", "dee", "eli"}
	for _, u := range users {
		if code := p.admin(t, "POST", "/v1/users", map[string]string{"id": u, "name": u}, nil); code != 201 {
			t.Fatalf("create %s: %d", u, code)
		}
	}
	if code := p.admin(t, "PUT", "/v1/groups/team", map[string]any{"name": "Team", "members": users}, nil); code != 200 && code != 201 {
		t.Fatalf("group: %d", code)
	}

	// bo's receiver: a device that stays (reconnecting by itself across
	// the kills) and records every message it is handed.
	var rxMu sync.Mutex
	received := map[string]bool{}
	rx, err := client.Dial(context.Background(), client.Config{Addr: p.sock, Token: p.token(t, "bo", "rx"), Device: "rx", MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	rxDone := make(chan struct{})
	go func() {
		defer close(rxDone)
		for e := range rx.Entries() {
			if e.Message != nil {
				rxMu.Lock()
				received[e.Message.ID] = true
				rxMu.Unlock()
			}
			rx.Ack(e.Seq)
		}
	}()
	s := startSenders(t, p, 8)   // ana → bo, each message until acknowledged; they reconnect by themselves
	var cur atomic.Pointer[proc] // the incarnation serving now
	cur.Store(p)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := map[string]int{}
	note := func(what string, err error) {
		if err != nil {
			mu.Lock()
			errs[what]++
			mu.Unlock()
		}
	}
	// Admin traffic: group sends, DINGs to phones, announcements.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			q := cur.Load()
			note("group send", post(q, "/v1/messages", map[string]any{"from": "cy", "to": []string{"group:team"}, "text": fmt.Sprint("team ", i)}))
			if i%10 == 0 {
				note("ding", post(q, "/v1/dings", map[string]any{"from": "dee", "to": []string{fmt.Sprintf("+1555666%04d", i%10000)},
					"text": "soak", "policy": "sms@1s", "critical": true}))
			}
			if i%50 == 0 {
				note("announcement", post(q, "/v1/announcements", map[string]any{"from": "eli", "to": "all", "text": fmt.Sprint("news ", i)}))
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	// Secret chats: eli and cy, a message a second, read at once (burns 5s later).
	wg.Add(1)
	go func() {
		defer wg.Done()
		dial := func(u string) *client.Client {
			c, err := client.Dial(ctx, client.Config{Addr: p.sock, Token: p.token(t, u, "secret"), Device: "secret", MaxBackoff: 200 * time.Millisecond})
			if err != nil {
				return nil
			}
			return c
		}
		eli, cy := dial("eli"), dial("cy")
		if eli == nil || cy == nil {
			note("secret dial", fmt.Errorf("dial"))
			return
		}
		defer eli.Close()
		defer cy.Close()
		go func() {
			for e := range cy.Entries() {
				if e.Message != nil && e.Message.Chat != "" {
					rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
					note("secret read", cy.Read(rctx, e.Message.ID))
					cancel()
				}
				cy.Ack(e.Seq)
			}
		}()
		go func() {
			for e := range eli.Entries() {
				eli.Ack(e.Seq)
			}
		}()
		var chat string
		for ctx.Err() == nil {
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			var err error
			if chat == "" {
				chat, err = eli.CreateChat(sctx, "cy", 1, 0)
				note("secret create", err)
			} else {
				_, err = eli.SendChat(sctx, chat, []byte("for your eyes only"))
				note("secret send", err)
			}
			cancel()
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()

	var samples []sample // of the current incarnation
	var all []sample     // of the whole run: the store's disk use
	var peaks []float64  // each finished incarnation's peak RSS
	scrape := func() (sample, bool) {
		resp, err := http.Get("http://" + p.http + "/metrics")
		if err != nil {
			return sample{}, false
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return sample{}, false
		}
		m := string(b)
		return sample{at: time.Now(), rss: metric(m, "process_resident_memory_bytes"), gor: metric(m, "go_goroutines"),
			fds: metric(m, "process_open_fds"), disk: metric(m, "ding_store_used_bytes")}, true
	}
	start := time.Now()
	kills := 0
	nextKill := start.Add(*soakKill)
	for time.Since(start) < *soakFor {
		time.Sleep(5 * time.Second) // the soak's own pace: sample every 5s
		if time.Now().After(nextKill) && time.Since(start) < *soakFor*2/3 {
			if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			<-p.exited
			kills++
			p = &proc{data: p.data, sock: p.sock, http: p.http, env: p.env, stderr: &syncBuffer{}}
			p.start(t, args...)
			cur.Store(p)
			peak := 0.0
			for _, sm := range samples {
				peak = max(peak, sm.rss)
			}
			peaks = append(peaks, peak)
			samples = nil
			nextKill = time.Now().Add(*soakKill)
			continue
		}
		if sm, ok := scrape(); ok {
			samples = append(samples, sm)
			all = append(all, sm)
		}
	}
	stop()
	wg.Wait()
	acked := s.stop()
	if *soakKeep > 0 {
		// Every acknowledged message reached the receiver: wait for its
		// catch-up (it follows the live stream; give it a moment).
		deadline := time.Now().Add(30 * time.Second)
		for {
			rxMu.Lock()
			missing := 0
			for id := range acked {
				if !received[id] {
					missing++
				}
			}
			rxMu.Unlock()
			if missing == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d acknowledged messages never reached bo's receiver", missing, len(acked))
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("all %d acknowledged messages reached bo's receiver (%d received in all, including group sends and announcements)", len(acked), len(received))
	} else {
		requireStream(t, p, acked)
	}
	rx.Close()
	<-rxDone

	// The store's disk use over the whole run, and the acks' latency.
	if len(all) >= 4 {
		half := all[len(all)/2].at
		var firstHalfMax, lastMax float64
		for _, sm := range all {
			if sm.at.Before(half) {
				firstHalfMax = max(firstHalfMax, sm.disk)
			} else {
				lastMax = max(lastMax, sm.disk)
			}
		}
		t.Logf("store on disk: first half up to %.1f MiB, second half up to %.1f MiB, at the end %.1f MiB; slope over the second half %+.2f MiB per minute",
			firstHalfMax/(1<<20), lastMax/(1<<20), all[len(all)-1].disk/(1<<20),
			slopePerMinute(all[len(all)/2:], func(s sample) float64 { return s.disk })/(1<<20))
		if *soakKeep > 0 && *soakFor >= 4**soakKeep && lastMax > 1.5*firstHalfMax {
			t.Errorf("with retention the store grew in the second half: %.1f → %.1f MiB", firstHalfMax/(1<<20), lastMax/(1<<20))
		}
	}
	s.mu.Lock()
	lats := slices.Clone(s.lats)
	s.mu.Unlock()
	for i := range 6 {
		from, to := start.Add(time.Duration(i)**soakFor/6), start.Add(time.Duration(i+1)**soakFor/6)
		var ds []time.Duration
		for _, l := range lats {
			if !l.at.Before(from) && l.at.Before(to) {
				ds = append(ds, l.lat)
			}
		}
		if len(ds) == 0 {
			continue
		}
		slices.Sort(ds)
		t.Logf("submit→ack, minutes %.1f-%.1f: %d acks, p50 %v, p99 %v", from.Sub(start).Minutes(), to.Sub(start).Minutes(), len(ds),
			ds[len(ds)/2].Round(10*time.Microsecond), ds[len(ds)*99/100].Round(10*time.Microsecond))
	}

	// The calm incarnation's resources over its second half, after the
	// warm-up.
	var steady []sample
	if len(samples) > 0 {
		calm := samples[len(samples)-1].at.Sub(samples[0].at)
		for _, sm := range samples {
			if sm.at.Sub(samples[0].at) >= calm/2 {
				steady = append(steady, sm)
			}
		}
	}
	if len(steady) < 6 {
		t.Fatalf("only %d samples of the calm incarnation's second half: run longer (soak.duration)", len(steady))
	}
	report := func(name string, f func(sample) float64, unit float64) {
		first, last := f(steady[0]), f(steady[len(steady)-1])
		slope := slopePerMinute(steady, f) / unit
		t.Logf("%s over the calm incarnation's second half (%v): %.1f → %.1f, slope %+.2f per minute", name,
			steady[len(steady)-1].at.Sub(steady[0].at).Round(time.Second), first/unit, last/unit, slope)
		if last > 1.25*first+10*unit {
			t.Errorf("%s grew by more than a quarter after the warm-up: %.1f → %.1f", name, first/unit, last/unit)
		}
	}
	report("RSS (MiB)", func(s sample) float64 { return s.rss }, 1<<20)
	report("goroutines", func(s sample) float64 { return s.gor }, 1)
	report("open files", func(s sample) float64 { return s.fds }, 1)
	if len(peaks) > 0 {
		mib := make([]string, len(peaks))
		for i, pk := range peaks {
			mib[i] = fmt.Sprintf("%.0f", pk/(1<<20))
		}
		calmPeak := 0.0
		for _, sm := range samples {
			calmPeak = max(calmPeak, sm.rss)
		}
		t.Logf("peak RSS of each killed incarnation (MiB): %s; of the calm one: %.0f", strings.Join(mib, " "), calmPeak/(1<<20))
	}
	mu.Lock()
	t.Logf("%v of traffic, %d SIGKILLs; %d messages acknowledged to clients, none lost; %d SMS sent; errors by kind (mostly around the kills): %v",
		time.Since(start).Round(time.Second), kills, len(acked), fake.Count("sms"), errs)
	mu.Unlock()

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t, 30*time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	out, err := exec.Command(dingdBinary(t), "check", "--data", data).CombinedOutput()
	if err != nil {
		t.Fatalf("dingd check after the soak: %v\n%s", err, out)
	}
}

// post sends an admin request to p, reporting failures (the server may
// be dead for a moment) instead of failing the test.
func post(p *proc, path string, body any) error {
	tok, err := os.ReadFile(filepath.Join(p.data, "admin.token"))
	if err != nil {
		return err
	}
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", "http://"+p.http+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

var metricLine = regexp.MustCompile(`(?m)^([a-z_]+) ([0-9.e+-]+)$`)

// metric is an unlabelled sample's value in an exposition (NaN if absent).
func metric(exposition, name string) float64 {
	for _, m := range metricLine.FindAllStringSubmatch(exposition, -1) {
		if m[1] == name {
			v, _ := strconv.ParseFloat(m[2], 64)
			return v
		}
	}
	return math.NaN()
}

// sample is one scrape of the soaked dingd.
type sample struct {
	at                  time.Time
	rss, gor, fds, disk float64
}

// slopePerMinute is the least-squares slope of f over the samples, per
// minute.
func slopePerMinute(samples []sample, f func(sample) float64) float64 {
	n := float64(len(samples))
	var sx, sy, sxx, sxy float64
	for _, s := range samples {
		x, y := s.at.Sub(samples[0].at).Minutes(), f(s)
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	if d := n*sxx - sx*sx; d != 0 {
		return (n*sxy - sx*sy) / d
	}
	return 0
}
