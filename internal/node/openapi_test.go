package node_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/httpapi/openapitest"
	"github.com/dingmq/ding/cluster"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// TestClusterRoutesMatchOpenAPI: the cluster members' own routes
// (httpapi.ClusterRoutes) answer as the API's OpenAPI document says, on
// an owner and on its standby, each answer validated against the
// document the owner serves (channels/httpapi/openapitest). A handover
// that is accepted (202) is left out: it moves the partition.
func TestClusterRoutesMatchOpenAPI(t *testing.T) {
	coord := cluster.NewMemCoord(time.Now)
	ctx, cancel := context.WithCancel(context.Background())
	var done []chan error
	defer func() {
		cancel()
		for _, d := range done {
			if err := <-d; err != nil {
				t.Errorf("member: %v", err)
			}
		}
	}()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	run := func(id string, started chan<- *node.Node) string {
		addr := nodetest.FreeAddr(t)
		d := make(chan error, 1)
		done = append(done, d)
		mc := node.MemberConfig{
			Node:  node.Config{DataDir: t.TempDir(), SocketAddr: nodetest.FreeAddr(t), HTTPAddr: addr, Logger: quiet},
			Coord: coord, ID: id, Advertise: "http://" + addr, Secret: "s", LeaseTTL: time.Second,
			Started: func(n *node.Node) {
				if started != nil {
					started <- n
				}
			},
		}
		go func() { d <- node.RunMember(ctx, mc) }()
		return "http://" + addr
	}
	startedA := make(chan *node.Node, 1)
	owner := run("a", startedA)
	a := <-startedA
	tok := a.AdminToken()
	c := openapitest.New(t, owner)

	// The owner alone: no standby to hand over to.
	c.Call(t, "POST /v1/cluster/handover", "/v1/cluster/handover", tok, nil, 409)
	c.Call(t, "POST /v1/cluster/drain", "/v1/cluster/drain", tok, nil, 409)
	c.Call(t, "GET /v1/cluster", "/v1/cluster", tok, nil, 200)
	c.Call(t, "GET /v1/cluster", "/v1/cluster", "", nil, 401)
	c.Call(t, "POST /v1/cluster/forget", "/v1/cluster/forget?member=zz", tok, nil, 200)
	c.Call(t, "POST /v1/cluster/forget", "/v1/cluster/forget", tok, nil, 400)

	// Its standby, which asks the owner who the caller is.
	standby := run("b", nil)
	nodetest.WaitFor(t, "b to become the standby", 20*time.Second, func() bool {
		sb, _ := coord.Standby(ctx, 0)
		return sb == "b"
	})
	c.Base = standby
	if out := c.Call(t, "GET /v1/cluster", "/v1/cluster", tok, nil, 200); out["member"] != "b" || out["owner"] != "a" {
		t.Errorf("the standby's status: %v, want member b, owner a", out)
	}
	c.Call(t, "POST /v1/cluster/forget", "/v1/cluster/forget?member=zz", tok, nil, 200)
	c.Call(t, "POST /v1/cluster/drain", "/v1/cluster/drain", "", nil, 401)
	c.Call(t, "POST /v1/cluster/drain", "/v1/cluster/drain", tok, nil, 202)

	validated, succeeded := c.Coverage()
	for _, op := range []string{"GET /v1/cluster", "POST /v1/cluster/drain", "POST /v1/cluster/forget", "POST /v1/cluster/handover"} {
		if validated[op] == 0 || (op != "POST /v1/cluster/handover" && !succeeded[op]) {
			t.Errorf("%s: %d answers validated, a success %v", op, validated[op], succeeded[op])
		}
	}
	t.Logf("validated %d answers of the cluster routes", len(c.Answers))
}
