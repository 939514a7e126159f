package httpapi

import (
	"context"
	"net/http"
	"time"

	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
)

// PushRegistry is an optional capability of Config.Engine (found by type
// assertion; *engine.Engine has it): devices' push registrations. Without
// it the push routes answer 501 UNSUPPORTED.
type PushRegistry interface {
	RegisterPushToken(ctx context.Context, user string, t engine.PushToken) (engine.PushToken, error)
	RemovePushToken(ctx context.Context, user, device, token string) (bool, error)
	PushTokens(user string) ([]engine.PushToken, error)
}

// Push routes:
//
//	PUT    /v1/users/{id}/push/{device}  {"provider","token","topic"?,"sandbox"?,"no_preview"?,"mute"?}
//	                                     register (or replace) the device's push token -> the registration
//	                                     (never the token); 400 BAD_REQUEST says what is wrong with it
//	GET    /v1/users/{id}/push           {"user","devices":[registration...]}
//	DELETE /v1/users/{id}/push/{device}  {"user","device","removed"}
func (a *API) pushRoutes() {
	a.admin("PUT /v1/users/{id}/push/{device}", PermUsersWrite, a.putPush)
	a.admin("GET /v1/users/{id}/push", PermUsersRead, a.listPush)
	a.admin("DELETE /v1/users/{id}/push/{device}", PermUsersWrite, a.deletePush)
}

// pushRegistration is a registration as the API shows it: no token.
type pushRegistration struct {
	Device    string    `json:"device"`
	Provider  string    `json:"provider"`
	Topic     string    `json:"topic,omitempty"`
	Sandbox   bool      `json:"sandbox"`
	NoPreview bool      `json:"no_preview"`
	Mute      bool      `json:"mute"`
	Updated   time.Time `json:"updated"`
}

func showPush(t engine.PushToken) pushRegistration {
	return pushRegistration{Device: t.Device, Provider: t.Provider, Topic: t.Topic, Sandbox: t.Sandbox, NoPreview: t.NoPreview, Mute: t.Mute, Updated: t.Updated}
}

func (a *API) pushRegistry(r *http.Request) (PushRegistry, error) {
	pr, ok := a.cfg.Engine.(PushRegistry)
	if !ok {
		return nil, errf(http.StatusNotImplemented, "UNSUPPORTED", "push registrations are not served by this server (several partitions)")
	}
	id := r.PathValue("id")
	if err := a.userInScope(r, id); err != nil {
		return nil, err
	}
	if u, ok := a.cfg.Directory.User(id); !ok || u.Status == fanout.StatusRemoved {
		return nil, errf(http.StatusNotFound, "NOT_FOUND", "no such user")
	}
	return pr, nil
}

func (a *API) putPush(r *http.Request) (int, any, error) {
	pr, err := a.pushRegistry(r)
	if err != nil {
		return 0, nil, err
	}
	var req struct {
		Provider  string `json:"provider"`
		Token     string `json:"token"`
		Topic     string `json:"topic"`
		Sandbox   bool   `json:"sandbox"`
		NoPreview bool   `json:"no_preview"`
		Mute      bool   `json:"mute"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	t, err := pr.RegisterPushToken(r.Context(), r.PathValue("id"), engine.PushToken{Device: r.PathValue("device"), Provider: req.Provider,
		Token: req.Token, Topic: req.Topic, Sandbox: req.Sandbox, NoPreview: req.NoPreview, Mute: req.Mute})
	if err != nil {
		return 0, nil, err
	}
	out := showPush(t)
	return http.StatusOK, map[string]any{"user": r.PathValue("id"), "device": out.Device, "provider": out.Provider, "topic": out.Topic,
		"sandbox": out.Sandbox, "no_preview": out.NoPreview, "mute": out.Mute, "updated": out.Updated}, nil
}

func (a *API) listPush(r *http.Request) (int, any, error) {
	pr, err := a.pushRegistry(r)
	if err != nil {
		return 0, nil, err
	}
	ts, err := pr.PushTokens(r.PathValue("id"))
	if err != nil {
		return 0, nil, err
	}
	out := []pushRegistration{}
	for _, t := range ts {
		out = append(out, showPush(t))
	}
	return http.StatusOK, map[string]any{"user": r.PathValue("id"), "devices": out}, nil
}

func (a *API) deletePush(r *http.Request) (int, any, error) {
	pr, err := a.pushRegistry(r)
	if err != nil {
		return 0, nil, err
	}
	ok, err := pr.RemovePushToken(r.Context(), r.PathValue("id"), r.PathValue("device"), "")
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, map[string]any{"user": r.PathValue("id"), "device": r.PathValue("device"), "removed": ok}, nil
}
