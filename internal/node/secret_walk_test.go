package node_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/channels/socket/wire"
	"github.com/dingmq/ding/fanout"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// rawConn speaks the protocol by hand and keeps every frame the server
// sent, byte for byte.
type rawConn struct {
	t      *testing.T
	nc     net.Conn
	frames [][]byte // every frame received, header included
	ref    uint64
}

func dialFrames(t *testing.T, n *node.Node, user, device string, cursor *uint64) (*rawConn, *pb.Welcome) {
	t.Helper()
	nc, err := net.Dial("tcp", n.SocketAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &rawConn{t: t, nc: nc}
	c.send(pb.FrameType_HELLO, &pb.Hello{Version: wire.Version, Token: nodetest.Token(t, n, user, device), Device: device, Cursor: cursor})
	return c, c.expect(pb.FrameType_WELCOME).(*pb.Welcome)
}

func (c *rawConn) send(ft pb.FrameType, m proto.Message) {
	c.t.Helper()
	if _, err := c.nc.Write(wire.Encode(ft, m)); err != nil {
		c.t.Fatalf("write %v: %v", ft, err)
	}
}

func (c *rawConn) nextRef() uint64 { c.ref++; return c.ref }

// read returns the next frame's type and message.
func (c *rawConn) read(deadline time.Time) (pb.FrameType, proto.Message, error) {
	c.nc.SetReadDeadline(deadline)
	var hdr [wire.HeaderLen]byte
	if _, err := io.ReadFull(c.nc, hdr[:]); err != nil {
		return 0, nil, err
	}
	n, ft, err := wire.ParseHeader(hdr[:], 1<<24)
	if err != nil {
		return 0, nil, err
	}
	frame := make([]byte, wire.HeaderLen+n-1)
	copy(frame, hdr[:])
	if _, err := io.ReadFull(c.nc, frame[wire.HeaderLen:]); err != nil {
		return 0, nil, err
	}
	c.frames = append(c.frames, frame)
	m, err := wire.Decode(ft, frame[wire.HeaderLen:])
	return ft, m, err
}

// expect reads (and acks stream entries) until a frame of type ft.
func (c *rawConn) expect(ft pb.FrameType) proto.Message {
	c.t.Helper()
	m, _ := c.expectWithin(ft, 10*time.Second)
	return m
}

func (c *rawConn) expectWithin(ft pb.FrameType, d time.Duration) (proto.Message, time.Time) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		got, m, err := c.read(deadline)
		if err != nil {
			c.t.Fatalf("waiting for %v: %v", ft, err)
		}
		if seq := entrySeq(m); seq != 0 {
			c.send(pb.FrameType_ACK, &pb.Ack{Seq: seq})
		}
		if got == pb.FrameType_ERROR && ft != pb.FrameType_ERROR {
			c.t.Fatalf("waiting for %v: error %v", ft, m)
		}
		if got == ft {
			return m, time.Now()
		}
	}
}

// entrySeq is the seq of a stream entry (the frames that carry one), or 0.
func entrySeq(m proto.Message) uint64 {
	if e, ok := m.(interface{ GetSeq() uint64 }); ok {
		return e.GetSeq()
	}
	return 0
}

// drain reads whatever arrives within d.
func (c *rawConn) drain(d time.Duration) {
	deadline := time.Now().Add(d)
	for {
		_, m, err := c.read(deadline)
		if err != nil {
			return
		}
		if seq := entrySeq(m); seq != 0 {
			c.send(pb.FrameType_ACK, &pb.Ack{Seq: seq})
		}
	}
}

