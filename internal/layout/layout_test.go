package layout

import (
	"bufio"
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// Each dependency may be imported directly only by the packages listed.
var owners = map[string][]string{
	"github.com/cloudwego/netpoll":     {"github.com/dingmq/ding/channels/socket"},
	"github.com/cockroachdb/pebble/v2": {"github.com/dingmq/ding/engine/store/pebblestore", "github.com/dingmq/ding/engine/store/pebblestore/crashfs"},
	"github.com/twilio/twilio-go":      {"github.com/dingmq/ding/channels/twilio"},
	"github.com/redis/go-redis/v9":     {"github.com/dingmq/ding/cluster"},
	"github.com/golang-jwt/jwt/v5":     {"github.com/dingmq/ding/channels/auth", "github.com/dingmq/ding/channels/push/pushtest"},
	"github.com/sideshow/apns2":        {"github.com/dingmq/ding/channels/push"},
	"golang.org/x/oauth2":              {"github.com/dingmq/ding/channels/push"},
	"golang.org/x/crypto/acme":         {"github.com/dingmq/ding/internal/node"},
	"github.com/wneessen/go-mail":      {"github.com/dingmq/ding/channels/email"},
	"github.com/emersion/go-smtp":      {"github.com/dingmq/ding/channels/email/emailtest"},
	// The OpenAPI validator is for tests: dingd serves its document as bytes.
	"github.com/getkin/kin-openapi": {"github.com/dingmq/ding/channels/httpapi/openapitest"},
	// The browser driver is for the browser tests (webtest, and the tests that use it).
	"github.com/chromedp/chromedp": {"github.com/dingmq/ding/channels/web/webtest"},
}

func TestImportRules(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}|{{join .Imports \" \"}}", "github.com/dingmq/ding/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		pkg, imports, _ := strings.Cut(sc.Text(), "|")
		for _, imp := range strings.Fields(imports) {
			for dep, allowed := range owners {
				if imp == dep || strings.HasPrefix(imp, dep+"/") {
					seen[pkg+" "+dep] = true
					if !slices.Contains(allowed, pkg) {
						t.Errorf("%s imports %s; only %v may", pkg, imp, allowed)
					}
				}
			}
			if (strings.HasPrefix(imp, "github.com/dingmq/ding/cmd/") || strings.HasPrefix(imp, "github.com/dingmq/ding/bench")) &&
				!strings.HasPrefix(pkg, "github.com/dingmq/ding/cmd/") {
				t.Errorf("%s imports %s: nothing outside cmd/ may", pkg, imp)
			}
			if strings.HasPrefix(pkg, "github.com/dingmq/ding/engine") && !strings.HasSuffix(pkg, "/pebblestore") &&
				(imp == "net" || imp == "net/http" || strings.HasPrefix(imp, "github.com/dingmq/ding/channels") || strings.HasPrefix(imp, "github.com/dingmq/ding/fanout")) {
				t.Errorf("%s imports %s: the engine has no network code and depends on no edge", pkg, imp)
			}
		}
	}
	// The check must have seen the imports it guards, or it proves nothing.
	for _, want := range []string{
		"github.com/dingmq/ding/channels/socket github.com/cloudwego/netpoll",
		"github.com/dingmq/ding/engine/store/pebblestore github.com/cockroachdb/pebble/v2",
		"github.com/dingmq/ding/cluster github.com/redis/go-redis/v9",
		"github.com/dingmq/ding/internal/node golang.org/x/crypto/acme",
		"github.com/dingmq/ding/channels/email github.com/wneessen/go-mail",
		"github.com/dingmq/ding/channels/email/emailtest github.com/emersion/go-smtp",
		"github.com/dingmq/ding/channels/httpapi/openapitest github.com/getkin/kin-openapi",
	} {
		if !seen[want] {
			t.Errorf("did not see %s: the go list parsing is broken", want)
		}
	}
}

// TestClientLinksNothingOfTheServer: the Go client library and the wire
// format it shares with the server import nothing of the server side (no
// engine, store, fanout, edges, Pebble or Prometheus), so an application
// embedding the client links none of it.
func TestClientLinksNothingOfTheServer(t *testing.T) {
	for _, pkg := range []string{"github.com/dingmq/ding/channels/socket/client", "github.com/dingmq/ding/channels/socket/wire"} {
		out, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		deps := strings.Fields(string(out))
		if !slices.Contains(deps, "github.com/dingmq/ding/channels/socket/pb") {
			t.Fatalf("go list -deps %s did not list pb: the parsing is broken", pkg)
		}
		for _, d := range deps {
			for _, bad := range []string{
				"github.com/dingmq/ding/engine", "github.com/dingmq/ding/fanout", "github.com/dingmq/ding/channels/session",
				"github.com/dingmq/ding/channels/httpapi", "github.com/dingmq/ding/internal/",
				"github.com/cockroachdb/pebble", "github.com/prometheus/", "github.com/cloudwego/netpoll",
			} {
				if d == bad || strings.HasPrefix(d, bad+"/") || (strings.HasSuffix(bad, "/") && strings.HasPrefix(d, bad)) {
					t.Errorf("%s depends on %s: the client must link nothing of the server", pkg, d)
				}
			}
		}
	}
}

// TestNoGoPackagesUnderNodeModules: the TypeScript SDK (channels/web/sdk)
// is an npm package, not Go; its node_modules, once installed, must add no
// package to ./... (go vet and go test would run on a dependency's Go
// files). Node packages live only in the directories listed here.
func TestNoGoPackagesUnderNodeModules(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.Dir}}", "github.com/dingmq/ding/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dir := range strings.Fields(string(out)) {
		if strings.Contains(dir, "/node_modules/") || strings.HasSuffix(dir, "/node_modules") {
			t.Errorf("%s is a Go package inside node_modules", dir)
		}
	}
	npm, err := exec.Command("git", "ls-files", "--full-name", "--", ":/*package.json").Output()
	if err != nil {
		t.Skipf("git ls-files: %v", err) // not a git checkout
	}
	files := strings.Fields(string(npm))
	if !slices.Contains(files, "channels/web/sdk/package.json") {
		t.Fatalf("git ls-files did not list the SDK's package.json (%q): the check is broken", files)
	}
	for _, f := range files {
		if !slices.Contains([]string{"channels/web/sdk/package.json", "channels/web/app/package.json", "channels/web/console/package.json"}, f) {
			t.Errorf("%s: a Node package outside the directories the layout knows (add it here and to the README's Layout)", f)
		}
	}
}
