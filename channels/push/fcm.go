package push

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/jwt"

	"github.com/dingmq/ding/engine"
)

// fcmSender sends through FCM's HTTP v1 API with a service account: a
// JWT-bearer grant from golang.org/x/oauth2/jwt (access tokens cached
// and refreshed by oauth2; not oauth2/google, whose application-default
// lookup would add cloud.google.com/go/compute/metadata for nothing) and a small client for messages:send.
//
// Why not firebase.google.com/go/v4/messaging: it brings the whole Google
// Cloud client stack (google.golang.org/api, grpc, opencensus/otel,
// cloud.google.com/go/firestore and storage through firebase's other
// services) for one POST; the request and its error model are small and
// documented (https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages).
type fcmSender struct {
	client   *http.Client // adds the access token
	endpoint string       // .../v1/projects/PROJECT/messages:send
}

const fcmScope = "https://www.googleapis.com/auth/firebase.messaging"

func newFCM(cfg *Config) (*fcmSender, error) {
	b, err := os.ReadFile(cfg.FCMCredentialsFile)
	if err != nil {
		return nil, fmt.Errorf("push: FCM credentials: %w", err)
	}
	var meta struct {
		Type         string `json:"type"`
		ProjectID    string `json:"project_id"`
		PrivateKey   string `json:"private_key"`
		PrivateKeyID string `json:"private_key_id"`
		ClientEmail  string `json:"client_email"`
		TokenURI     string `json:"token_uri"`
	}
	if err := json.Unmarshal(b, &meta); err != nil || meta.Type != "service_account" || meta.ProjectID == "" || meta.PrivateKey == "" || meta.ClientEmail == "" {
		// Never the file's content: it holds the private key.
		return nil, fmt.Errorf("push: FCM credentials %s: not a service-account JSON file (type, project_id, private_key, client_email)", cfg.FCMCredentialsFile)
	}
	jc := &jwt.Config{Email: meta.ClientEmail, PrivateKey: []byte(meta.PrivateKey), PrivateKeyID: meta.PrivateKeyID,
		Scopes: []string{fcmScope}, TokenURL: meta.TokenURI}
	if jc.TokenURL == "" {
		jc.TokenURL = "https://oauth2.googleapis.com/token"
	}
	if cfg.FCMTokenURL != "" {
		jc.TokenURL = cfg.FCMTokenURL
	}
	base := &http.Transport{Proxy: http.ProxyFromEnvironment, TLSClientConfig: cfg.TLSConfig, ForceAttemptHTTP2: true,
		MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second}
	// oauth2 fetches tokens with the client in the context it is given
	// (its API): the same transport, so that a private CA applies.
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Transport: base, Timeout: cfg.Timeout})
	client := &http.Client{Transport: &oauth2.Transport{Source: oauth2.ReuseTokenSource(nil, jc.TokenSource(ctx)), Base: base}, Timeout: cfg.Timeout}
	ep := FCMEndpoint
	if cfg.FCMEndpoint != "" {
		ep = strings.TrimRight(cfg.FCMEndpoint, "/")
	}
	return &fcmSender{client: client, endpoint: ep + "/v1/projects/" + meta.ProjectID + "/messages:send"}, nil
}

// fcmMessage is the v1 message resource, the fields Ding sets.
type fcmMessage struct {
	Token        string            `json:"token"`
	Notification *fcmNotification  `json:"notification,omitempty"`
	Data         map[string]string `json:"data,omitempty"`
	Android      fcmAndroid        `json:"android"`
}

type fcmNotification struct {
	Title string `json:"title"`
	Body  string `json:"body,omitempty"`
}

type fcmAndroid struct {
	Priority     string            `json:"priority"` // HIGH or NORMAL
	CollapseKey  string            `json:"collapse_key,omitempty"`
	Notification *fcmAndroidNotice `json:"notification,omitempty"`
}