// TestSecretChatFramesNameNobody walks every frame each participant of a
// level-3 secret chat receives over a real socket, through the chat's
// whole life (creation, message, delivery and read receipts, a receipts
// query, a screenshot report, a refused forward, the real-time burn, and a
// second device resuming after it), and finds in none of them the other
// party's user id, name or phone. It also checks the burn fires within a
// second of its deadline on the real clock.
func TestSecretChatFramesNameNobody(t *testing.T) {
	n := nodetest.Start(t, node.Config{})
	people := []fanout.User{
		{ID: "alice.realname", Name: "Alice Quietwater", Phone: "+15550001111"},
		{ID: "bob.realname", Name: "Bob Farthingale", Phone: "+15550002222"},
	}
	for _, u := range people {
		if _, err := n.Directory().PutUser(u); err != nil {
			t.Fatal(err)
		}
	}
	alice, _ := dialFrames(t, n, "alice.realname", "phone", nil)
	bob, _ := dialFrames(t, n, "bob.realname", "phone", nil)

	ref := alice.nextRef()
	alice.send(pb.FrameType_SECRET_CREATE, &pb.SecretCreate{Ref: ref, To: "bob.realname", Level: 3, BurnAfterMs: 5000})
	chat := alice.expect(pb.FrameType_OK).(*pb.Ok).Id
	created := bob.expect(pb.FrameType_SECRET_EVENT).(*pb.SecretEvent)
	if created.Chat != chat || created.Event != "created" || !strings.HasPrefix(created.Peer, "anon-") {
		t.Fatalf("bob's created event: %v", created)
	}

	alice.send(pb.FrameType_SUBMIT, &pb.Submit{Ref: alice.nextRef(), Chat: chat, Kind: pb.Kind_TEXT, Body: []byte("the vault code is 7731")})
	id := alice.expect(pb.FrameType_SUBMIT_ACK).(*pb.SubmitAck).Id
	d := bob.expect(pb.FrameType_DELIVER).(*pb.Deliver)
	if d.Id != id || d.From != created.Peer || !d.NoCopy || !d.NoForward || d.Watermark != created.You || d.Level != 3 || d.BurnAfterMs != 5000 {
		t.Fatalf("bob's DELIVER: %v", d)
	}
	bob.send(pb.FrameType_SCREENSHOT, &pb.Screenshot{Ref: bob.nextRef(), Chat: chat, Id: id})
	bob.expect(pb.FrameType_OK)
	for { // alice's own "created" may come first (or have come before her OK)
		shot := alice.expect(pb.FrameType_SECRET_EVENT).(*pb.SecretEvent)
		if shot.Event == "screenshot" {
			if shot.By != created.You || shot.Id != id {
				t.Fatalf("alice's screenshot event: %v", shot)
			}
			break
		}
	}
	// The read starts the 5 s burn timer; its deadline lies between the
	// READ leaving and its OK arriving.
	readSent := time.Now()
	bob.send(pb.FrameType_READ, &pb.Read{Ref: bob.nextRef(), Ids: []string{id}})
	_, okAt := bob.expectWithin(pb.FrameType_OK, 10*time.Second)
	for {
		r := alice.expect(pb.FrameType_RECEIPT).(*pb.Receipt)
		if r.User != created.You {
			t.Fatalf("alice's receipt names %q, not bob's pseudonym", r.User)
		}
		if r.State == pb.State_READ_STATE {
			break
		}
	}
	alice.send(pb.FrameType_RECEIPTS_QUERY, &pb.ReceiptsQuery{Ref: alice.nextRef(), Id: id})
	if rs := alice.expect(pb.FrameType_RECEIPTS).(*pb.Receipts); len(rs.Recipients) != 1 || rs.Recipients[0].User != created.You {
		t.Fatalf("receipts: %v", rs)
	}
	alice.send(pb.FrameType_SUBMIT, &pb.Submit{Ref: alice.nextRef(), To: []string{"bob.realname"}, Kind: pb.Kind_TEXT, Body: []byte("fwd"), ForwardOf: id})
	if e := alice.expect(pb.FrameType_ERROR).(*pb.Error); e.Code != pb.Code_NO_FORWARD || e.Fatal {
		t.Fatalf("forward of a secret message: %v", e)
	}

	burnAlice, atAlice := alice.expectWithin(pb.FrameType_BURN, 15*time.Second)
	burnBob, atBob := bob.expectWithin(pb.FrameType_BURN, 15*time.Second)
	if burnAlice.(*pb.Burn).Id != id || burnBob.(*pb.Burn).Id != id {
		t.Fatalf("burns: %v %v", burnAlice, burnBob)
	}
	for who, at := range map[string]time.Time{"alice": atAlice, "bob": atBob} {
		if early := readSent.Add(5 * time.Second); at.Before(early) {
			t.Errorf("%s got the burn %v before the deadline", who, early.Sub(at))
		}
		if late := at.Sub(okAt.Add(5 * time.Second)); late > time.Second {
			t.Errorf("%s got the burn %v after the deadline, want within 1s", who, late)
		}
		t.Logf("%s: burn received %v after the read was sent (deadline 5s)", who, at.Sub(readSent))
	}
	if !bytes.Contains(bytes.Join(bob.frames, nil), []byte("the vault code is 7731")) {
		t.Fatal("bob never got the body: the walk below would prove nothing")
	}
	// The server's whole data directory holds no byte of the plaintext
	// (it was only ever stored encrypted, and its key is erased).
	if err := filepath.WalkDir(n.DataDir(), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte("vault code")) {
			t.Errorf("%s holds the plaintext", p)
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}

	// bob's laptop was offline: resuming from the start it gets burns,
	// never the body.
	zero := uint64(0)
	laptop, _ := dialFrames(t, n, "bob.realname", "laptop", &zero)
	laptop.drain(time.Second)
	all := bytes.Join(laptop.frames, nil)
	if bytes.Contains(all, []byte("7731")) || bytes.Count(all, []byte(id)) < 2 {
		t.Fatalf("bob's offline device: body found %v, id seen %d times", bytes.Contains(all, []byte("7731")), bytes.Count(all, []byte(id)))
	}
	alice.drain(200 * time.Millisecond)
	bob.drain(200 * time.Millisecond)

	for _, tc := range []struct {
		who    string
		frames [][]byte
		other  fanout.User
	}{
		{"alice", alice.frames, people[1]},
		{"bob", bob.frames, people[0]},
		{"bob's laptop", laptop.frames, people[0]},
	} {
		if len(tc.frames) < 3 {
			t.Fatalf("%s got only %d frames", tc.who, len(tc.frames))
		}
		for i, f := range tc.frames {
			for _, secret := range []string{tc.other.ID, tc.other.Name, tc.other.Phone, strings.Split(tc.other.ID, ".")[0]} {
				if bytes.Contains(bytes.ToLower(f), bytes.ToLower([]byte(secret))) {
					t.Errorf("%s's frame %d (type %v) contains %q: %q", tc.who, i, pb.FrameType(f[4]), secret, f)
				}
			}
		}
		t.Logf("%s: %d frames walked", tc.who, len(tc.frames))
	}
}
