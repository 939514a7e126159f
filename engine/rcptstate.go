package engine

import (
	"bytes"
	"fmt"
	"slices"
)

// Changing a recipient's state.
//
// A batch loads the recipient states its ops touch into the DING overlay
// (txn.state) and writes back, at flush, only the ones it changed: a
// stopped recipient a cancel passed over, or a state whose timer was
// disarmed since the timer loop's scan, is not written again. Changes are
// marked, not found out: every change to a state is one of the methods
// below, each of which marks the state dirty, and a state built anew
// (applyDing) is marked by txn.newState. flushStates writes the dirty ones.
//
// Forgetting a mark would silently drop a write, so no field of a state
// is assigned outside this file, the decoders and applyDing's building of
// a new state, and race builds (which
// every `make test` is) check at each flush that every state left
// unmarked encodes exactly as the record it was loaded from
// (checkUnmarked): a change made without a mark fails the tests that reach
// it, instead of being lost.
//
// Rejected: finding the changes by encoding every loaded state at flush
// and comparing the bytes with the loaded record, as the JSON version did.
// Nothing to forget, but it costs an encode per state loaded and keeps
// every loaded record until the batch is flushed, while a mark costs a
// store to a bool; that comparison survives as the race builds' check.

// nextLedger returns the number of the recipient's next ledger event and
// counts it.
func (s *rcptState) nextLedger() uint32 {
	s.dirty = true
	n := s.LedgerN
	s.LedgerN++
	return n
}

// armTimer adds t to the pending timers, numbering it first if it has no
// number yet, and returns it.
func (s *rcptState) armTimer(t timerRef) timerRef {
	s.dirty = true
	if t.N == 0 {
		s.TimerN++
		t.N = s.TimerN
	}
	s.Timers = append(s.Timers, t)
	return t
}

// disarmTimer removes timer n from the pending timers and returns it;
// false if there is no such timer.
func (s *rcptState) disarmTimer(n uint32) (timerRef, bool) {
	i := slices.IndexFunc(s.Timers, func(t timerRef) bool { return t.N == n })
	if i < 0 {
		return timerRef{}, false
	}
	s.dirty = true
	t := s.Timers[i]
	s.Timers = slices.Delete(s.Timers, i, i+1)
	return t, true
}

// takeStep returns the next planned step and moves past it.
func (s *rcptState) takeStep() int {
	s.dirty = true
	s.Next++
	return s.Next - 1
}

// setPhoneAt records when the phone was last sent to (ms; 0: its phone
// key is gone).
func (s *rcptState) setPhoneAt(at int64) {
	if s.PhoneAt != at {
		s.dirty = true
		s.PhoneAt = at
	}
}

// end records how the recipient's escalation ended (or, for a new state,
// that it never started: StatusRefused).
func (s *rcptState) end(status string, by Channel, at int64) {
	if s.Status != status || s.By != by || s.Ended != at {
		s.dirty = true
		s.Status, s.By, s.Ended = status, by, at
	}
}

// setAnswer records the chosen answer (1-based; 0 for none).
func (s *rcptState) setAnswer(answer int) {
	if s.Answer != answer {
		s.dirty = true
		s.Answer = answer
	}
}

// setUnanswered records whether the recipient counts as unanswered, and
// reports whether that changed.
func (s *rcptState) setUnanswered(v bool) bool {
	if s.Unanswered == v {
		return false
	}
	s.dirty = true
	s.Unanswered = v
	return true
}

// checkUnmarked panics if s, loaded from the store and not marked as
// changed, no longer encodes as the record it was loaded from: a change
// without its mark, which flushStates would have dropped. Race builds
// only (it needs the loaded record, which only they keep).
func checkUnmarked(key string, s *rcptState) {
	var was rcptState
	if err := decodeRcptState(s.loaded, &was); err != nil || !bytes.Equal(encodeRcptState(&was), encodeRcptState(s)) {
		// The key only: a state holds a phone number.
		panic(fmt.Sprintf("engine: recipient state %x changed without being marked (rcptstate.go)", key))
	}
}
