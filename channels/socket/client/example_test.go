package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
)

// Two applications on one server. Bo's takes its entries in one goroutine
// and answers each from there: Read for a message (when the user has seen
// it), Confirm for a DING, then Ack. Ana's sends, and follows what becomes
// of what she sent through the receipts and DING events in her stream.
func Example() {
	srv := startExampleServer("ana", "bo") // a Ding node on 127.0.0.1 (exampleserver_test.go)
	defer srv.Stop()
	ctx := context.Background()

	// Bo's application.
	bo, err := client.Dial(ctx, client.Config{Addr: srv.Addr(), Token: srv.Token("bo", "phone"), Device: "phone"})
	if err != nil {
		log.Fatal(err)
	}
	boDone := make(chan struct{})
	go func() {
		defer close(boDone)
		for e := range bo.Entries() { // ends when bo is closed
			if m := e.Message; m != nil {
				fmt.Printf("bo: %q from %s\n", m.Body, m.From)
				var err error
				if m.Kind == pb.Kind_DING {
					err = bo.Confirm(ctx, m.ID, 1) // the first of m.Choices
				} else {
					err = bo.Read(ctx, m.ID)
				}
				switch {
				case errors.Is(err, client.ErrClosed): // the application is stopping
				case err != nil:
					log.Printf("bo: %v", err) // a disconnect (retry) or a refusal (see the code)
				}
			}
			bo.Ack(e.Seq) // processed
		}
	}()

	// Ana's application.
	ana, err := client.Dial(ctx, client.Config{Addr: srv.Addr(), Token: srv.Token("ana", "laptop"), Device: "laptop"})
	if err != nil {
		log.Fatal(err)
	}
	defer ana.Close()
	sent, err := ana.Send(ctx, []string{"bo"}, []byte("lunch at noon?")) // returns once durable
	if err != nil {
		log.Fatal(err) // an *client.UnsureError: resend with client.WithClientID(its ClientMsgID)
	}
	for e := range ana.Entries() {
		if r := e.Receipt; r != nil && r.IDs[0] == sent.ID && r.State == pb.State_READ_STATE {
			fmt.Printf("ana: %s read it\n", r.User)
			break
		}
	}
	srv.Ding("ana", "bo", "server room flooded", "on my way", "can't") // DINGs come through the admin API
	for e := range ana.Entries() {
		if d := e.Ding; d != nil && d.Event == "confirmed" {
			fmt.Printf("ana: %s confirmed: %s\n", d.Recipient, d.Detail)
			break
		}
	}

	bo.Close()
	<-boDone
	if seq, ok := bo.Cursor(); ok {
		_ = seq // persist it: bo's next start dials with Config.Cursor = &seq
	}

	// Output:
	// bo: "lunch at noon?" from ana
	// ana: bo read it
	// bo: "server room flooded" from ana
	// ana: bo confirmed: 1 on my way
}
