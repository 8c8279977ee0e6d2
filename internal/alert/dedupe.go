package alert

import (
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// dedupe decides which raised alerts go out, so that one attack produces a
// handful of alerts rather than one per event. Two limits apply:
//
//   - per rule and key (a source, a user): after an alert, the next one
//     waits a cooldown that doubles each time the key fires again, up to
//     a maximum; a key quiet for that maximum starts afresh;
//   - per rule: a token bucket (a burst, then one per interval) bounds
//     alerts across keys, for attacks from many sources at once.
//
// What is held back is counted, and the next alert of the rule says how
// many similar ones it stands for. It is used by one goroutine and reads
// time from the events, so it behaves the same replayed or live.
type dedupe struct {
	cooldown, maxCooldown time.Duration
	burst                 int
	every                 time.Duration

	// keys is LRU-bounded (maxKeys); recency is the key's last event, so
	// the keys quiet longest sit at the oldest end.
	keys  *simplelru.LRU[string, *keyState]
	rules map[string]*ruleState
}

// keyState is the cooldown of one rule and key.
type keyState struct {
	next     time.Time // no alert before
	interval time.Duration
	last     time.Time // last event seen
}

// ruleState is one rule's token bucket and what it has held back.
type ruleState struct {
	tokens     float64
	refilled   time.Time
	suppressed int
}

func newDedupe(cfg Config) *dedupe {
	keys, _ := simplelru.NewLRU[string, *keyState](maxKeys, nil)
	return &dedupe{
		cooldown: cfg.Cooldown, maxCooldown: cfg.MaxCooldown, burst: cfg.RuleBurst, every: cfg.RuleEvery,
		keys: keys, rules: map[string]*ruleState{},
	}
}

// allow reports whether an alert of rule about key may go out at now, and
// if so how many alerts of the rule were held back since its last one.
func (d *dedupe) allow(rule, key string, now time.Time) (ok bool, suppressed int) {
	r := d.rules[rule]
	if r == nil {
		r = &ruleState{tokens: float64(d.burst), refilled: now}
		d.rules[rule] = r
	}
	if dt := now.Sub(r.refilled); dt > 0 {
		r.tokens = min(float64(d.burst), r.tokens+float64(dt)/float64(d.every))
		r.refilled = now
	}
	k := rule + "\x00" + key
	ks, _ := d.keys.Get(k)
	if ks != nil && now.Sub(ks.last) >= d.maxCooldown {
		ks = nil // quiet long enough: start afresh
	}
	if ks == nil {
		ks = &keyState{interval: d.cooldown}
		d.keys.Add(k, ks)
	}
	ks.last = now
	d.gc(now)
	if now.Before(ks.next) || r.tokens < 1 {
		r.suppressed++
		return false, 0
	}
	r.tokens--
	ks.next = now.Add(ks.interval)
	ks.interval = min(2*ks.interval, d.maxCooldown)
	suppressed, r.suppressed = r.suppressed, 0
	return true, suppressed
}

// gc drops keys quiet for maxCooldown, which would start afresh anyway;
// they sit at the oldest end, so this costs what it removes.
func (d *dedupe) gc(now time.Time) {
	for {
		_, ks, ok := d.keys.GetOldest()
		if !ok || now.Sub(ks.last) < d.maxCooldown {
			return
		}
		d.keys.RemoveOldest()
	}
}

// window is how long, from now, the key's current cooldown holds back
// its next alert: the de-duplication window a cluster claims it for.
func (d *dedupe) window(rule, key string, now time.Time) time.Duration {
	ks, _ := d.keys.Peek(rule + "\x00" + key)
	if ks == nil || !ks.next.After(now) {
		return d.cooldown
	}
	return ks.next.Sub(now)
}
