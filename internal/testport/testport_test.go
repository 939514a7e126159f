package testport

import (
	"net"
	"strconv"
	"testing"
)

// Ports come from below the ephemeral range, never twice in a process,
// and can be bound when handed out.
func TestPortsBelowTheEphemeralRange(t *testing.T) {
	lowest := ephemeralLow()
	seen := map[int]bool{}
	for range 200 {
		p := Port(t)
		if lowest > 11000 && (p < 10000 || p >= lowest) {
			t.Fatalf("port %d outside [10000, %d)", p, lowest)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d: %v", p, err)
		}
		l.Close()
	}
}
