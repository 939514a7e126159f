package engine

import "testing"

// Moving an outcome that was never counted here stops at zero instead of
// wrapping around.
func TestOutcomeNeverGoesBelowZero(t *testing.T) {
	var r Rollup
	r.outcome(OutcomeReadInApp, -1)
	r.outcome(OutcomeConfirmedSMS, 1)
	r.outcome(OutcomeConfirmedSMS, -2)
	if len(r.Outcomes) != 0 {
		t.Fatalf("outcomes = %v", r.Outcomes)
	}
}
