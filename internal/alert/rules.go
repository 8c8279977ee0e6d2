package alert

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/bastion-ssh/bastion/audit"
)

// Reason codes and names the rules match. They are the gateway's and the
// login service's (gateway.Reason*, oidc.Reason*, gateway.LoginUser),
// repeated here because the gateway's tests import this package; the
// end-to-end tests in gateway/ fail if they drift apart.
const (
	reasonForbiddenUser      = "forbidden_user"
	reasonForbiddenPrincipal = "forbidden_principal"
	reasonPassword           = "password_attempt"
	reasonKeyboard           = "keyboard_interactive_attempt"
	reasonCanceled           = "canceled"
	loginUser                = "login"
)

// candidate is an alert a rule raised, before de-duplication.
type candidate struct {
	rule, key, text string
	// count is how many events stand behind it (threshold rules).
	count int
	ev    audit.Event
}

// evaluator applies the rules to events, one at a time, in log order. It
// is used by one goroutine.
type evaluator struct {
	rules    Rules
	failures *windows // auth_failures, per source address
	refused  *windows // login_refused, per user
	sources  *sourceSet
}

func newEvaluator(rules Rules, sources *sourceSet) *evaluator {
	return &evaluator{
		rules:    rules,
		failures: newWindows(rules.AuthFailures),
		refused:  newWindows(rules.LoginRefused),
		sources:  sources,
	}
}

// evaluate returns the alerts ev raises.
func (e *evaluator) evaluate(ev audit.Event) []candidate {
	f := ev.Fields
	var out []candidate
	raise := func(rule, key string, count int, format string, args ...any) {
		out = append(out, candidate{rule: rule, key: key, count: count, ev: ev, text: fmt.Sprintf(format, args...)})
	}
	switch ev.Type {
	case audit.TypeAuthFailed:
		remote, user, reason := f["remote"], f["user"], f["reason"]
		if user == "" {
			user = ev.Actor
		}
		if e.rules.ForbiddenUser && reason == reasonForbiddenUser {
			raise(RuleForbiddenUser, remote, 1, "login attempt as %q from %s, refused: that name is never allowed", user, remote)
		}
		if e.rules.PasswordAttempt && (reason == reasonPassword || reason == reasonKeyboard) {
			raise(RulePasswordAttempt, remote, 1, "%s tried %s authentication as %q; it is never offered and was refused", remote, f["method"], user)
		}
		if n := e.failures.add(sourceOf(remote), ev.Session, ev.Time); n > 0 {
			raise(RuleAuthFailures, remote, n, "%d failed logins from %s within %s (latest as %q: %s)", n, remote, e.rules.AuthFailures.Window, user, reason)
		}
		switch reason {
		case reasonForbiddenUser, reasonPassword, reasonKeyboard:
			// Their own rules cover them; as "refusals of a user" they
			// would only repeat a bot's guesses.
		default:
			if user != loginUser {
				if n := e.refused.add(user, ev.Session, ev.Time); n > 0 {
					raise(RuleLoginRefused, user, n, "%s was refused %d times within %s (latest from %s: %s)", user, n, e.rules.LoginRefused.Window, remote, reason)
				}
			}
		}
	case audit.TypeLoginFailed:
		remote, reason := f["remote"], f["reason"]
		who := firstOf(f["email"], f["subject"])
		if who == "" && f["key_fp"] != "" {
			who = "key " + f["key_fp"]
		}
		if e.rules.ForbiddenUser && reason == reasonForbiddenPrincipal {
			raise(RuleForbiddenUser, remote, 1, "the login service refused %s from %s: the identity maps to a forbidden principal", firstOf(who, "an identity"), remote)
		}
		if reason != reasonCanceled {
			if n := e.refused.add(who, ev.Session, ev.Time); n > 0 {
				raise(RuleLoginRefused, who, n, "logins of %s were refused %d times within %s (latest from %s: %s)", who, n, e.rules.LoginRefused.Window, remote, reason)
			}
		}
	case audit.TypeIdPDown:
		if e.rules.IdPDown {
			raise(RuleIdPDown, f["issuer"]+" "+f["since"], 1, "the identity provider %s has not answered since %s (%s): nobody can log in until it does; existing certificates keep working",
				f["issuer"], f["since"], firstOf(f["error"], "no error recorded"))
		}
	case audit.TypeAuthOK:
		user, remote := ev.Actor, f["remote"]
		// A connection that went on to authenticate was a client trying
		// its keys in turn, not an attacker.
		e.failures.forgive(sourceOf(remote), ev.Session)
		e.refused.forgive(user, ev.Session)
		if e.rules.NewSource && user != loginUser {
			if network, ok := networkOf(remote); ok {
				if isNew, baseline := e.sources.see(user, network, ev); isNew && !baseline {
					raise(RuleNewSource, user+" "+network.String(), 1, "%s logged in from %s, in %s, a network not seen for them before (key %s)", user, remote, network, firstOf(f["key_id"], f["key_fp"]))
				}
			}
		}
	case audit.TypeRecordingTruncated:
		if e.rules.RecordingTruncated {
			raise(RuleRecordingTruncated, ev.Session, 1, "the recording of %s's session %s (login %s on %s) reached max_bytes_per_session (%s bytes): the rest of the session is counted, not stored",
				firstOf(ev.Actor, "unknown"), ev.Session, f["login"], f["target"], f["limit"])
		}
	case audit.TypeSourceBanned:
		if e.rules.Ban {
			raise(RuleBan, f["remote"], 1, "source %s was banned until %s after %s failed logins", f["remote"], f["until"], f["after_failures"])
		}
	case audit.TypeCARotated, audit.TypeCARetired, audit.TypeCertRevoked, audit.TypeUserLocked, audit.TypeUserUnlocked:
		if e.rules.CAChange {
			by := firstOf(ev.Actor, "unknown")
			switch ev.Type {
			case audit.TypeCARotated:
				raise(RuleCAChange, ev.Type+" "+f["ca"]+" "+f["new_fp"], 1, "the %s CA key was rotated by %s: new key %s, old key %s", f["ca"], by, f["new_fp"], f["old_fp"])
			case audit.TypeCARetired:
				raise(RuleCAChange, ev.Type+" "+f["ca"]+" "+f["retired_fp"], 1, "previous %s CA key(s) %s were retired by %s", f["ca"], f["retired_fp"], by)
			case audit.TypeCertRevoked:
				raise(RuleCAChange, ev.Type+" "+f["kind"]+" "+f["value"], 1, "certificates with %s %q were revoked by %s (%s)", f["kind"], f["value"], by, firstOf(f["reason"], "no reason given"))
			case audit.TypeUserLocked:
				raise(RuleCAChange, ev.Type+" "+f["target"], 1, "%s was locked by %s (%s)", f["target"], by, firstOf(f["reason"], "no reason given"))
			case audit.TypeUserUnlocked:
				raise(RuleCAChange, ev.Type+" "+f["target"], 1, "%s was unlocked by %s", f["target"], by)
			}
		}
	}
	return out
}

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// networkOf is the network new_source compares: the /24 of an IPv4
// address, the /64 of an IPv6 one.
func networkOf(remote string) (netip.Prefix, bool) {
	a, err := netip.ParseAddr(remote)
	if err != nil {
		ap, perr := netip.ParseAddrPort(remote)
		if perr != nil {
			return netip.Prefix{}, false
		}
		a = ap.Addr()
	}
	a = a.Unmap()
	bits := 64
	if a.Is4() {
		bits = 24
	}
	p, err := a.Prefix(bits)
	return p, err == nil
}

