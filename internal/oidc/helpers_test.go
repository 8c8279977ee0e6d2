package oidc

import (
	"context"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/internal/devidp"
)

// startIdP starts a development IdP with the demo users and a 1s polling
// interval; it is closed when the test ends.
func startIDP(t testing.TB, cfg devidp.Config) (*devidp.Server, []devidp.User) {
	t.Helper()
	if cfg.Users == nil {
		cfg.Users = devidp.DemoUsers()
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = time.Second
	}
	s, err := devidp.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, cfg.Users
}

// newProvider discovers idp with the defaults of Config, changed by edit.
func newProvider(t testing.TB, idp *devidp.Server, edit func(*Config)) *Provider {
	t.Helper()
	cfg := Config{Issuer: idp.Issuer(), ClientID: idp.ClientID()}
	if edit != nil {
		edit(&cfg)
	}
	p, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func password(t testing.TB, users []devidp.User, name string) string {
	t.Helper()
	for _, u := range users {
		if u.Username == name {
			return u.Password
		}
	}
	t.Fatalf("no user %q", name)
	return ""
}

// browser is a person at a web browser: an http.Client with a cookie jar
// that fills in and submits the HTML forms the IdP serves.
type browser struct {
	t *testing.T
	c *http.Client
}

func newBrowser(t *testing.T) *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &browser{t: t, c: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
}

var (
	formRE  = regexp.MustCompile(`(?s)<form method="post" action="([^"]*)">(.*?)</form>`)
	inputRE = regexp.MustCompile(`<input ([^>]*)>`)
	attrRE  = regexp.MustCompile(`([a-z_-]+)="([^"]*)"`)
)

// submit fills the form of the page at (or redirected to from) pageURL
// with the page's own values, overridden by fields, posts it and returns
// the final response's status and body.
func (b *browser) submit(pageURL string, fields map[string]string) (int, string) {
	b.t.Helper()
	resp, err := b.c.Get(pageURL)
	if err != nil {
		b.t.Fatalf("GET login page: %v", err)
	}
	page := readAll(b.t, resp)
	m := formRE.FindStringSubmatch(page)
	if m == nil {
		b.t.Fatalf("no form at %s (status %d): %s", resp.Request.URL, resp.StatusCode, page)
	}
	vals := url.Values{}
	for _, in := range inputRE.FindAllStringSubmatch(m[2], -1) {
		attrs := map[string]string{}
		for _, a := range attrRE.FindAllStringSubmatch(in[1], -1) {
			attrs[a[1]] = html.UnescapeString(a[2])
		}
		if attrs["name"] != "" {
			vals.Set(attrs["name"], attrs["value"])
		}
	}
	for k, v := range fields {
		vals.Set(k, v)
	}
	action, err := resp.Request.URL.Parse(html.UnescapeString(m[1]))
	if err != nil {
		b.t.Fatal(err)
	}
	resp, err = b.c.PostForm(action.String(), vals)
	if err != nil {
		b.t.Fatalf("POST form: %v", err)
	}
	return resp.StatusCode, readAll(b.t, resp)
}

func readAll(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// clock is a settable clock for Config.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// wantReason fails the test unless err carries reason.
func wantReason(t testing.TB, err error, reason string) {
	t.Helper()
	if got := ReasonOf(err); got != reason {
		t.Fatalf("reason = %q, want %q (err: %v)", got, reason, err)
	}
	if !strings.HasPrefix(err.Error(), "oidc: ") {
		t.Errorf("error %q lacks the oidc: prefix", err)
	}
}

func waitCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func contextWithCancel(t testing.TB) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	return ctx, cancel
}
