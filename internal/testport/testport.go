// Package testport hands tests loopback ports that nothing listens on,
// for servers a test starts (and may restart) on a known address.
//
// The ports come from below the kernel's ephemeral range
// (/proc/sys/net/ipv4/ip_local_port_range), not from it as a listener on
// port 0 would: a port from the ephemeral range, free when handed out,
// can be taken as the source port of any outbound connection (a
// client's, a Redis pool's) before the server binds it, or while it is
// down between two starts, and the server then fails with "address in
// use". Below the range only another listener can take it. Within a
// process no port is handed out twice; processes (go test's packages
// run side by side) start at random places in the range, and every port
// is checked free when handed out.
package testport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

var (
	mu   sync.Mutex
	next int // the next port to try; 0 until the first call
	low  int // the range: [low, high)
	high int
)

// Port returns a loopback port nothing listens on now.
func Port(tb testing.TB) int {
	tb.Helper()
	mu.Lock()
	defer mu.Unlock()
	if next == 0 {
		low, high = 10000, ephemeralLow()
		if high-low < 1000 { // an unusual range: ask the kernel instead
			low, high = 0, 0
		} else {
			next = low + rand.IntN(high-low)
		}
	}
	if high == 0 {
		return kernelPort(tb)
	}
	for range high - low {
		p := next
		if next++; next >= high {
			next = low
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue // another process's
		}
		l.Close()
		return p
	}
	tb.Fatalf("testport: no free port in [%d, %d)", low, high)
	return 0
}

// Addr returns a loopback address (127.0.0.1:PORT) nothing listens on
// now.
func Addr(tb testing.TB) string {
	tb.Helper()
	return fmt.Sprintf("127.0.0.1:%d", Port(tb))
}

// ephemeralLow is the bottom of the kernel's ephemeral port range, or 0
// if it cannot be read.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return n
}

// kernelPort is a port the kernel picks (from its ephemeral range).
func kernelPort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