// windows counts events per key within a sliding window, for threshold
// rules. Only the latest Count events of a key are kept, and at most
// maxKeys keys (least recently counted first out), so memory is bounded
// however many sources an attack uses, and each call is O(1): stale keys
// are dropped from the oldest end as events arrive.
type windows struct {
	th   Threshold
	keys *simplelru.LRU[string, *[]stamp]
}

// stamp is one counted event and the connection it came from.
type stamp struct {
	t    time.Time
	conn string
}

// maxKeys bounds the keys (sources, users) a rule remembers.
const maxKeys = 16384

func newWindows(th Threshold) *windows {
	keys, _ := simplelru.NewLRU[string, *[]stamp](maxKeys, nil)
	return &windows{th: th, keys: keys}
}

// add counts an event for key at t and returns how many events key has
// within the window once that reaches the threshold, 0 before (and when
// the rule is off).
func (w *windows) add(key, conn string, t time.Time) int {
	if w.th.Count == 0 || key == "" {
		return 0
	}
	var s []stamp
	if p, ok := w.keys.Peek(key); ok {
		s = *p
	}
	keep := make([]stamp, 0, min(len(s)+1, w.th.Count))
	for _, st := range s {
		if t.Sub(st.t) < w.th.Window {
			keep = append(keep, st)
		}
	}
	keep = append(keep, stamp{t, conn})
	if len(keep) > w.th.Count {
		keep = keep[len(keep)-w.th.Count:]
	}
	w.keys.Add(key, &keep)
	w.sweep(t)
	if len(keep) >= w.th.Count {
		return len(keep)
	}
	return 0
}

// forgive drops the events of one connection that authenticated after all.
func (w *windows) forgive(key, conn string) {
	p, ok := w.keys.Peek(key)
	if !ok || conn == "" {
		return
	}
	keep := (*p)[:0]
	for _, st := range *p {
		if st.conn != conn {
			keep = append(keep, st)
		}
	}
	if len(keep) == 0 {
		w.keys.Remove(key)
		return
	}
	*p = keep
}

// sweep drops keys whose last event left the window; they sit at the
// oldest end, so this costs what it removes.
func (w *windows) sweep(now time.Time) {
	for {
		_, s, ok := w.keys.GetOldest()
		if !ok || (len(*s) > 0 && now.Sub((*s)[len(*s)-1].t) < w.th.Window) {
			return
		}
		w.keys.RemoveOldest()
	}
}

// sourceOf keys a source address as the gateway's ban list does: an IPv4
// address alone, an IPv6 address by its /64.
func sourceOf(remote string) string {
	a, err := netip.ParseAddr(remote)
	if err != nil || !a.Unmap().Is6() {
		return remote
	}
	p, err := a.Prefix(64)
	if err != nil {
		return remote
	}
	return p.String()
}

// sourceKey is how sourceSet stores a (user, network) pair.
func sourceKey(user string, network netip.Prefix) string {
	return user + "\x00" + network.String()
}

// splitSourceKey reverses sourceKey.
func splitSourceKey(k string) (user string, network netip.Prefix, ok bool) {
	user, n, found := strings.Cut(k, "\x00")
	if !found {
		return "", netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(n)
	return user, p, err == nil
}
