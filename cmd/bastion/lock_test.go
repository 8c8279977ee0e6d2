package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
)

// auditEvents reads the events of type typ from a stopped data dir.
func auditEvents(t *testing.T, dataDir, typ string) []audit.Event {
	t.Helper()
	store, err := audit.Open(ca.Layout{DataDir: dataDir}.AuditDB(), audit.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	var out []audit.Event
	if err := store.Iterate(context.Background(), audit.Filter{Types: []string{typ}}, func(ev audit.Event) error {
		out = append(out, ev)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLockOffline: with no gateway running, lock and unlock write the
// audit log in --data-dir directly, as the operator.
func TestLockOffline(t *testing.T) {
	newHome(t)
	dir := t.TempDir()
	mustRun(t, dir, "ca", "init")
	// None yet: the list says so; --json is [].
	if out, errOut := mustRun(t, dir, "locks"); out != "" || strings.TrimSpace(errOut) != "no locks" {
		t.Errorf("locks with none: stdout %q stderr %q", out, errOut)
	}
	if out, _ := mustRun(t, dir, "locks", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("locks --json with none: %q", out)
	}
	out, _ := mustRun(t, dir, "lock", "alice", "--reason", "laptop stolen")
	if strings.TrimSpace(out) != "locked alice" {
		t.Errorf("lock printed %q", out)
	}
	evs := auditEvents(t, dir, audit.TypeUserLocked)
	op := (&app{}).operator()
	if len(evs) != 1 || evs[0].Actor != op || evs[0].Fields["target"] != "alice" || evs[0].Fields["reason"] != "laptop stolen" {
		t.Fatalf("user.locked events: %+v (want one by %s)", evs, op)
	}
	// What a gateway starting on this data dir will enforce.
	store, err := audit.Open(ca.Layout{DataDir: dir}.AuditDB(), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	locks, err := ca.LoadLocks(store, nil)
	store.Close()
	if err != nil {
		t.Fatal(err)
	}
	if l := locks.List(); len(l) != 1 || l[0].Target != "alice" || l[0].By != op || l[0].Reason != "laptop stolen" {
		t.Fatalf("locks = %+v", l)
	}
	if out, _ := mustRun(t, dir, "locks"); !strings.HasPrefix(out, "alice\t") || !strings.HasSuffix(out, "\t"+op+"\tlaptop stolen\n") {
		t.Errorf("locks: %q", out)
	}
	var listed []ca.Lock
	if out, _ := mustRun(t, dir, "locks", "--json"); json.Unmarshal([]byte(out), &listed) != nil || len(listed) != 1 || listed[0].Target != "alice" {
		t.Errorf("locks --json: %q", out)
	}

	out, _ = mustRun(t, dir, "unlock", "alice")
	if strings.TrimSpace(out) != "unlocked alice" {
		t.Errorf("unlock printed %q", out)
	}
	if evs := auditEvents(t, dir, audit.TypeUserUnlocked); len(evs) != 1 || evs[0].Fields["target"] != "alice" || evs[0].Actor != op {
		t.Fatalf("user.unlocked events: %+v", evs)
	}
	// Both are idempotent: a second unlock says so and succeeds, as a
	// second lock does.
	if out, _, err := run(t, dir, "unlock", "alice"); err != nil || strings.TrimSpace(out) != "alice is not locked" {
		t.Errorf("unlocking an unlocked user: %q, %v", out, err)
	}
	mustRun(t, dir, "lock", "bob")
	if out, _, err := run(t, dir, "lock", "bob", "--reason", "again"); err != nil || !strings.HasPrefix(out, "bob is already locked") {
		t.Errorf("locking a locked user: %q, %v", out, err)
	}
}

// TestLockWithoutAuditLogOrGateway: nothing to write to and nothing to
// ask: the error says both ways to do it.
func TestLockWithoutAuditLogOrGateway(t *testing.T) {
	newHome(t)
	_, _, err := run(t, t.TempDir(), "lock", "alice")
	if err == nil {
		t.Fatal("lock succeeded with no audit log and no gateway")
	}
	for _, want := range []string{"no audit log at", "--gateway HOST:PORT", "ssh -p 2222 YOUR_USER@bastion lock 'alice'"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

// TestLockThroughGateway: while a gateway holds the audit log, lock and
// unlock go through its admin command with the operator's bastion
// certificate; the lock takes effect at once (the user's ssh is refused),
// and only admins may do it.
func TestLockThroughGateway(t *testing.T) {
	e := startLoginEnv(t, loginEnvOptions{})
	engHome, opsHome := t.TempDir(), t.TempDir()
	useHome(t, engHome)
	if _, stderr, err := runLoginCLI(t, e.addr, e.approveDevice(t, "eng")); err != nil {
		t.Fatalf("eng login: %v\n%s", err, stderr)
	}
	engConfig := e.writeUserSSHConfig(t, engHome)
	if out, code := sshVia(t, engHome, engConfig, "target.internal", "true"); code != 0 {
		t.Fatalf("eng jump before the lock: exit %d: %s", code, out)
	}
	// Not an admin: the gateway refuses, and its exit status comes back.
	_, errOut, err := run(t, e.layout.DataDir, "lock", "ops", "--gateway", e.addr)
	if exitCode(err) != 126 || !strings.Contains(errOut, "admin group") {
		t.Errorf("lock by a non-admin: exit %d (%v): %s", exitCode(err), err, errOut)
	}
	if l := e.locks.List(); len(l) != 0 {
		t.Fatalf("a non-admin locked %+v", l)
	}

	useHome(t, opsHome)
	if _, stderr, err := runLoginCLI(t, e.addr, e.approveDevice(t, "ops")); err != nil {
		t.Fatalf("ops login: %v\n%s", err, stderr)
	}

	// The audit log is held: the lock goes through the gateway of the last login.
	reason := "it's compromised"
	var out string
	out, errOut, err = run(t, e.layout.DataDir, "lock", e.user, "--reason", reason)
	if err != nil {
		t.Fatalf("lock through the gateway: %v\n%s%s", err, out, errOut)
	}
	if strings.TrimSpace(out) != "locked "+e.user {
		t.Errorf("lock printed %q", out)
	}
	if l := e.locks.List(); len(l) != 1 || l[0].Target != e.user || l[0].By != "ops" || l[0].Reason != reason {
		t.Fatalf("gateway locks = %+v, want %s locked by ops with reason %q", l, e.user, reason)
	}
	if out, errOut, err := run(t, e.layout.DataDir, "locks"); err != nil || !strings.HasPrefix(out, e.user+"\t") || !strings.Contains(out, "\tops\t"+reason) {
		t.Errorf("locks through the gateway: %v %q %s", err, out, errOut)
	}
	e.waitEvent(audit.TypeUserLocked, map[string]string{"target": e.user, "reason": reason})
	useHome(t, engHome)
	if out, code := sshVia(t, engHome, engConfig, "target.internal", "true"); code != 255 || !strings.Contains(out, "Permission denied") {
		t.Fatalf("locked user's jump: exit %d: %s", code, out)
	}
	e.waitEvent("auth.failed", map[string]string{"reason": "locked", "user": e.user})

	// An explicit --gateway; the user gets in again.
	useHome(t, opsHome)
	if out, errOut, err := run(t, e.layout.DataDir, "unlock", e.user, "--gateway", e.addr); err != nil || strings.TrimSpace(out) != "unlocked "+e.user {
		t.Fatalf("unlock: %v\n%s%s", err, out, errOut)
	}
	if l := e.locks.List(); len(l) != 0 {
		t.Fatalf("locks after unlock: %+v", l)
	}
	if out, errOut, err := run(t, e.layout.DataDir, "locks", "--gateway", e.addr); err != nil || out != "" || strings.TrimSpace(errOut) != "no locks" {
		t.Errorf("locks through the gateway with none: %v %q %q", err, out, errOut)
	}
	if out, _, err := run(t, e.layout.DataDir, "locks", "--json", "--gateway", e.addr); err != nil || strings.TrimSpace(out) != "[]" {
		t.Errorf("locks --json through the gateway with none: %v %q", err, out)
	}
	if out, errOut, err := run(t, e.layout.DataDir, "unlock", e.user, "--gateway", e.addr); err != nil || !strings.Contains(out+errOut, e.user+" is not locked") {
		t.Errorf("a second unlock through the gateway: %v\n%s%s", err, out, errOut)
	}
	e.waitEvent(audit.TypeUserUnlocked, map[string]string{"target": e.user})
	useHome(t, engHome)
	if out, code := sshVia(t, engHome, engConfig, "target.internal", "true"); code != 0 {
		t.Fatalf("jump after unlock: exit %d: %s", code, out)
	}

	// ops locking ops needs --force; afterwards the gateway refuses ops's
	// certificate, and unlock says so plainly.
	useHome(t, opsHome)
	if _, errOut, err := run(t, e.layout.DataDir, "lock", "ops", "--gateway", e.addr); err == nil || !strings.Contains(errOut, "would bar you too") {
		t.Errorf("self-lock without --force: %v\n%s", err, errOut)
	}
	if _, errOut, err := run(t, e.layout.DataDir, "lock", "ops", "--force", "--gateway", e.addr); err != nil {
		t.Fatalf("self-lock with --force: %v\n%s", err, errOut)
	}
	if _, _, err := run(t, e.layout.DataDir, "unlock", "ops", "--gateway", e.addr); err == nil || !strings.Contains(err.Error(), "refused your certificate") || !strings.Contains(err.Error(), "another admin") {
		t.Errorf("unlock after a self-lock: %v", err)
	}
	if err := e.locks.Unlock(t.Context(), "ops", "test"); err != nil {
		t.Fatal(err)
	}

	// Held, and no gateway known: say how.
	newHome(t)
	_, _, err = run(t, e.layout.DataDir, "lock", e.user)
	if err == nil || !strings.Contains(err.Error(), "held by a running gateway") || !strings.Contains(err.Error(), "--gateway") {
		t.Errorf("lock with the log held and no gateway: %v", err)
	}
}

// TestReasonsRefuseAndEscapeControlCharacters: a free-text reason with
// control characters is refused at input (lock, ca revoke), and one stored
// before that check (written here straight into the audit database) is
// printed escaped by `locks` and `status`, never raw.
func TestReasonsRefuseAndEscapeControlCharacters(t *testing.T) {
	newHome(t)
	dir := t.TempDir()
	mustRun(t, dir, "ca", "init")
	evil := "x\x1b]0;PWNED\a\x1b[2J\rfake\nINJECTED"
	for _, args := range [][]string{
		{"lock", "bob", "--reason", evil},
		{"lock", "bob", "--reason", "bidi \u202e reversed"},
		{"lock", "bob", "--reason", strings.Repeat("a", ca.MaxReasonLen+1)},
		{"ca", "revoke", "--key-id", "bob", "--reason", evil},
		{"ca", "revoke", "--user", "bob", "--reason", evil},
	} {
		if _, _, err := run(t, dir, args...); err == nil || !strings.Contains(err.Error(), "reason") {
			t.Errorf("%q: accepted or unclear: %v", args[:2], err)
		}
	}
	if evs := auditEvents(t, dir, audit.TypeUserLocked); len(evs) != 0 {
		t.Fatalf("a refused lock was recorded: %+v", evs)
	}

	// An older record holding control characters.
	store, err := audit.Open(ca.Layout{DataDir: dir}.AuditDB(), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(ca.Lock{Target: "alice", Reason: evil, By: "old", Time: time.Now().UTC()})
	err = store.UpdateState(context.Background(), func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("locks"))
		if err != nil {
			return err
		}
		return b.Put([]byte("alice"), rec)
	})
	store.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, _ := mustRun(t, dir, "locks")
	if strings.ContainsAny(out, "\x1b\a\r") || strings.Count(out, "\n") != 1 || !strings.Contains(out, `\x1b]0;PWNED`) {
		t.Errorf("locks prints a stored reason raw: %q", out)
	}
	key := writeUserKey(t, t.TempDir(), "alice")
	_, _, err = run(t, dir, "ca", "sign", "-I", "alice-key", "-n", "alice", "-V", "+1h", key)
	if err == nil || strings.ContainsAny(err.Error(), "\x1b\a\r\n") || !strings.Contains(err.Error(), "locked") {
		t.Errorf("signing for a user locked with a raw reason: %q", err)
	}
}

// TestOfflineChangeOnClusterGatewayLog: lock, unlock and ca revoke run
// on the data dir of a stopped gateway of a cluster write events that
// name that gateway (as its own events do), and tell the operator the
// change reaches the other gateways only when it starts again, with how
// to change the whole cluster now. On a log no cluster gateway wrote,
// neither happens.
func TestOfflineChangeOnClusterGatewayLog(t *testing.T) {
	for _, tc := range []struct {
		name, gateway string
	}{{"cluster gateway", "gw-7"}, {"single gateway", ""}} {
		t.Run(tc.name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			mustRun(t, data, "ca", "init")
			// The log as a gateway (of a cluster, or not) leaves it.
			store, err := audit.Open(ca.Layout{DataDir: data}.AuditDB(), audit.Options{GatewayID: tc.gateway})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := store.Append(t.Context(), audit.Event{Type: audit.TypeGatewayStart, Actor: "gateway"}); err != nil {
				t.Fatal(err)
			}
			store.Close()
			for _, args := range [][]string{{"lock", "alice", "--reason", "stolen laptop"}, {"unlock", "alice"}, {"ca", "revoke", "--serial", "4242"}} {
				_, errOut := mustRun(t, data, args...)
				note := strings.Contains(errOut, "belongs to gateway gw-7 of a cluster") && strings.Contains(errOut, "only when gw-7 starts again and publishes it to etcd") &&
					strings.Contains(errOut, "run it through a running gateway")
				if note != (tc.gateway != "") {
					t.Errorf("bastion %s: note shown %v, want %v:\n%s", strings.Join(args, " "), note, tc.gateway != "", errOut)
				}
			}
			store, err = audit.Open(ca.Layout{DataDir: data}.AuditDB(), audit.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			seen := 0
			err = store.Iterate(t.Context(), audit.Filter{Types: []string{audit.TypeUserLocked, audit.TypeUserUnlocked, audit.TypeCertRevoked}}, func(ev audit.Event) error {
				seen++
				if ev.Fields[audit.FieldGateway] != tc.gateway {
					t.Errorf("%s written offline has gateway %q, want %q", ev.Type, ev.Fields[audit.FieldGateway], tc.gateway)
				}
				return nil
			})
			if err != nil || seen != 3 {
				t.Errorf("%d lock/unlock/revoke events, %v; want 3", seen, err)
			}
		})
	}
}
