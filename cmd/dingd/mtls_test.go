package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/channels/socket/pb"
	"github.com/dingmq/ding/internal/node/nodetest"
	"github.com/dingmq/ding/internal/redistest"
)

// mtlsProc is a dingd serving TLS with a client CA (--tls-client-ca), and
// the CAs of its test.
type mtlsProc struct {
	*proc
	tlsSock  string
	serverCA *nodetest.CA // signed dingd's certificate
	clientCA *nodetest.CA // --tls-client-ca
	owner    string       // the first-start admin token
}

func startMTLS(t *testing.T) *mtlsProc {
	t.Helper()
	m := &mtlsProc{proc: newProc(t, t.TempDir()), tlsSock: nodetest.FreeAddr(t), serverCA: nodetest.NewCA(t), clientCA: nodetest.NewCA(t)}
	cert, key := m.serverCA.ServerFiles(t)
	m.launch(t, m.args("--tls-cert", cert, "--tls-key", key, "--tls-listen", m.tlsSock, "--tls-client-ca", m.clientCA.File)...)
	m.waitReady(t, 20*time.Second)
	return m
}

// waitReady waits up to d for dingd to be ready over HTTPS, and reads
// its first-start admin token.
func (m *mtlsProc) waitReady(t *testing.T, d time.Duration) {
	t.Helper()
	nodetest.WaitFor(t, "dingd over HTTPS", d, func() bool {
		code, _, err := m.do(nil, "", "GET", "/readyz", nil)
		return err == nil && code == 200
	})
	tok, err := os.ReadFile(filepath.Join(m.data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	m.owner = strings.TrimSpace(string(tok))
}

// do sends one admin API request over HTTPS, presenting cert (nil: none)
// and the bearer token tok ("": none), and returns the status and the
// decoded answer; err is the transport's (a refused handshake).
func (m *mtlsProc) do(cert *tls.Certificate, tok, method, path string, in any) (int, map[string]any, error) {
	cfg := &tls.Config{RootCAs: m.serverCA.Pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "https://"+m.http+path, body)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &out)
	return resp.StatusCode, out, nil
}

// must is do as the owner, which must answer want.
func (m *mtlsProc) must(t *testing.T, want int, method, path string, in any) map[string]any {
	t.Helper()
	code, out, err := m.do(nil, m.owner, method, path, in)
	if err != nil || code != want {
		t.Fatalf("%s %s: %d %v %v, want %d", method, path, code, out, err, want)
	}
	return out
}

func errorCode(out map[string]any) string {
	e, _ := out["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

// TestClientCertificatesOnTheAdminAPI: with --tls-client-ca, a
// certificate naming an admin (URI SAN ding:admin/NAME) authenticates as
// that admin, within its role and scope, with no token; a certificate
// from another CA fails the handshake; one naming no admin, an unknown
// one, or (by its common name only) the owner gets 401; revoking the
// admin ends the certificate, and adding it again does not bring it back;
// a request with no certificate, or with a token, is judged by its token.
func TestClientCertificatesOnTheAdminAPI(t *testing.T) {
	m := startMTLS(t)
	m.must(t, 201, "PUT", "/v1/departments/eng", map[string]any{"name": "Engineering"})
	for _, u := range []map[string]any{{"id": "ana", "name": "Ana", "department": "eng"}, {"id": "bo", "name": "Bo", "department": "eng"}, {"id": "cy", "name": "Cy"}} {
		m.must(t, 201, "POST", "/v1/users", u)
	}
	m.must(t, 201, "POST", "/v1/admins", map[string]any{"name": "rep", "role": "sender"})
	m.must(t, 201, "POST", "/v1/admins", map[string]any{"name": "lead", "role": "dept-admin", "dept": "eng"})

	rep := m.clientCA.Client(t, time.Time{}, "rep", "ding:admin/rep")
	lead := m.clientCA.Client(t, time.Time{}, "lead", "ding:admin/lead")
	ghost := m.clientCA.Client(t, time.Time{}, "ghost", "ding:admin/ghost")
	cnOwner := m.clientCA.Client(t, time.Time{}, "owner")                        // a common name, no ding: URI
	device := m.clientCA.Client(t, time.Time{}, "ana", "ding:client/ana/phone")  // a device, not an admin
	foreign := nodetest.NewCA(t).Client(t, time.Time{}, "rep", "ding:admin/rep") // another CA
	msg := map[string]any{"from": "ana", "to": []string{"bo"}, "text": "sent with a certificate"}

	cases := []struct {
		name         string
		cert         *tls.Certificate
		tok          string
		method, path string
		body         any
		code         int
		errCode      string // the answer's error code, or its "name" for 200
	}{
		{"no certificate: the token works", nil, m.owner, "GET", "/v1/admins/me", nil, 200, "owner"},
		{"no certificate, no token", nil, "", "GET", "/v1/admins/me", nil, 401, "UNAUTHENTICATED"},
		{"an admin's certificate is that admin", &rep, "", "GET", "/v1/admins/me", nil, 200, "rep"},
		{"within its role", &rep, "", "POST", "/v1/messages", msg, 200, ""},
		{"and not beyond", &rep, "", "POST", "/v1/users", map[string]any{"id": "dee", "name": "Dee"}, 403, "FORBIDDEN"},
		{"a dept-admin's certificate, inside its subtree", &lead, "", "GET", "/v1/users/ana", nil, 200, ""},
		{"a dept-admin's certificate, outside", &lead, "", "GET", "/v1/users/cy", nil, 403, "OUT_OF_SCOPE"},
		{"an unknown admin", &ghost, "", "GET", "/v1/admins/me", nil, 401, "UNAUTHENTICATED"},
		{"a common name is never an admin", &cnOwner, "", "GET", "/v1/admins/me", nil, 401, "UNAUTHENTICATED"},
		{"a device's certificate is no admin", &device, "", "GET", "/v1/admins/me", nil, 401, "UNAUTHENTICATED"},
		{"a token beside a certificate decides", &rep, m.owner, "GET", "/v1/admins/me", nil, 200, "owner"},
		{"a bad token beside a good certificate", &rep, "forged", "GET", "/v1/admins/me", nil, 401, "UNAUTHENTICATED"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, out, err := m.do(c.cert, c.tok, c.method, c.path, c.body)
			if err != nil {
				t.Fatal(err)
			}
			got := errorCode(out)
			if code == 200 && c.errCode != "" {
				got, _ = out["name"].(string)
			}
			if code != c.code || got != c.errCode {
				t.Fatalf("%d %v, want %d %s", code, out, c.code, c.errCode)
			}
		})
	}
	if code, out, _ := m.do(&rep, "", "GET", "/v1/admins/me", nil); code != 200 || out["role"] != "sender" {
		t.Fatalf("rep's certificate: %d %v, want role sender", code, out)
	}
	if _, _, err := m.do(&foreign, "", "GET", "/v1/admins/me", nil); err == nil {
		t.Fatal("a certificate from another CA was served")
	}

	// Revoking the admin ends its certificate; adding it again does not
	// bring that certificate back, a new one works.
	m.must(t, 200, "POST", "/v1/admins/rep/revoke", nil)
	if code, out, _ := m.do(&rep, "", "GET", "/v1/admins/me", nil); code != 401 || !strings.Contains(out["error"].(map[string]any)["detail"].(string), "revoked") {
		t.Fatalf("a revoked admin's certificate: %d %v, want 401 revoked", code, out)
	}
	m.must(t, 201, "POST", "/v1/admins", map[string]any{"name": "rep", "role": "sender"})
	if code, out, _ := m.do(&rep, "", "GET", "/v1/admins/me", nil); code != 401 || !strings.Contains(out["error"].(map[string]any)["detail"].(string), "added again") {
		t.Fatalf("a certificate from before the admin was added again: %d %v, want 401", code, out)
	}
	rep2 := m.clientCA.Client(t, time.Now(), "rep", "ding:admin/rep")
	if code, out, _ := m.do(&rep2, "", "GET", "/v1/admins/me", nil); code != 200 || out["name"] != "rep" {
		t.Fatalf("a certificate issued after the admin was added again: %d %v", code, out)
	}
	// The audit log names the admin the certificate authenticated.
	m.must(t, 201, "POST", "/v1/admins", map[string]any{"name": "hr", "role": "directory"})
	hr := m.clientCA.Client(t, time.Time{}, "hr", "ding:admin/hr")
	if code, out, _ := m.do(&hr, "", "POST", "/v1/users", map[string]any{"id": "dee", "name": "Dee"}); code != 201 {
		t.Fatalf("hr's certificate adds a user: %d %v", code, out)
	}
	audit := m.must(t, 200, "GET", "/v1/audit", nil)
	b, _ := json.Marshal(audit)
	if !strings.Contains(string(b), `"actor":"hr"`) {
		t.Fatalf("the audit log does not name hr: %s", b)
	}
}

// TestClientCertificatesOnTheSocket: on the TLS socket port, a HELLO
// without a token is authenticated by a certificate naming the device
// (ding:client/USER/DEVICE); the device must match, an admin's
// certificate or one from another CA is refused, and an offboarded
// user's certificate stops working (its live session is closed too), as
// a revoked device's does.
func TestClientCertificatesOnTheSocket(t *testing.T) {
	m := startMTLS(t)
	for _, u := range []string{"ana", "bo"} {
		m.must(t, 201, "POST", "/v1/users", map[string]any{"id": u, "name": u})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dial := func(cert *tls.Certificate, tok, device string) (*client.Client, error) {
		cfg := &tls.Config{RootCAs: m.serverCA.Pool}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		return client.Dial(ctx, client.Config{Addr: m.tlsSock, Token: tok, Device: device, TLS: cfg, DialTimeout: 3 * time.Second})
	}
	code := func(err error) pb.Code {
		var ce *client.Error
		if errors.As(err, &ce) {
			return ce.Code
		}
		return -1
	}
	anaPhone := m.clientCA.Client(t, time.Time{}, "ana", "ding:client/ana/phone")
	ana, err := dial(&anaPhone, "", "phone")
	if err != nil {
		t.Fatalf("HELLO with ana's certificate and no token: %v", err)
	}
	defer ana.Close()
	bo, err := dial(nil, m.token(t, "bo", "phone"), "phone") // a token, no certificate
	if err != nil {
		t.Fatal(err)
	}
	defer bo.Close()
	res, err := ana.Send(ctx, []string{"bo"}, []byte("from a certificate"))
	if err != nil {
		t.Fatal(err)
	}
	if e := nextMessageOf(t, bo); e.Message.ID != res.ID || e.Message.From != "ana" {
		t.Fatalf("bo got %+v", e.Message)
	}

	boTablet := m.clientCA.Client(t, time.Time{}, "bo", "ding:client/bo/tablet")
	admin := m.clientCA.Client(t, time.Time{}, "owner", "ding:admin/owner")
	foreign := nodetest.NewCA(t).Client(t, time.Time{}, "ana", "ding:client/ana/laptop")
	for _, c := range []struct {
		name   string
		cert   *tls.Certificate
		device string
		want   pb.Code
	}{
		{"another device than the certificate's", &anaPhone, "laptop", pb.Code_DEVICE_MISMATCH},
		{"an admin's certificate names no device", &admin, "phone", pb.Code_BAD_TOKEN},
		{"another CA", &foreign, "laptop", -1},
	} {
		if cl, err := dial(c.cert, "", c.device); err == nil {
			cl.Close()
			t.Errorf("%s: connected", c.name)
		} else if got := code(err); got != c.want {
			t.Errorf("%s: %v (code %v), want %v", c.name, err, got, c.want)
		}
	}

	// A device's tokens revoked: its certificate, issued before, too.
	if tab, err := dial(&boTablet, "", "tablet"); err != nil {
		t.Fatal(err)
	} else {
		tab.Close()
	}
	m.must(t, 200, "POST", "/v1/users/bo/revoke-tokens", map[string]any{"device": "tablet"})
	if _, err := dial(&boTablet, "", "tablet"); code(err) != pb.Code_BAD_TOKEN {
		t.Fatalf("a revoked device's certificate: %v, want BAD_TOKEN", err)
	}

	// All of a user's tokens revoked: every certificate of theirs issued
	// before, too.
	boLaptop := m.clientCA.Client(t, time.Time{}, "bo", "ding:client/bo/laptop")
	if lap, err := dial(&boLaptop, "", "laptop"); err != nil {
		t.Fatal(err)
	} else {
		lap.Close()
	}
	m.must(t, 200, "POST", "/v1/users/bo/revoke-tokens", map[string]any{})
	if _, err := dial(&boLaptop, "", "laptop"); code(err) != pb.Code_BAD_TOKEN {
		t.Fatalf("a certificate of a user whose tokens were revoked: %v, want BAD_TOKEN", err)
	}

	// Offboarding: the live session closes and the certificate is refused.
	m.must(t, 200, "DELETE", "/v1/users/ana", nil)
	select {
	case <-ana.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("ana's session outlived her offboarding")
	}
	if _, err := dial(&anaPhone, "", "phone"); code(err) != pb.Code_BAD_TOKEN {
		t.Fatalf("an offboarded user's certificate: %v, want BAD_TOKEN", err)
	}
}

// TestClusterClientCertificateThroughTheStandby: two real dingd members
// on a real redis-server, serving HTTPS with a client CA; an admin whose
// client certificate names it uses the real dingctl through the member
// standing by, which sends the request on to the owner with its signed
// word of the certificate (internal/node, forwarded.go). Before, the
// standby asked for no certificate and the owner answered 401.
func TestClusterClientCertificateThroughTheStandby(t *testing.T) {
	serverCA, clientCA := nodetest.NewCA(t), nodetest.NewCA(t)
	cert, key := serverCA.ServerFiles(t)
	c := newPair(t, "redis://"+redistest.Start(t).Addr, "1s")
	c.extra = []string{"--tls-cert", cert, "--tls-key", key, "--tls-client-ca", clientCA.File, "--cluster-ca", serverCA.File, "--advertise", "https://{http}"}
	a := &mtlsProc{proc: c.member("a"), serverCA: serverCA, clientCA: clientCA}
	a.waitReady(t, 30*time.Second)
	b := c.member("b")
	c.waitStandby("b")
	a.must(t, http.StatusCreated, "POST", "/v1/admins", map[string]any{"name": "hr", "role": "directory"})
	hrCert, hrKey := clientCA.ClientFiles(t, time.Time{}, "hr", "ding:admin/hr")
	dctl := func(args ...string) (string, error) {
		ctl := exec.Command(dingctlBinary(t), append([]string{"--server", "https://" + b.http, "--ca", serverCA.File, "--cert", hrCert, "--key", hrKey, "--retry-for", "0"}, args...)...)
		ctl.Env = append(os.Environ(), "DING_TOKEN=")
		var out, errOut bytes.Buffer
		ctl.Stdout, ctl.Stderr = &out, &errOut
		if err := ctl.Run(); err != nil {
			return out.String(), fmt.Errorf("%v: %s", err, errOut.String())
		}
		return out.String(), nil
	}
	out, err := dctl("admin", "whoami")
	var me struct{ Name, Role string }
	if err != nil || json.Unmarshal([]byte(out), &me) != nil || me.Name != "hr" {
		t.Fatalf("dingctl admin whoami with hr's certificate through the standby: %v %s", err, out)
	}
	if _, err := dctl("user", "add", "ana", "--name", "Ana"); err != nil {
		t.Fatalf("dingctl user add with hr's certificate through the standby: %v", err)
	}
	if code, out, err := a.do(nil, a.owner, "GET", "/v1/users/ana", nil); err != nil || code != http.StatusOK {
		t.Fatalf("ana on the owner after the standby sent her on: %d %v %v", code, out, err)
	}
	if _, err := dctl("admin", "list"); err == nil || !strings.Contains(err.Error(), "FORBIDDEN") {
		t.Fatalf("dingctl admin list with hr's certificate through the standby: %v, want FORBIDDEN (hr's role, judged by the owner)", err)
	}
}
