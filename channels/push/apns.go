package push

import (
	"context"
	"crypto/tls"
	"fmt"
	"strconv"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/payload"
	"github.com/sideshow/apns2/token"
	"golang.org/x/net/http2"

	"github.com/dingmq/ding/engine"
)

// apnsSender sends through APNs with token-based auth (a .p8 key):
// github.com/sideshow/apns2 over HTTP/2, one client per environment
// (both the same host when an endpoint is given).
type apnsSender struct {
	prod, dev *apns2.Client
}

func newAPNs(cfg *Config) (*apnsSender, error) {
	key, err := token.AuthKeyFromFile(cfg.APNsKeyFile)
	if err != nil {
		// apns2's error names no key material; the path is the operator's own.
		return nil, fmt.Errorf("push: APNs key %s: %w", cfg.APNsKeyFile, err)
	}
	tok := &token.Token{AuthKey: key, KeyID: cfg.APNsKeyID, TeamID: cfg.APNsTeamID}
	mk := func(host string) *apns2.Client {
		c := apns2.NewTokenClient(tok)
		c.Host = host
		if tr, ok := c.HTTPClient.Transport.(*http2.Transport); ok {
			tc := &tls.Config{MinVersion: tls.VersionTLS12}
			if cfg.TLSConfig != nil {
				tc = cfg.TLSConfig.Clone()
			}
			tr.TLSClientConfig = tc
			tr.DialTLSContext = nil
			tr.DialTLS = nil // http2.Transport dials with TLSClientConfig
		}
		c.HTTPClient.Timeout = cfg.Timeout
		return c
	}
	s := &apnsSender{prod: mk(APNsProduction), dev: mk(APNsDevelopment)}
	if cfg.APNsEndpoint != "" {
		s.prod = mk(cfg.APNsEndpoint)
		s.dev = s.prod
	}
	return s, nil
}

func (s *apnsSender) send(ctx context.Context, tok engine.PushToken, n *Note) (string, error) {
	p := payload.NewPayload().AlertTitle(n.Title).ThreadID(threadOf(n))
	if n.Body != "" {
		p.AlertBody(n.Body)
	}
	if n.Badge >= 0 {
		if n.Badge == 0 {
			p.ZeroBadge()
		} else {
			p.Badge(n.Badge)
		}
	}
	p.Sound("default").MutableContent()
	note := &apns2.Notification{DeviceToken: tok.Token, Topic: tok.Topic, PushType: apns2.PushTypeAlert, Priority: apns2.PriorityHigh, CollapseID: n.Collapse}
	if n.isDing() {
		p.Category(categoryOf(n)).Custom("ding", dingData(n))
		p.InterruptionLevel(payload.InterruptionLevelTimeSensitive)
		if n.Critical {
			p.InterruptionLevel(payload.InterruptionLevelCritical)
			p.SoundName("default").SoundVolume(1)
		}
	} else {
		note.Priority = apns2.PriorityLow // 5: delivered with the device's power in mind
		p.Category("message")
	}
	note.Payload = p
	c := s.prod
	if tok.Sandbox {
		c = s.dev
	}
	res, err := c.PushWithContext(ctx, note)
	if err != nil {
		return "", &SendError{Provider: engine.PushAPNs}
	}
	if res.StatusCode == 200 {
		return res.ApnsID, nil
	}
	se := &SendError{Provider: engine.PushAPNs, Status: res.StatusCode, Reason: res.Reason}
	switch {
	case res.StatusCode == 410, res.Reason == apns2.ReasonBadDeviceToken, res.Reason == apns2.ReasonDeviceTokenNotForTopic, res.Reason == apns2.ReasonUnregistered:
		se.Dead = true
	case res.StatusCode == 429 || res.StatusCode >= 500:
	case res.StatusCode == 403 && res.Reason == apns2.ReasonExpiredProviderToken:
		// apns2 makes a new JWT when it is older than its refresh
		// interval; a clock skew can still make APNs refuse it: retry.
	default:
		se.Permanent = true
	}
	return "", se
}

func threadOf(n *Note) string {
	if n.isDing() {
		return "ding"
	}
	return "messages"
}

// categoryOf names the notification category of a DING: "ding.N" for N
// choices (the app registers one category per count, each with actions
// ActionID(1..N) titled from the payload's ding.choices), "ding.0" for a
// plain confirm.
func categoryOf(n *Note) string { return "ding." + strconv.Itoa(len(n.Choices)) }

// dingData is what a DING's notification carries for the app besides the
// alert: its id, its choices and the actions that answer them.
func dingData(n *Note) map[string]any {
	acts := make([]string, 0, max(1, len(n.Choices)))
	for i := range max(1, len(n.Choices)) {
		acts = append(acts, ActionID(i+1))
	}
	return map[string]any{"id": n.Ding.String(), "choices": n.Choices, "actions": acts}
}
