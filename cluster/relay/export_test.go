package relay

import "time"

// Backoff is the wait after the nth consecutive failure, for tests.
func (p *Pump) Backoff(n int) time.Duration { return p.backoff(n) }
