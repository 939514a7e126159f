package main

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dingmq/ding/channels/socket/client"
	"github.com/dingmq/ding/internal/node"
	"github.com/dingmq/ding/internal/node/nodetest"
)

// dingctl --cert/--key presents a client certificate (dingd
// --tls-client-ca): one naming an admin replaces the admin token, within
// the admin's role; --pin-sha256 accepts the server only if its key has
// the pin, on HTTPS and on the TLS socket, and says which pin it has.
func TestClientCertificateAndPins(t *testing.T) {
	t.Setenv("DING_TOKEN", "")
	ca, clients := nodetest.NewCA(t), nodetest.NewCA(t)
	cert, key := ca.ServerFiles(t)
	otherCert, _ := ca.ServerFiles(t)
	n := nodetest.Start(t, node.Config{TLSCert: cert, TLSKey: key, TLSSocketAddr: nodetest.FreeAddr(t), TLSClientCA: clients.File})
	owner := strings.TrimSpace(readFile(t, filepath.Join(n.DataDir(), "admin.token")))
	https := "https://" + n.HTTPAddr()
	dctl := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(append([]string{"--server", https, "--ca", ca.File, "--socket", n.TLSSocketAddr(), "--socket-tls"}, args...), &out)
		return out.String(), err
	}
	if _, err := dctl("--token", owner, "admin", "add", "hr", "--role", "directory"); err != nil {
		t.Fatal(err)
	}
	hrCert, hrKey := clients.ClientFiles(t, time.Time{}, "hr", "ding:admin/hr")
	ghostCert, ghostKey := clients.ClientFiles(t, time.Time{}, "ghost", "ding:admin/ghost")

	// The certificate is the admin: no token anywhere.
	out, err := dctl("--cert", hrCert, "--key", hrKey, "admin", "whoami")
	var me struct{ Name, Role string }
	if err != nil || json.Unmarshal([]byte(out), &me) != nil || me.Name != "hr" || me.Role != "directory" {
		t.Fatalf("whoami with hr's certificate: %v %s", err, out)
	}
	if _, err := dctl("--cert", hrCert, "--key", hrKey, "user", "add", "ana", "--name", "Ana"); err != nil {
		t.Fatalf("hr's certificate adds a user: %v", err)
	}
	if _, err := dctl("--cert", hrCert, "--key", hrKey, "admin", "list"); err == nil || !strings.Contains(err.Error(), "FORBIDDEN") {
		t.Fatalf("hr's certificate lists admins: %v, want FORBIDDEN", err)
	}
	if _, err := dctl("--cert", ghostCert, "--key", ghostKey, "admin", "whoami"); err == nil ||
		!strings.Contains(err.Error(), "UNAUTHENTICATED") || !strings.Contains(err.Error(), ghostCert) {
		t.Fatalf("an unknown admin's certificate: %v, want UNAUTHENTICATED naming the file", err)
	}
	if _, err := dctl("--cert", hrCert, "admin", "whoami"); err == nil || !strings.Contains(err.Error(), "go together") {
		t.Fatalf("--cert without --key: %v", err)
	}

	// Pins.
	pinOf := func(file string) string {
		blk, _ := pem.Decode([]byte(readFile(t, file)))
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return client.PinSHA256(c)
	}
	pin, otherPin := pinOf(cert), pinOf(otherCert)
	if _, err := dctl("--token", owner, "--pin-sha256", pin, "user", "get", "ana"); err != nil {
		t.Fatalf("the server's pin: %v", err)
	}
	if _, err := dctl("--token", owner, "--pin-sha256", otherPin+","+pin, "user", "get", "ana"); err != nil {
		t.Fatalf("two pins, one the server's: %v", err)
	}
	_, err = dctl("--token", owner, "--pin-sha256", otherPin, "user", "get", "ana")
	if err == nil || !strings.Contains(err.Error(), "matches no pinned key") || !strings.Contains(err.Error(), pin) {
		t.Fatalf("another pin over HTTPS: %v, want a mismatch naming the server's pin", err)
	}
	// listen mints its token over HTTPS, then dials the TLS socket: pin
	// both. With the right pin it listens; a wrong pin stops it at HTTPS.
	if _, err := dctl("--token", owner, "--pin-sha256", pin, "listen", "--user", "ana", "--device", "phone", "--timeout", "300ms"); err != nil {
		t.Fatalf("listen over the pinned TLS socket: %v", err)
	}
	if _, err := dctl("--token", owner, "--pin-sha256", "abc", "user", "get", "ana"); err == nil || !strings.Contains(err.Error(), "base64") {
		t.Fatalf("a malformed pin: %v", err)
	}
	var out2 bytes.Buffer
	err = run([]string{"--server", "http://" + n.HTTPAddr(), "--token", owner, "--pin-sha256", pin, "user", "get", "ana"}, &out2)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), "https://") {
		t.Fatalf("--pin-sha256 with an http:// server: %v, want a usage error", err)
	}
}
