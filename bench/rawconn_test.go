package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
)

// Answers reach their submits by ref whatever their order; other frames
// go to onFrame; submits left when the connection ends fail.
func TestRawConnMatchesAnswersByRef(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	c := &rawConn{nc: client, pending: make(map[uint64]chan submitAnswer)}
	frames := make(chan proto.Message, 1)
	loop := make(chan error, 1)
	go func() {
		loop <- c.readLoop(func(m proto.Message, _ time.Time) error {
			frames <- m
			return nil
		})
	}()

	// The fake server reads three submits, then answers 2, delivers a
	// message, answers 1 with an error, and hangs up without answering 3.
	done := make(chan error, 1)
	go func() {
		for range 3 {
			m, err := readFrame(server, 1<<20)
			if _, ok := m.(*pb.Submit); !ok {
				done <- fmt.Errorf("the server read %v (%v), want a SUBMIT", m, err)
				return
			}
		}
		for _, f := range [][]byte{
			wire.Encode(pb.FrameType_SUBMIT_ACK, &pb.SubmitAck{Ref: 2, Id: "two"}),
			wire.Encode(pb.FrameType_DELIVER, &pb.Deliver{Seq: 7, Id: "x"}),
			wire.Encode(pb.FrameType_ERROR, &pb.Error{Ref: 1, Code: pb.Code_TOO_MANY_INFLIGHT, Detail: "slow down"}),
		} {
			if _, err := server.Write(f); err != nil {
				done <- err
				return
			}
		}
		done <- server.Close()
	}()
	var answers [3]<-chan submitAnswer
	for i := range answers {
		ch, err := c.submit(&pb.Submit{Ref: uint64(i + 1), To: []string{"u1"}, Body: []byte("hi")})
		if err != nil {
			t.Fatalf("submit %d: %v", i+1, err)
		}
		answers[i] = ch
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if a := <-answers[1]; a.err != nil || a.id != "two" {
		t.Errorf("ref 2: %+v, want id two", a)
	}
	if a := <-answers[0]; a.err == nil {
		t.Errorf("ref 1: %+v, want the server's error", a)
	}
	if a := <-answers[2]; !errors.Is(a.err, errConnEnded) {
		t.Errorf("ref 3: %+v, want errConnEnded", a)
	}
	if d, ok := (<-frames).(*pb.Deliver); !ok || d.Seq != 7 {
		t.Errorf("onFrame got %v, want the DELIVER", d)
	}
	if err := <-loop; err != nil {
		t.Errorf("readLoop: %v", err)
	}
	if _, err := c.submit(&pb.Submit{Ref: 4}); !errors.Is(err, errConnEnded) {
		t.Errorf("submit after the end: %v, want errConnEnded", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.send(ctx, &pb.Submit{Ref: 5}); err == nil {
		t.Error("send on an ended connection succeeded")
	}
}
