package node_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// A listener without TLS on an address beyond loopback is flagged
// (ding_plaintext_listeners, for DingPlaintextListener); loopback, or
// HTTPS, is not.
func TestPlaintextListenersAreFlagged(t *testing.T) {
	scrape := func(url string, c *http.Client) string {
		t.Helper()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	public := nodetest.Start(t, node.Config{HTTPAddr: "0.0.0.0:0", SocketAddr: "127.0.0.1:0"})
	port := public.HTTPAddr()[strings.LastIndex(public.HTTPAddr(), ":"):]
	m := scrape("http://127.0.0.1"+port+"/metrics", http.DefaultClient)
	for _, want := range []string{`ding_plaintext_listeners{listener="http"} 1`, `ding_plaintext_listeners{listener="socket"} 0`} {
		if !strings.Contains(m, want) {
			t.Errorf("a plain HTTP port on 0.0.0.0: /metrics lacks %q", want)
		}
	}
	local := nodetest.Start(t, node.Config{})
	if m := scrape("http://"+local.HTTPAddr()+"/metrics", http.DefaultClient); !strings.Contains(m, `ding_plaintext_listeners{listener="http"} 0`) {
		t.Error("a loopback HTTP port is flagged")
	}
}