type fcmAndroidNotice struct {
	ChannelID         string `json:"channel_id,omitempty"`
	ClickAction       string `json:"click_action,omitempty"`
	NotificationCount int    `json:"notification_count,omitempty"`
	Tag               string `json:"tag,omitempty"`
}

func (s *fcmSender) send(ctx context.Context, tok engine.PushToken, n *Note) (string, error) {
	m := fcmMessage{Token: tok.Token, Notification: &fcmNotification{Title: n.Title, Body: n.Body},
		Android: fcmAndroid{Priority: "NORMAL", CollapseKey: n.Collapse, Notification: &fcmAndroidNotice{ChannelID: "messages", Tag: n.Collapse}}}
	if n.Badge > 0 {
		m.Android.Notification.NotificationCount = n.Badge
	}
	if n.isDing() {
		d := dingData(n)
		choices, _ := json.Marshal(d["choices"])
		acts, _ := json.Marshal(d["actions"])
		m.Data = map[string]string{"ding": n.Ding.String(), "choices": string(choices), "actions": string(acts)}
		m.Android.Priority = "HIGH"
		m.Android.Notification.ChannelID = "ding"
		m.Android.Notification.ClickAction = categoryOf(n)
		if n.Critical {
			m.Android.Notification.ChannelID = "ding-critical"
		}
	}
	body, err := json.Marshal(map[string]any{"message": m})
	if err != nil {
		return "", &SendError{Provider: engine.PushFCM, Permanent: true, Reason: "payload"}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.endpoint, bytes.NewReader(body))
	if err != nil {
		return "", &SendError{Provider: engine.PushFCM, Permanent: true, Reason: "request"}
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := s.client.Do(req)
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.Response != nil && re.Response.StatusCode >= 400 && re.Response.StatusCode < 500 {
			// The token endpoint refused the service account: no send
			// will work until the credentials are fixed.
			return "", &SendError{Provider: engine.PushFCM, Status: re.Response.StatusCode, Reason: "auth", Permanent: true}
		}
		return "", &SendError{Provider: engine.PushFCM}
	}
	defer res.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	if res.StatusCode == 200 {
		var ok struct {
			Name string `json:"name"`
		}
		_ = json.Unmarshal(rb, &ok)
		return ok.Name[strings.LastIndexByte(ok.Name, '/')+1:], nil
	}
	return "", classifyFCM(res, rb)
}

// classifyFCM maps an FCM error answer: UNREGISTERED (404), or
// INVALID_ARGUMENT about the token, is a dead token; 429 and 5xx are
// retried (with Retry-After); other 4xx are final.
func classifyFCM(res *http.Response, body []byte) *SendError {
	var e struct {
		Error struct {
			Status  string `json:"status"`
			Message string `json:"message"`
			Details []struct {
				Type      string `json:"@type"`
				ErrorCode string `json:"errorCode"`
			} `json:"details"`
		} `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	se := &SendError{Provider: engine.PushFCM, Status: res.StatusCode, Reason: e.Error.Status}
	for _, d := range e.Error.Details {
		if strings.HasSuffix(d.Type, "google.firebase.fcm.v1.FcmError") && d.ErrorCode != "" {
			se.Reason = d.ErrorCode
		}
	}
	if s := res.Header.Get("Retry-After"); s != "" {
		if secs, err := strconv.Atoi(s); err == nil && secs >= 0 {
			se.RetryAfter = time.Duration(secs) * time.Second
		} else if t, err := http.ParseTime(s); err == nil {
			se.RetryAfter = max(0, time.Until(t))
		}
	}
	msg := strings.ToLower(e.Error.Message)
	switch {
	case se.Reason == "UNREGISTERED" || res.StatusCode == 404:
		se.Dead = true
	case se.Reason == "INVALID_ARGUMENT" && (strings.Contains(msg, "registration token") || strings.Contains(msg, "message.token")):
		se.Dead = true
	case res.StatusCode == 429 || res.StatusCode >= 500:
	default:
		se.Permanent = true
	}
	return se
}
