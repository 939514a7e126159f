package node

import (
	"net"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// limitListener bounds the HTTP port's open connections, in all and per
// source address: a connection over either bound is closed as soon as it
// is accepted, so idle or trickling clients cannot take every file the
// process may open (the socket port's clients need them). With the
// server's read, idle and header timeouts, each connection is held for a
// bounded time.
type limitListener struct {
	net.Listener
	perSource, total int // 0: no bound

	mu     sync.Mutex
	open   int            // guarded by mu
	bySrc  map[string]int // guarded by mu
	refuse *prometheus.CounterVec
}

func newLimitListener(ln net.Listener, perSource, total int, reg prometheus.Registerer) (*limitListener, error) {
	l := &limitListener{Listener: ln, perSource: perSource, total: total, bySrc: map[string]int{},
		refuse: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ding_http_connections_refused_total",
			Help: "HTTP connections closed at once: their source address (per_source) or the port (total) held its bound."}, []string{"reason"})}
	open := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ding_http_connections", Help: "Open connections on the HTTP port."},
		func() float64 { l.mu.Lock(); defer l.mu.Unlock(); return float64(l.open) })
	for _, c := range []prometheus.Collector{l.refuse, open} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	l.refuse.WithLabelValues("per_source")
	l.refuse.WithLabelValues("total")
	return l, nil
}

// Accept returns the next connection within the bounds.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := sourceAddr(c.RemoteAddr())
		l.mu.Lock()
		reason := ""
		switch {
		case l.total > 0 && l.open >= l.total:
			reason = "total"
		case l.perSource > 0 && l.bySrc[src] >= l.perSource:
			reason = "per_source"
		default:
			l.open++
			l.bySrc[src]++
		}
		l.mu.Unlock()
		if reason != "" {
			l.refuse.WithLabelValues(reason).Inc()
			_ = c.Close()
			continue
		}
		return &limitedConn{Conn: c, l: l, src: src}, nil
	}
}

func (l *limitListener) release(src string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.bySrc[src] <= 1 {
		delete(l.bySrc, src)
	} else {
		l.bySrc[src]--
	}
}

type limitedConn struct {
	net.Conn
	l    *limitListener
	src  string
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.src) })
	return err
}

func sourceAddr(a net.Addr) string {
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}
