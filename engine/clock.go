package engine

import "time"

// Clock is where the engine reads the time and waits for it. Tests inject
// a fake one (internal/fakeclock), so that a 15-minute escalation runs in
// milliseconds.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// Until returns a channel that receives once the clock reaches t (at
	// once if it has). An absolute time, not a duration, so that a fake
	// clock moved between reading Now and calling Until still fires. It
	// must be safe for concurrent use; an unread channel must not leak a
	// goroutine.
	Until(t time.Time) <-chan time.Time
}

// SystemClock is the real wall clock.
type SystemClock struct{}

// Now implements Clock.
func (SystemClock) Now() time.Time { return time.Now() }

// Until implements Clock.
func (SystemClock) Until(t time.Time) <-chan time.Time { return time.After(time.Until(t)) }
