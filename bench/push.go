package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dingmq/ding/channels/push"
	"github.com/dingmq/ding/channels/push/pushtest"
	"github.com/dingmq/ding/engine"
)

// PushConfig sizes the push scenario.
type PushConfig struct {
	Bin, Tmp string
	// Devices is how many users, each with one registered APNs device
	// that holds no connection; zero means 10,000.
	Devices int
	// Messages is how many messages the burst sends, each to one of the
	// devices' users at random; zero means 100,000.
	Messages int
	// Senders is how many admin API requests are in flight; zero means 32.
	Senders int
	// Coalesce is dingd's --push-coalesce; zero means 10s.
	Coalesce time.Duration
}

func (c *PushConfig) setDefaults() {
	if c.Devices == 0 {
		c.Devices = 10_000
	}
	if c.Messages == 0 {
		c.Messages = 100_000
	}
	if c.Senders == 0 {
		c.Senders = 32
	}
	if c.Coalesce == 0 {
		c.Coalesce = 10 * time.Second
	}
}

func pushDeviceToken(i int) string { return fmt.Sprintf("%064x", i+1) }

// Push measures message notifications to devices without a connection: a
// burst of Messages to Devices registered, offline devices, through dingd
// and the real APNs client to the fake APNs (channels/push/pushtest) in
// this process. Figures: notifications per second (the burst's first
// notifications, then the coalescing windows' flush, all at once), the
// coalescing ratio (messages per notification), p99 from a message's
// acknowledgement to its first notification's request at the fake, and
// dingd's RSS. Baseline: the same APNs client (channels/push) sending as
// many notifications straight to the fake from this process, with as
// many workers as dingd has.
func Push(cfg PushConfig) (Table, error) {
	cfg.setDefaults()
	fake, err := pushtest.Start()
	if err != nil {
		return Table{}, err
	}
	defer fake.Close()
	dir, err := os.MkdirTemp(cfg.Tmp, "fakepush")
	if err != nil {
		return Table{}, err
	}
	defer os.RemoveAll(dir)
	key, err := fake.WriteAPNsKey(dir)
	if err != nil {
		return Table{}, err
	}
	ca, err := fake.WriteCA(dir)
	if err != nil {
		return Table{}, err
	}
	srv, err := StartServer(cfg.Bin, cfg.Tmp, cfg.Devices, "--push-apns-key-file", key, "--push-apns-key-id", fake.KeyID,
		"--push-apns-team-id", fake.TeamID, "--push-apns-endpoint", fake.APNsURL(), "--push-ca-file", ca,
		"--push-coalesce", cfg.Coalesce.String())
	if err != nil {
		return Table{}, err
	}
	defer srv.Stop()

	// Register every device (admin API, concurrently).
	if err := parallel(cfg.Senders, cfg.Devices, func(i int) error {
		return srv.call("PUT", fmt.Sprintf("/v1/users/u%d/push/phone", i), map[string]any{"provider": "apns", "token": pushDeviceToken(i), "topic": "com.example.ding"}, nil)
	}); err != nil {
		return Table{}, fmt.Errorf("push: register: %w", err)
	}
	fake.Reset()

	// The burst: each message from u0 to a random other user.
	to := make([]int, cfg.Messages)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range to {
		to[i] = 1 + r.IntN(cfg.Devices-1)
	}
	firstAck := make([]atomic.Int64, cfg.Devices) // unix ns of the first ack of a message to each user
	start := time.Now()
	if err := parallel(cfg.Senders, cfg.Messages, func(i int) error {
		err := srv.call("POST", "/v1/messages", map[string]any{"from": "u0", "to": []string{fmt.Sprintf("u%d", to[i])}, "text": "burst"}, nil)
		if err == nil {
			firstAck[to[i]].CompareAndSwap(0, time.Now().UnixNano())
		}
		return err
	}); err != nil {
		return Table{}, fmt.Errorf("push: burst: %w", err)
	}
	burst := time.Since(start)
	distinct := 0
	for i := range firstAck {
		if firstAck[i].Load() != 0 {
			distinct++
		}
	}
	// Every device owed more than one message gets a flush at its window's
	// end: wait for the first wave (one per device), then for the flushes.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	first, err := fake.Wait(ctx, distinct)
	if err != nil {
		return Table{}, fmt.Errorf("push: first notifications: %w", err)
	}
	// Settle: wait until no request came for 2 windows' worth past the flush.
	var all []pushtest.Request
	for {
		n := len(fake.Requests())
		wctx, wcancel := context.WithTimeout(ctx, cfg.Coalesce+5*time.Second)
		_, err := fake.Wait(wctx, n+1)
		wcancel()
		if err != nil {
			if ctx.Err() != nil {
				return Table{}, ctx.Err()
			}
			all = fake.Requests()
			break
		}
	}
	rss, _ := srv.RSS()

	// Saturation: every device owed a notification at once. The fake
	// holds its answers while one message goes to each device (their
	// windows ended during the settling above), so that dingd's queue
	// holds them all; then it answers, and dingd drains at full speed.
	fake.Reset()
	fake.Pause()
	if err := parallel(cfg.Senders, cfg.Devices-1, func(i int) error {
		return srv.call("POST", "/v1/messages", map[string]any{"from": "u0", "to": []string{fmt.Sprintf("u%d", i+1)}, "text": "wake"}, nil)
	}); err != nil {
		fake.Resume()
		return Table{}, fmt.Errorf("push: saturation: %w", err)
	}
	// The sink notes a message right after its batch is answered: give
	// the last ones a moment (a benchmark's pause, not a test's wait).
	time.Sleep(500 * time.Millisecond)
	resumed := time.Now()
	fake.Resume()
	sat, err := fake.Wait(ctx, cfg.Devices-1)
	if err != nil {
		return Table{}, fmt.Errorf("push: saturation: %w", err)
	}
	satRate := rate(int64(len(sat)), sat[len(sat)-1].At.Sub(resumed))
	rssSat, _ := srv.RSS()

	// First wave: by device, the earliest request; latency from the
	// first ack to it.
	byDev := map[string]time.Time{}
	for _, q := range first {
		if t, ok := byDev[q.Token]; !ok || q.At.Before(t) {
			byDev[q.Token] = q.At
		}
	}
	var lat Latencies
	for i := range firstAck {
		a := firstAck[i].Load()
		if a == 0 {
			continue
		}
		if t, ok := byDev[pushDeviceToken(i)]; ok {
			lat = append(lat, max(0, t.Sub(time.Unix(0, a))))
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	flush := all[min(len(first), len(all)):]
	var flushRate float64
	if len(flush) > 1 {
		flushRate = rate(int64(len(flush)), flush[len(flush)-1].At.Sub(flush[0].At))
	}
	firstRate := rate(int64(len(first)), first[len(first)-1].At.Sub(first[0].At))
	// Coalescing held if no device got two notifications closer than the
	// window (measured at the fake: request arrival times).
	perDev := map[string][]time.Time{}
	for _, q := range all {
		perDev[q.Token] = append(perDev[q.Token], q.At)
	}
	minGap := time.Duration(-1)
	for _, ts := range perDev {
		sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
		for i := 1; i < len(ts); i++ {
			if g := ts[i].Sub(ts[i-1]); minGap < 0 || g < minGap {
				minGap = g
			}
		}
	}
	ok := 0
	for _, q := range all {
		if q.Status == 200 {
			ok++
		}
	}

	base, err := pushBaseline(fake, key, ca, max(cfg.Devices, 1000))
	if err != nil {
		return Table{}, fmt.Errorf("push: baseline: %w", err)
	}
	coalesce := float64(cfg.Messages) / float64(max(1, len(all)))
	return Table{
		Scenario: "push",
		Setup: fmt.Sprintf("%d messages (admin API, %d in flight) from one user, each to one of %d users at random (%d got at least one), each user with one registered APNs device and no connection; dingd --push-coalesce %v; the real APNs client (sideshow/apns2, HTTP/2, token auth) to the fake APNs (channels/push/pushtest) in the bench process, on loopback. Burst took %v (%.0f msgs/s).",
			cfg.Messages, cfg.Senders, cfg.Devices, distinct, cfg.Coalesce, burst.Round(time.Millisecond), rate(int64(cfg.Messages), burst)),
		Rows: []Row{
			{Metric: fmt.Sprintf("pushes/s, %d devices owed at once (saturation)", cfg.Devices-1), Ding: fmt.Sprintf("%.0f", satRate), Baseline: fmt.Sprintf("%.0f", base), Ratio: ratio(satRate, base), Goal: "≥ 5,000" + met(satRate >= 5000)},
			{Metric: "pushes/s during the burst: first notifications / windows' flush (paced by the burst)", Ding: fmt.Sprintf("%.0f / %.0f", firstRate, flushRate), Baseline: "", Ratio: "", Goal: ""},
			{Metric: "notifications (accepted / requested)", Ding: fmt.Sprintf("%d / %d", ok, len(all)), Baseline: fmt.Sprintf("%d messages", cfg.Messages), Ratio: "", Goal: ""},
			{Metric: "coalescing ratio (messages per notification)", Ding: fmt.Sprintf("%.2f", coalesce), Baseline: "1.00 (no coalescing)", Ratio: "", Goal: ""},
			{Metric: "shortest time between two pushes to one device", Ding: minGap.Round(time.Millisecond).String(), Baseline: "", Ratio: "", Goal: fmt.Sprintf("≥ %v (the window)", cfg.Coalesce) + met(minGap < 0 || minGap >= cfg.Coalesce-50*time.Millisecond)},
			{Metric: "append (ack) → first push request p50 / p99", Ding: lat.ms(0.5) + " / " + lat.ms(0.99), Baseline: "", Ratio: "", Goal: "p99 ≤ 200 ms" + met(lat.Quantile(0.99) <= 200*time.Millisecond)},
			{Metric: "dingd RSS after the burst / after saturation", Ding: fmt.Sprintf("%.0f / %.0f MiB", float64(rss)/(1<<20), float64(rssSat)/(1<<20)), Baseline: "", Ratio: "", Goal: ""},
		},
		Notes: []string{"Baseline: the same APNs client code (channels/push, 64 workers) sending as many notifications straight to the same fake from the bench process: what the fake and the client allow on this machine."},
	}, nil
}

// pushBaseline sends n DING pushes straight from this process through
// channels/push to the fake, 64 at a time, and returns pushes per second.
func pushBaseline(fake *pushtest.Server, key, ca string, n int) (float64, error) {
	p, err := push.New(push.Config{APNsKeyFile: key, APNsKeyID: fake.KeyID, APNsTeamID: fake.TeamID, APNsEndpoint: fake.APNsURL(), CAFile: ca, Workers: 1},
		push.Deps{Tokens: benchTokens{}})
	if err != nil {
		return 0, err
	}
	defer p.Close()
	start := time.Now()
	err = parallel(64, n, func(i int) error {
		_, err := p.Send(context.Background(), engine.Outbound{Ding: engine.ID{1}, Channel: engine.ChannelPush, To: fmt.Sprint(i), Sender: "bench"})
		return err
	})
	return rate(int64(n), time.Since(start)), err
}

type benchTokens struct{}

func (benchTokens) PushTokens(user string) ([]engine.PushToken, error) {
	var i int
	fmt.Sscan(user, &i)
	return []engine.PushToken{{Device: "phone", Provider: engine.PushAPNs, Token: pushDeviceToken(i), Topic: "com.example.ding"}}, nil
}

func (benchTokens) RemovePushToken(context.Context, string, string, string) (bool, error) {
	return false, nil
}

// parallel runs f(0..n-1) on w goroutines and returns the first error.
func parallel(w, n int, f func(i int) error) error {
	var next atomic.Int64
	var first error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					next.Store(int64(n))
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}
