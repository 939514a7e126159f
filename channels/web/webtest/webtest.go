// Package webtest drives a real headless Chromium (Debian's chromium
// package) from Go tests, with chromedp: one browser process per Browser,
// and in it any number of Pages, each in its own browser context (its own
// cookies, storage and sockets, as two people's browsers are).
//
//	b := webtest.Start(t)
//	ana, bo := b.NewPage(t, "ana"), b.NewPage(t, "bo")
//	ana.Run(chromedp.Navigate(url), chromedp.Click(chromedp.CSS("button")))
//	ana.WaitFor(`document.querySelector("[data-status=online]")`)
//	webtest.Screenshot(t, ana, dir, "chat") // only with DING_SCREENSHOTS=1
//
// Waits poll a JavaScript condition in the page (chromedp.Poll) until it
// holds or a deadline passes; nothing sleeps. Every Page records the
// JavaScript exceptions its page throws and fails the test with them at
// its end, so a page that breaks cannot pass.
//
// Without chromium on the PATH (or DING_CHROMIUM naming it), Start skips
// the test saying how to install it (`make chromium`, which `make test`
// runs), except when CI is set, where it fails.
package webtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// DefaultTimeout bounds each Run and WaitFor of a Page unless the call
// says otherwise.
const DefaultTimeout = 20 * time.Second

// Browser is one headless Chromium process.
type Browser struct {
	ctx    context.Context // the browser's first context (a blank tab): Pages derive from it
	cancel context.CancelFunc
}

// Start launches headless Chromium for the test and stops it at the end.
func Start(tb testing.TB) *Browser {
	tb.Helper()
	path := os.Getenv("DING_CHROMIUM")
	if path == "" {
		for _, name := range []string{"chromium", "chromium-browser"} {
			if p, err := exec.LookPath(name); err == nil {
				path = p
				break
			}
		}
	}
	if path == "" {
		msg := "webtest: no chromium on the PATH (nor DING_CHROMIUM): install Debian's with `make chromium` (make test does)"
		if os.Getenv("CI") != "" {
			tb.Fatal(msg)
		}
		tb.Skip(msg)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.WindowSize(1200, 800),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("mute-audio", true),
		chromedp.Flag("use-mock-keychain", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.UserDataDir(tb.TempDir()),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run its sandbox as root
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(alloc)
	if err := chromedp.Do(ctx); err != nil { // starts the process
		cancelCtx()
		cancelAlloc()
		tb.Fatalf("webtest: start %s: %v", path, err)
	}
	b := &Browser{ctx: ctx, cancel: func() { cancelCtx(); cancelAlloc() }}
	tb.Cleanup(b.cancel)
	return b
}

// Page is a tab in a browser context of its own.
type Page struct {
	Name string // in failure messages
	tb   testing.TB
	ctx  context.Context

	mu     sync.Mutex
	thrown []string // guarded by mu
}

// NewPage opens a tab in a new browser context, closed at the end of the test.
func (b *Browser) NewPage(tb testing.TB, name string) *Page {
	tb.Helper()
	p := &Page{Name: name, tb: tb}
	// Runs on chromedp's reading goroutine: it only records.
	listen := chromedp.WithListener(func(ev any) {
		if e, ok := ev.(*runtime.EventExceptionThrown); ok {
			d := e.ExceptionDetails
			text := d.Text
			if d.Exception != nil && d.Exception.Description != "" {
				text = d.Exception.Description
			}
			p.mu.Lock()
			p.thrown = append(p.thrown, text)
			p.mu.Unlock()
		}
	})
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext(), listen)
	p.ctx = ctx
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		tb.Fatalf("webtest: new page %s: %v", name, err)
	}
	tb.Cleanup(func() {
		cancel()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, e := range p.thrown {
			tb.Errorf("page %s threw: %s", name, e)
		}
	})
	return p
}

// Context is the page's chromedp context, for actions this package has no helper for.
func (p *Page) Context() context.Context { return p.ctx }

// Run runs actions in the page within DefaultTimeout and fails the test on an error.
func (p *Page) Run(actions ...chromedp.Action[chromedp.Void]) {
	p.tb.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, DefaultTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.tb.Fatalf("page %s: %v", p.Name, err)
	}
}

// WaitFor polls the JavaScript expression in the page until it is truthy,
// for up to DefaultTimeout; on timeout it fails the test with the
// expression and the page's visible text.
func (p *Page) WaitFor(expr string) {
	p.tb.Helper()
	p.WaitForWithin(expr, DefaultTimeout)
}

// WaitForWithin is WaitFor with its own timeout.
func (p *Page) WaitForWithin(expr string, d time.Duration) {
	p.tb.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, d+5*time.Second)
	defer cancel()
	ok, err := chromedp.Run(ctx, chromedp.Poll[bool]("!!("+expr+")", chromedp.WithPollingTimeout(d), chromedp.WithPollingInterval(25*time.Millisecond)))
	if err != nil || !ok {
		p.tb.Fatalf("page %s: waited %v for %s: %v\npage text:\n%s", p.Name, d, expr, err, p.visibleText())
	}
}

// Eval evaluates a JavaScript expression in the page, decoded as T.
func Eval[T any](p *Page, expr string) T {
	p.tb.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, DefaultTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.tb.Fatalf("page %s: evaluate %s: %v", p.Name, expr, err)
	}
	return v
}

// Text is the visible text of the first element matching the CSS selector ("" if none).
func (p *Page) Text(selector string) string {
	p.tb.Helper()
	return Eval[string](p, fmt.Sprintf(`(document.querySelector(%q)?.innerText ?? "")`, selector))
}

// Texts is the visible text of every element matching the CSS selector, in document order.
func (p *Page) Texts(selector string) []string {
	p.tb.Helper()
	return Eval[[]string](p, fmt.Sprintf(`Array.from(document.querySelectorAll(%q), e => e.innerText)`, selector))
}

func (p *Page) visibleText() string {
	ctx, cancel := context.WithTimeout(p.ctx, 2*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	if err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	return s
}

// Screenshot writes a PNG of the page's viewport to dir/name.png when the
// environment has DING_SCREENSHOTS=1 (how the committed screenshots are
// made), and does nothing otherwise, so that test runs leave the tree
// as it was.
func Screenshot(tb testing.TB, p *Page, dir, name string) {
	tb.Helper()
	if os.Getenv("DING_SCREENSHOTS") != "1" {
		return
	}
	ctx, cancel := context.WithTimeout(p.ctx, DefaultTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		tb.Fatalf("page %s: screenshot: %v", p.Name, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	file := filepath.Join(dir, strings.ReplaceAll(name, "/", "-")+".png")
	if err := os.WriteFile(file, png, 0o644); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("screenshot %s", file)
}
