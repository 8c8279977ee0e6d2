package oidc

import (
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/internal/devidp"
)

// tokenTimer records when the last token-endpoint request started.
type tokenTimer struct {
	next http.RoundTripper
	mu   sync.Mutex
	last time.Time
}

func (tt *tokenTimer) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasSuffix(r.URL.Path, "/oauth/token") {
		tt.mu.Lock()
		tt.last = time.Now()
		tt.mu.Unlock()
	}
	return tt.next.RoundTrip(r)
}

// TestApprovalToIdentityLatency measures, over loopback with a 1s polling
// interval, the time from the user's approval to WaitDevice returning a
// verified identity, and the part of it after the winning poll left (token
// exchange + ID token verification + mapping). It reports figures and
// asserts nothing about them: they depend on the machine.
func TestApprovalToIdentityLatency(t *testing.T) {
	idp, _ := startIDP(t, devidp.Config{})
	timer := &tokenTimer{next: http.DefaultTransport}
	p := newProvider(t, idp, func(c *Config) { c.HTTPClient = &http.Client{Transport: timer, Timeout: 30 * time.Second} })
	const runs = 5
	var total, tail []time.Duration
	for range runs {
		ctx := waitCtx(t)
		da, err := p.StartDevice(ctx)
		if err != nil {
			t.Fatal(err)
		}
		approved := time.Now()
		if err := idp.ApproveDevice(da.UserCode, "alice"); err != nil {
			t.Fatal(err)
		}
		if _, err := p.WaitDevice(ctx, da); err != nil {
			t.Fatal(err)
		}
		done := time.Now()
		timer.mu.Lock()
		last := timer.last
		timer.mu.Unlock()
		total = append(total, done.Sub(approved))
		tail = append(tail, done.Sub(last))
	}
	slices.Sort(total)
	slices.Sort(tail)
	t.Logf("approval → identity over %d runs (poll interval 1s): median %s, max %s; of which exchange+verify after the last poll: median %s, max %s",
		runs, total[runs/2].Round(time.Millisecond), total[runs-1].Round(time.Millisecond),
		tail[runs/2].Round(time.Microsecond), tail[runs-1].Round(time.Microsecond))
}

// BenchmarkVerifyIDToken is the gateway's cost per login once the token is
// in hand (keys cached): parse, algorithm check, signature, claims, mapping.
func BenchmarkVerifyIDToken(b *testing.B) {
	idp, _ := startIDP(b, devidp.Config{})
	p := newProvider(b, idp, nil)
	c, err := idp.Claims("alice")
	if err != nil {
		b.Fatal(err)
	}
	raw, err := idp.SignToken(c, nil, "")
	if err != nil {
		b.Fatal(err)
	}
	ep, err := p.endpoints()
	if err != nil {
		b.Fatal(err)
	}
	// The one-time-use record would refuse the token after its first
	// use; measure the checks and the mapping, which are the cost.
	once := func() error {
		tok, err := p.verify(b.Context(), ep, raw, "")
		if err != nil {
			return err
		}
		var claims map[string]any
		if err := tok.Claims(&claims); err != nil {
			return err
		}
		_, _, _, err = p.mapping.Map(claims)
		return err
	}
	if err := once(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := once(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkMap(b *testing.B) {
	m := Mapping{GroupPrincipals: map[string][]string{"dba": {"postgres-admin"}}}
	claims := map[string]any{"email": "alice@example.com", "email_verified": true, "groups": []any{"eng", "dba"}}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := m.Map(claims); err != nil {
			b.Fatal(err)
		}
	}
}
