package engine

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Stop says what ends a recipient's escalation.
type Stop uint8

const (
	// StopConfirmed: only a confirmation (in the app, by SMS reply or by a
	// keypress) stops it; reading is not enough.
	StopConfirmed Stop = 1
	// StopRead: reading the DING on any device (or confirming it) stops it.
	StopRead Stop = 2
)

func (s Stop) String() string {
	if s == StopRead {
		return "read"
	}
	return "confirmed"
}

// Step is one step of an escalation policy: reach the recipient on
// Channel, After the DING was sent, and again Repeat more times, Every
// apart.
type Step struct {
	Channel Channel
	After   time.Duration
	Repeat  int
	Every   time.Duration
}

// Policy is an escalation policy: ordered steps and what stops them.
//
// Its text form, used by the API, the CLI and stored named policies, is
// comma-separated steps and an optional stop condition:
//
//	inapp,sms@5m,voice@15m,voice@30m until=confirmed
//	inapp, sms@1s*3/10s until=read        (SMS at 1s, 11s, 21s)
//	inapp,email@1m,sms@5m,voice@15m
//
// A step is channel[@delay][*times/every]; channel is inapp, push (a push
// notification to the recipient's registered devices, see ChannelPush),
// sms, voice or email (an e-mail whose links confirm, see ChannelEmail);
// delays are Go durations (1s, 5m, 1h30m) from the moment the DING is
// sent, at least one second apart in effect. Without until=, the policy
// stops on confirmation.
type Policy struct {
	Steps []Step
	Until Stop
}

// Policy limits: a policy expands to at most MaxPolicySteps sends, over at
// most MaxPolicySpan.
const (
	MaxPolicySteps = 32
	MaxPolicySpan  = 7 * 24 * time.Hour
)

// DefaultPolicy is used when a DING names no policy: in the app now, SMS
// after 5 minutes, a call after 15, until confirmed.
var DefaultPolicy = Policy{
	Steps: []Step{{Channel: ChannelInApp}, {Channel: ChannelSMS, After: 5 * time.Minute}, {Channel: ChannelVoice, After: 15 * time.Minute}},
	Until: StopConfirmed,
}

// DefaultPushPolicy is DefaultPolicy with a push at once, beside the
// in-app message: the default when push is configured
// (Config.PushConfigured).
var DefaultPushPolicy = Policy{
	Steps: []Step{{Channel: ChannelInApp}, {Channel: ChannelPush}, {Channel: ChannelSMS, After: 5 * time.Minute}, {Channel: ChannelVoice, After: 15 * time.Minute}},
	Until: StopConfirmed,
}

// ParsePolicy parses the text form of a policy (see Policy).
func ParsePolicy(spec string) (Policy, error) {
	var p Policy
	fields := strings.FieldsFunc(spec, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == ';' })
	for _, f := range fields {
		if v, ok := strings.CutPrefix(f, "until="); ok {
			switch v {
			case "read":
				p.Until = StopRead
			case "confirmed", "confirm":
				p.Until = StopConfirmed
			default:
				return Policy{}, fmt.Errorf("%w: until=%q (want read or confirmed)", ErrBadPolicy, v)
			}
			continue
		}
		s, err := parseStep(f)
		if err != nil {
			return Policy{}, err
		}
		p.Steps = append(p.Steps, s)
	}
	if p.Until == 0 {
		p.Until = StopConfirmed
	}
	return p, p.Validate()
}

func parseStep(f string) (Step, error) {
	var s Step
	rest := f
	var rep string
	rest, rep, hasRep := strings.Cut(rest, "*")
	ch, delay, hasDelay := strings.Cut(rest, "@")
	c, err := ParseChannel(ch)
	if err != nil {
		return Step{}, err
	}
	s.Channel = c
	if hasDelay {
		if s.After, err = time.ParseDuration(delay); err != nil {
			return Step{}, fmt.Errorf("%w: step %q: bad delay", ErrBadPolicy, f)
		}
	}
	if hasRep {
		n, every, ok := strings.Cut(rep, "/")
		times, err := strconv.Atoi(n)
		if !ok || err != nil || times < 1 {
			return Step{}, fmt.Errorf("%w: step %q: repeat is *times/every, e.g. *3/10m", ErrBadPolicy, f)
		}
		if s.Every, err = time.ParseDuration(every); err != nil {
			return Step{}, fmt.Errorf("%w: step %q: bad repeat interval", ErrBadPolicy, f)
		}
		s.Repeat = times - 1
	}
	return s, nil
}

// Validate reports whether p can be used.
func (p Policy) Validate() error {
	if len(p.Steps) == 0 {
		return fmt.Errorf("%w: no steps", ErrBadPolicy)
	}
	if p.Until != StopRead && p.Until != StopConfirmed {
		return fmt.Errorf("%w: bad stop condition", ErrBadPolicy)
	}
	n := 0
	for _, s := range p.Steps {
		switch {
		case s.Channel < ChannelInApp || s.Channel > ChannelPush:
			return fmt.Errorf("%w: bad channel", ErrBadPolicy)
		case s.After < 0 || s.Every < 0 || s.Repeat < 0:
			return fmt.Errorf("%w: negative delay", ErrBadPolicy)
		case s.After%time.Second != 0 || s.Every%time.Second != 0:
			return fmt.Errorf("%w: delays are whole seconds", ErrBadPolicy)
		case s.Repeat > 0 && s.Every < time.Second:
			return fmt.Errorf("%w: a repeated step needs an interval of at least 1s", ErrBadPolicy)
		case s.After > MaxPolicySpan || s.Every > MaxPolicySpan || s.Repeat > MaxPolicySteps:
			return fmt.Errorf("%w: a step later than %v", ErrBadPolicy, MaxPolicySpan)
		}
		n += 1 + s.Repeat
		if n > MaxPolicySteps {
			return fmt.Errorf("%w: more than %d sends", ErrBadPolicy, MaxPolicySteps)
		}
		if s.After+time.Duration(s.Repeat)*s.Every > MaxPolicySpan {
			return fmt.Errorf("%w: a step later than %v", ErrBadPolicy, MaxPolicySpan)
		}
	}
	return nil
}

// String returns the text form, which ParsePolicy accepts.
func (p Policy) String() string {
	var b strings.Builder
	for i, s := range p.Steps {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(s.Channel.String())
		if s.After > 0 {
			b.WriteString("@" + shortDuration(s.After))
		}
		if s.Repeat > 0 {
			fmt.Fprintf(&b, "*%d/%s", s.Repeat+1, shortDuration(s.Every))
		}
	}
	b.WriteString(" until=" + p.Until.String())
	return b.String()
}

func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// plannedStep is one send of an expanded policy.
type plannedStep struct {
	Channel Channel       `json:"ch"`
	After   time.Duration `json:"after"`
}

// plan expands repeats and orders the sends by time (stable, so steps
// with the same delay keep the policy's order).
func (p Policy) plan() []plannedStep {
	var out []plannedStep
	for _, s := range p.Steps {
		for i := 0; i <= s.Repeat; i++ {
			out = append(out, plannedStep{s.Channel, s.After + time.Duration(i)*s.Every})
		}
	}
	// insertion sort: at most MaxPolicySteps
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].After < out[j-1].After; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}
