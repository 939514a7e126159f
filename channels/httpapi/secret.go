package httpapi

import (
	"errors"
	"net/http"
	"time"

	"github.com/dingmq/ding/engine"
)

// secretRoutes registers the secret chat routes (engine/secret.go). Admins
// see metadata only: who is in a chat, their pseudonyms, its level and
// burn delay, how many of its messages are live. No admin route returns a
// secret message's body (and none can: POST /v1/announcements/{id}/reding
// refuses a secret message, which is the one route that reads a body).
//
//	POST /v1/secret-chats           {"from","to","level":1|2|3,"burn_after_s"}
//	                                -> 201 {"id","level","burn_after_s","creator","created","members":[{"user","pseudonym"}]}
//	                                   422 UNKNOWN_USER (a participant unknown or removed), 400 BAD_CHAT
//	                                   (a level other than 1-3, a burn delay out of range or below level 3,
//	                                   a chat with oneself)
//	GET  /v1/secret-chats/{id}      -> the same, with "live_messages"
//	GET  /v1/users/{id}/secret-chats -> {"user","chats":[{...,"live_messages"}]}, oldest first
//
// Messages are sent in a chat with POST /v1/messages and "chat" (see
// httpapi.go); burn_after_s is whole seconds, 0 meaning the server's
// default (dingd's burn-after), and only a level-3 chat may choose it.
func (a *API) secretRoutes() {
	a.admin("POST /v1/secret-chats", PermSecrets, a.createChat)
	a.admin("GET /v1/secret-chats/{id}", PermSecrets, a.getChat)
	a.admin("GET /v1/users/{id}/secret-chats", PermSecrets, a.userChats)
}

// chatJSON is a secret chat's metadata as admins see it.
type chatJSON struct {
	ID         string          `json:"id"`
	Level      engine.Level    `json:"level"`
	BurnAfterS int64           `json:"burn_after_s"`
	Creator    string          `json:"creator"`
	Created    time.Time       `json:"created"`
	Members    []engine.Member `json:"members"`
	Live       *int            `json:"live_messages,omitempty"`
}

func newChatJSON(ch engine.Chat) chatJSON {
	return chatJSON{
		ID: ch.ID.String(), Level: ch.Level, BurnAfterS: int64(ch.BurnAfter / time.Second),
		Creator: ch.Creator, Created: ch.Created.UTC(), Members: ch.Members,
	}
}

// maxBurnAfterS bounds burn_after_s before it becomes a Duration (the
// engine refuses anything above its BurnAfter anyway).
const maxBurnAfterS = 1 << 31

func (a *API) createChat(r *http.Request) (int, any, error) {
	var req struct {
		From       string `json:"from"`
		To         string `json:"to"`
		Level      int    `json:"level"`
		BurnAfterS int64  `json:"burn_after_s"`
	}
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	for _, u := range []string{req.From, req.To} {
		if !a.cfg.Directory.Active(u) {
			return 0, nil, errf(http.StatusUnprocessableEntity, "UNKNOWN_USER", "no such active user %q", u)
		}
	}
	if req.Level < int(engine.Level1) || req.Level > int(engine.Level3) {
		return 0, nil, errf(http.StatusBadRequest, "BAD_CHAT", "level %d: want 1, 2 or 3", req.Level)
	}
	if req.BurnAfterS < 0 || req.BurnAfterS > maxBurnAfterS {
		return 0, nil, errf(http.StatusBadRequest, "BAD_CHAT", "burn_after_s %d: want whole seconds, 0 for the default", req.BurnAfterS)
	}
	ch, err := a.cfg.Engine.CreateChat(r.Context(), engine.ChatRequest{
		From: req.From, To: req.To, Level: engine.Level(req.Level), BurnAfter: time.Duration(req.BurnAfterS) * time.Second,
	})
	if errors.Is(err, engine.ErrUnknownRecipient) { // removed since the check above
		return 0, nil, errf(http.StatusUnprocessableEntity, "UNKNOWN_USER", "%v", err)
	}
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, newChatJSON(ch), nil
}

func (a *API) getChat(r *http.Request) (int, any, error) {
	id, err := engine.ParseID(r.PathValue("id"))
	if err != nil {
		return 0, nil, errf(http.StatusBadRequest, "BAD_REQUEST", "malformed chat id")
	}
	ch, err := a.cfg.Engine.Chat(id)
	if errors.Is(err, engine.ErrNotFound) {
		return 0, nil, notFound("secret chat")
	}
	if err != nil {
		return 0, nil, err
	}
	// The live count comes with the creator's list of chats: every
	// message of a chat is indexed under both participants.
	cs, err := a.cfg.Engine.Chats(ch.Creator)
	if err != nil {
		return 0, nil, err
	}
	out := newChatJSON(ch)
	live := 0
	for _, c := range cs {
		if c.ID == id {
			live = c.Live
			break
		}
	}
	out.Live = &live
	return http.StatusOK, out, nil
}

func (a *API) userChats(r *http.Request) (int, any, error) {
	user := r.PathValue("id")
	if _, ok := a.cfg.Directory.User(user); !ok { // removed users are listed too
		return 0, nil, notFound("user")
	}
	cs, err := a.cfg.Engine.Chats(user)
	if err != nil {
		return 0, nil, err
	}
	out := make([]chatJSON, len(cs))
	for i, c := range cs {
		out[i] = newChatJSON(c.Chat)
		out[i].Live = &c.Live
	}
	return http.StatusOK, map[string]any{"user": user, "chats": out}, nil
}
