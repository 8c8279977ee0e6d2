package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// headlessBrowser starts Debian's chromium, headless (without its sandbox
// only as root, where it refuses to start with one), and returns a
// browser context and the console messages its pages have logged.
func headlessBrowser(t *testing.T, ctx context.Context) (context.Context, func() []string) {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found (%v): apt-get install chromium (.ci/run installs it)", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.Flag("headless", true), chromedp.DisableGPU)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancelAlloc)
	bctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(cancel)
	// Start the browser now, so its start-up is not charged to the login.
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	var (
		mu      sync.Mutex
		console []string
	)
	cctx, stopConsole := context.WithCancel(bctx)
	messages := chromedp.Console(cctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			mu.Lock()
			console = append(console, m.String())
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { stopConsole(); <-done })
	return bctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), console...)
	}
}

// pageText waits (bounded) until the browser's page shows one of want,
// through navigations, and returns its text.
func pageText(ctx context.Context, browser context.Context, d time.Duration, want ...string) (string, error) {
	deadline := time.Now().Add(d)
	var text string
	for {
		t, err := chromedp.Run(browser, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		if err == nil {
			text = t
			for _, w := range want {
				if strings.Contains(text, w) {
					return text, nil
				}
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return text, fmt.Errorf("the page never showed %q (last error %v)", want, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var (
	devLoginStepRE = regexp.MustCompile(`(?m)^\s+\S.* login --gateway (\S+)$`)
	devPasswordRE  = regexp.MustCompile(`(?m)^\s+user alice\s+password (\S+)`)
)

// TestNewcomerInARealBrowser is the newcomer's first hour end to end:
// `bastion dev`, its printed `bastion login` (here --pkce) with the login
// done in a real headless chromium — the IdP's form, Approve, the
// redirect back to the CLI's loopback listener (which the IdP's CSP
// form-action must allow) and the gateway's verdict on the page — then
// the printed `ssh -J` to the demo host with the stock OpenSSH client
// (Include line at the top of ~/.ssh/config, as the login says), and the
// printed audit export, which shows the login, the jump's auth.ok and
// its session.
func TestNewcomerInARealBrowser(t *testing.T) {
	testbed.RequireOpenSSH(t)
	begin := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	browser, console := headlessBrowser(t, ctx)
	home := newHome(t)

	// 1. bastion dev.
	stdout, stderr := &lockedText{w: &bytes.Buffer{}}, &lockedText{w: &bytes.Buffer{}}
	dev := newRootCommand(buildInfo{Version: "v-test"}, strings.NewReader(""), stdout, stderr)
	dev.SetArgs([]string{"dev", "--listen", "127.0.0.1:0", "--data-dir", filepath.Join(t.TempDir(), "dev")})
	devCtx, stopDev := context.WithCancel(ctx)
	defer stopDev()
	devDone := make(chan error, 1)
	go func() { devDone <- dev.ExecuteContext(devCtx) }()
	for !strings.Contains(stdout.String(), "Press Ctrl-C") {
		select {
		case err := <-devDone:
			t.Fatalf("bastion dev ended: %v\n%s", err, stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	steps := stdout.String()
	gw := devLoginStepRE.FindStringSubmatch(steps)
	pw := devPasswordRE.FindStringSubmatch(steps)
	if gw == nil || pw == nil {
		t.Fatalf("bastion dev printed no login step or no password for alice:\n%s", steps)
	}

	// 2. bastion login --pkce, the login done in the browser.
	var (
		wg   sync.WaitGroup
		page string
		berr error
	)
	loginStart := time.Now()
	// A browser that gets stuck (a CSP that blocks the return, say) ends
	// the login at once rather than at its window.
	loginCtx, giveUp := context.WithCancel(ctx)
	defer giveUp()
	_, loginErr, err := runLoginCLIContext(t, loginCtx, gw[1], func(line string) {
		m := authURLRE.FindStringSubmatch(line)
		if m == nil {
			return
		}
		wg.Go(func() {
			berr = chromedp.Do(browser,
				chromedp.Navigate(m[1]),
				chromedp.WaitVisible(chromedp.CSS(`input[name="username"]`)),
				chromedp.SendKeys(chromedp.CSS(`input[name="username"]`), "alice"),
				chromedp.SendKeys(chromedp.CSS(`input[name="password"]`), pw[1]),
				chromedp.Click(chromedp.CSS(`button[value="approve"]`)),
			)
			if berr == nil {
				// The form's POST, the IdP's redirect to the CLI's
				// loopback listener, and the gateway's verdict.
				page, berr = pageText(ctx, browser, 10*time.Second, "Login complete", "Login failed", "blocked")
			}
			if berr != nil {
				giveUp()
			}
		})
	}, "--pkce")
	wg.Wait()
	if err != nil || berr != nil {
		t.Fatalf("bastion login --pkce in chromium: %v (browser: %v)\npage: %s\nconsole: %q\n%s", err, berr, page, console(), loginErr)
	}
	if !strings.Contains(page, "Login complete") {
		t.Errorf("the browser's last page: %q", page)
	}
	for _, msg := range console() {
		if strings.Contains(msg, "Content Security Policy") {
			t.Errorf("chromium reports a CSP violation: %s", msg)
		}
	}
	t.Logf("login in chromium, URL printed to certificate saved: %s", time.Since(loginStart).Round(time.Millisecond))

	// 3. The printed jump, with the Include line at the top of
	// ~/.ssh/config as the login said.
	cfg := filepath.Join(home, ".ssh", "config")
	text := "Include " + filepath.Join(home, ".ssh", "bastion", "config") + "\n\nHost *\n  BatchMode yes\n  StrictHostKeyChecking yes\n  GlobalKnownHostsFile /dev/null\n  IdentityAgent none\n"
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	jump := strings.Fields(stepLines(t, steps, "Jump to the demo host", 1)[0])
	if out, code := sshVia(t, home, cfg, append(jump[1:], "echo", "through-the-gateway")...); code != 0 || !strings.Contains(out, "through-the-gateway") {
		t.Fatalf("%s: exit %d\n%s", strings.Join(jump, " "), code, out)
	}

	// 4. The printed audit export shows it all: the login, the jump's
	// auth.ok and its session (its end is recorded as the jump closes).
	export := strings.Fields(stepLines(t, steps, "Export the audit log", 1)[0])
	var seen map[string]bool
	for deadline := time.Now().Add(10 * time.Second); ; {
		out, code := sshVia(t, home, cfg, export[1:]...)
		if code != 0 {
			t.Fatalf("%s: exit %d\n%s", strings.Join(export, " "), code, out)
		}
		seen = map[string]bool{}
		sc := bufio.NewScanner(strings.NewReader(out))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var ev audit.Event
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				continue
			}
			switch {
			case ev.Type == audit.TypeLoginOK && ev.Fields["flow"] == "pkce":
				seen["login.ok pkce"] = true
			case ev.Type == audit.TypeAuthOK && ev.Actor == "alice":
				seen["auth.ok alice"] = true
			case ev.Type == audit.TypeSessionStart && ev.Actor == "alice":
				seen["session.start"] = true
			case ev.Type == audit.TypeSessionEnd && ev.Actor == "alice":
				seen["session.end"] = true
			}
		}
		if len(seen) == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the audit export shows only %v of the login, auth.ok and session:\n%s", seen, out)
		}
		time.Sleep(200 * time.Millisecond)
	}

	stopDev()
	if err := <-devDone; err != nil {
		t.Errorf("bastion dev: %v", err)
	}
	took := time.Since(begin)
	t.Logf("the newcomer's path (dev, browser login, jump, export) took %s", took.Round(time.Millisecond))
	if took > 45*time.Second {
		t.Errorf("the newcomer's path took %s", took)
	}
}
