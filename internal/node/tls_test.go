package node_test

import (
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// A client CA (mTLS) is reloaded with the certificate: once the file
// names another CA, a certificate the old one signed is refused, even on
// a connection that resumes a TLS session made before (its ticket holds
// the chains verified then).
func TestClientCAReloadEndsResumedSessions(t *testing.T) {
	serverCA, oldCA, newCA := nodetest.NewCA(t), nodetest.NewCA(t), nodetest.NewCA(t)
	cert, key := serverCA.ServerFiles(t)
	caFile := filepath.Join(t.TempDir(), "clients.pem")
	copyFile(t, oldCA.File, caFile)
	n := nodetest.Start(t, node.Config{TLSCert: cert, TLSKey: key, TLSClientCA: caFile})
	owner := oldCA.Client(t, time.Time{}, "", "ding:admin/owner")
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{
		RootCAs: serverCA.Pool, Certificates: []tls.Certificate{owner}, ClientSessionCache: tls.NewLRUClientSessionCache(8)}}}
	get := func() (*http.Response, error) {
		resp, err := c.Get("https://" + n.HTTPAddr() + "/v1/admins/me")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
	if resp, err := get(); err != nil || resp.StatusCode != 200 {
		t.Fatalf("the owner's certificate: %v %v", resp, err)
	}
	if resp, err := get(); err != nil || resp.StatusCode != 200 || !resp.TLS.DidResume {
		t.Fatalf("a second connection did not resume the session: %v %v", resp, err)
	}
	copyFile(t, newCA.File, caFile)
	if err := n.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	if resp, err := get(); err == nil {
		t.Fatalf("a certificate of a CA taken out of --tls-client-ca was served: %d (resumed %v)", resp.StatusCode, resp.TLS.DidResume)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
