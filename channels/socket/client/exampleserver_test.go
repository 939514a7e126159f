package client_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/dingmq/ding/channels/auth"
	"github.com/dingmq/ding/engine"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/node"
)

// exampleServer is a real Ding node on 127.0.0.1 for the examples, which
// have no testing.TB for nodetest. In an application, the address is
// dingd's --listen, tokens come from the admin API (POST /v1/tokens, or
// dingctl token) and DINGs are sent through it too.
type exampleServer struct {
	n    *node.Node
	dir  string
	keys *auth.Keys
}

// startExampleServer starts a node with the given users; it panics on
// failure (an example cannot fail otherwise).
func startExampleServer(users ...string) *exampleServer {
	dir, err := os.MkdirTemp("", "ding-example-")
	if err != nil {
		panic(err)
	}
	n, err := node.Start(node.Config{DataDir: dir, SocketAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		panic(err)
	}
	s := &exampleServer{n: n, dir: dir}
	for _, id := range users {
		if _, err := n.Directory().PutUser(fanout.User{ID: id, Name: id}); err != nil {
			panic(err)
		}
	}
	if s.keys, err = auth.LoadOrCreate(dir); err != nil {
		panic(err)
	}
	return s
}

// Addr is the socket address.
func (s *exampleServer) Addr() string { return s.n.SocketAddr() }

// Token mints a client token for user's device.
func (s *exampleServer) Token(user, device string) string {
	tok, err := s.keys.MintClient(user, device, time.Hour)
	if err != nil {
		panic(err)
	}
	return tok
}

// Ding sends a DING with an in-app policy, as the admin API does.
func (s *exampleServer) Ding(from, to, text string, choices ...string) {
	_, err := s.n.Engine().Ding(context.Background(), engine.DingRequest{From: from, To: []string{to}, Text: text, Policy: "inapp", Choices: choices})
	if err != nil {
		panic(err)
	}
}

// Stop stops the node and removes its data.
func (s *exampleServer) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.n.Shutdown(ctx); err != nil {
		panic(err)
	}
	os.RemoveAll(s.dir)
}
