package oidc

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Status is what the gateway knows about the IdP: whether it answered the
// last check (discovery until it has succeeded once, then the key set),
// since when that has been so, and the last error.
type Status struct {
	// Up is true when the last check succeeded.
	Up bool
	// Since is when Up last changed (or the first check's time).
	Since time.Time
	// Checked is when the IdP was last checked.
	Checked time.Time
	// LastError is the last check's error, empty when Up.
	LastError string
	// Discovered is true once discovery has succeeded: logins can be tried.
	Discovered bool
}

// Outage is what Config.OnOutage hears: an outage that has lasted
// OutageAfter (Down true), or its end (Down false).
type Outage struct {
	// Down is true when the outage is reported, false when it has ended.
	Down bool
	// Start is when the IdP stopped answering.
	Start time.Time
	// LastError is the last error seen (empty at the end of the outage).
	LastError string
	// Issuer is the IdP's issuer URL.
	Issuer string
}

// Start returns a Provider at once and reaches the IdP in the background:
// discovery, then the key set, retried with exponential backoff between
// Config.RetryMin and RetryMax while the IdP is down, and checked again
// every HealthInterval while it is up. Until discovery succeeds every login
// fails with idp_error, saying since when the IdP has not answered; a
// gateway can start, and serve certificates it issued earlier, during an
// IdP outage. The checks stop when ctx is done. Only an invalid Config is
// an error.
func Start(ctx context.Context, cfg Config) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := newProviderOf(cfg)
	p.status = Status{Since: p.cfg.Now(), LastError: "not checked yet"}
	first := make(chan struct{})
	go p.watch(ctx, first)
	// Give a healthy IdP a moment, so that a gateway that starts while it
	// is up offers the device flow from the first login.
	select {
	case <-first:
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
	}
	return p, nil
}

// Status returns the IdP's state as the last check saw it.
func (p *Provider) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.status
	st.Discovered = p.ep.Load() != nil
	return st
}

// watch is the background checker of Start.
func (p *Provider) watch(ctx context.Context, first chan struct{}) {
	backoff := p.cfg.RetryMin
	var reported bool
	var downSince time.Time
	for {
		err := p.check(ctx)
		if ctx.Err() != nil {
			return
		}
		now := p.cfg.Now()
		p.mu.Lock()
		was := p.status.Up
		p.status.Checked = now
		if err == nil {
			p.status.LastError = ""
		} else {
			p.status.LastError = sanitize(err)
		}
		if (err == nil) != was || p.status.Since.IsZero() {
			p.status.Up = err == nil
			p.status.Since = now
		}
		if err != nil && was {
			downSince = now
		} else if err != nil && downSince.IsZero() {
			downSince = p.status.Since
		}
		lastErr := p.status.LastError
		p.mu.Unlock()
		if first != nil {
			close(first)
			first = nil
		}

		wait := p.cfg.HealthInterval
		switch {
		case err == nil:
			backoff = p.cfg.RetryMin
			if reported && p.cfg.OnOutage != nil {
				p.cfg.OnOutage(Outage{Down: false, Start: downSince, Issuer: p.cfg.Issuer})
			}
			reported, downSince = false, time.Time{}
		default:
			wait = backoff
			backoff = min(2*backoff, p.cfg.RetryMax)
			if !reported && now.Sub(downSince) >= p.cfg.OutageAfter && p.cfg.OnOutage != nil {
				reported = true
				p.cfg.OnOutage(Outage{Down: true, Start: downSince, LastError: lastErr, Issuer: p.cfg.Issuer})
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// check runs discovery until it has succeeded once, and then fetches the
// key set, which is what a login needs next.
func (p *Provider) check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ep := p.ep.Load()
	if ep == nil {
		var err error
		if ep, err = p.discover(ctx); err != nil {
			return err
		}
		p.ep.Store(ep)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ep.jwksURI, nil)
	if err != nil {
		return err
	}
	resp, err := p.cfg.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("fetching the key set %s: %s", ep.jwksURI, sanitize(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetching the key set %s: HTTP status %s", ep.jwksURI, resp.Status)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&set); err != nil || len(set.Keys) == 0 {
		return fmt.Errorf("the key set at %s is not a JSON Web Key Set with keys", ep.jwksURI)
	}
	return nil
}
