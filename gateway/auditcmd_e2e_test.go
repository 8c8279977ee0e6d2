package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/auditquery"
)

// withAuditors makes members of the group "auditors" auditors.
func withAuditors(c *Config, _ *Deps) { c.AuditorGroups = []string{"auditors"} }

// fillLog appends n events of assorted types, actors and awkward values
// (CSV and JSON specials, non-ASCII) straight to the store.
func fillLog(t *testing.T, store *audit.Store, n int) {
	t.Helper()
	types := []string{audit.TypeAuthFailed, audit.TypeAuthOK, audit.TypeSessionStart, audit.TypeSessionEnd, audit.TypeCertIssued}
	var wg sync.WaitGroup
	const writers = 128
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += writers {
				_, err := store.Append(context.Background(), audit.Event{
					Type: types[i%len(types)], Actor: fmt.Sprintf("user%d", i%7), Session: fmt.Sprintf("s%d", i%13),
					Fields: map[string]string{"remote": "203.0.113.7", "detail": fmt.Sprintf("a, \"quoted\"\nline %d ☃", i)},
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestAuditorExportMatchesOffline: `ssh auditor@gateway audit export` of
// the live log writes exactly the bytes the offline export of the same
// database writes with the same flags, in both formats, across pages.
func TestAuditorExportMatchesOffline(t *testing.T) {
	tg := startGateway(t, withoutBans, withAuditors)
	ctx := t.Context()
	user := tg.client(ca.Request{KeyID: "alice-laptop"})
	for range 2 {
		if res := user.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "info")...); res.ExitCode != 0 {
			t.Fatalf("login: %s", res)
		}
	}
	user.Run(ctx, "ssh", tg.gatewayArgs("root", "info")...)
	fillLog(t, tg.store, 2*1024+300)
	session := tg.events(audit.TypeAuthOK)[0].Session
	mid := tg.events(audit.TypeSessionStart)[40].Time
	time.Sleep(5 * time.Millisecond)
	// Exporting adds events (its own login and command record), so every
	// case ends before the first export: both sides see the same events.
	t0 := time.Now().UTC().Format(time.RFC3339Nano)
	auditor := tg.client(ca.Request{KeyID: "auditor-laptop", Groups: []string{"auditors"}})
	cases := map[string][]string{
		"jsonl":        {"--until", t0},
		"csv":          {"--until", t0, "--format", "csv"},
		"types csv":    {"--until", t0, "--type", "auth.*,gateway.command", "--format", "csv"},
		"actor":        {"--until", t0, "--actor", tg.user},
		"since type":   {"--since", mid.Format(time.RFC3339Nano), "--until", t0, "--type", "session.start"},
		"session":      {"--until", t0, "--session", session, "--format=jsonl"},
		"none matches": {"--until", t0, "--actor", "nobody", "--format", "csv"},
	}
	remote := map[string]string{}
	for name, args := range cases {
		res := auditor.Run(ctx, "ssh", tg.gatewayArgs(tg.user, append([]string{"audit", "export"}, args...)...)...)
		if res.ExitCode != 0 {
			t.Fatalf("%s: %s", name, res)
		}
		remote[name] = res.Stdout
	}
	// Stop the gateway; the offline export runs on the same file.
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tg.gw.Shutdown(sctx)
	if err := tg.store.Close(); err != nil {
		t.Fatal(err)
	}
	ro, err := audit.Open(tg.layout.AuditDB(), audit.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	for name, args := range cases {
		q, err := auditquery.Parse("audit export", args, time.Now(), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		var offline bytes.Buffer
		if err := ro.Export(context.Background(), &offline, q.Filter, q.Format); err != nil {
			t.Fatal(err)
		}
		if remote[name] != offline.String() {
			t.Errorf("%s: the export over SSH (%d bytes) differs from the offline export (%d bytes)", name, len(remote[name]), offline.Len())
		}
		lines := strings.Count(offline.String(), "\n")
		t.Logf("%-12s %6d lines, %8d bytes, identical", name, lines, offline.Len())
		if name != "none matches" && lines < 2 {
			t.Errorf("%s: only %d lines; the case tests nothing", name, lines)
		}
	}
	if n := strings.Count(remote["jsonl"], "\n"); n < 2*1024+300 {
		t.Errorf("the full export has %d lines; it should span several pages", n)
	}
}

// TestAuditCommandRefusedToNonAuditors: a certificate without an auditor
// group gets a clear refusal, which is audited, and the command is not
// even listed for it.
func TestAuditCommandRefusedToNonAuditors(t *testing.T) {
	tg := startGateway(t, withAuditors)
	ctx := t.Context()
	user := tg.client(ca.Request{KeyID: "alice-laptop", Groups: []string{"admins"}})
	res := user.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "audit", "export")...)
	if res.ExitCode != 126 || !strings.Contains(res.Stderr, "audit needs membership of an auditor group (auditors)") || res.Stdout != "" {
		t.Fatalf("a non-auditor's export: %s", res)
	}
	ev := tg.waitEvent(t, audit.TypeRequestDenied, map[string]string{"reason": ReasonNotAuditor, "user": tg.user})
	if ev.Fields["request"] != "audit export" || ev.Fields["key_id"] != "alice-laptop" {
		t.Errorf("refusal record %v", ev.Fields)
	}
	tg.waitEvent(t, audit.TypeCommand, map[string]string{"command": "audit export", "exit_status": "126"})
	res = user.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "nosuch")...)
	if strings.Contains(res.Stderr, "audit") {
		t.Errorf("the command list offers audit to a non-auditor: %s", res.Stderr)
	}
	auditor := tg.client(ca.Request{KeyID: "auditor-laptop", Groups: []string{"auditors"}})
	res = auditor.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "nosuch")...)
	if !strings.Contains(res.Stderr, "Commands here: info, audit") {
		t.Errorf("the command list does not offer audit to an auditor: %s", res.Stderr)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"audit"}, 2, "usage: audit export"},
		{[]string{"audit", "export", "--format", "xml"}, 2, "--format"},
		{[]string{"audit", "export", "auth.failed"}, 2, "flags only"},
		{[]string{"audit", "export", "--since", "yesterday"}, 2, "--since"},
		{[]string{"audit", "rm"}, 2, "no subcommand"},
	} {
		res := auditor.Run(ctx, "ssh", tg.gatewayArgs(tg.user, tc.args...)...)
		if res.ExitCode != tc.code || !strings.Contains(res.Stderr, tc.want) {
			t.Errorf("%v: want exit %d and %q, got %s", tc.args, tc.code, tc.want, res)
		}
	}
}

// TestAuditTailFollows: `audit tail` prints the matching history, then
// each new event as it is committed, and ends when the client goes away.
func TestAuditTailFollows(t *testing.T) {
	for _, mode := range []string{"--history", "", "-n"} {
		t.Run("mode="+mode, func(t *testing.T) { testAuditTail(t, mode) })
	}
}

// testAuditTail: with --history the tail prints the log's matching events
// first; with -n 2 the last two of them; without, like tail -f, only
// those recorded after it started.
func testAuditTail(t *testing.T, mode string) {
	tg := startGateway(t, withAuditors)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	for _, target := range []string{"before", "before1", "before2"} {
		if err := tg.locks.Lock(ctx, ca.Lock{Target: target, By: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	auditor := tg.client(ca.Request{KeyID: "auditor-laptop", Groups: []string{"auditors"}})
	args := []string{"audit", "tail", "--type", "user.locked"}
	switch mode {
	case "--history":
		args = append(args, "--history")
	case "-n":
		args = append(args, "-n", "2")
	}
	cmd := auditor.Command(ctx, "ssh", tg.gatewayArgs(tg.user, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan audit.Event)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var ev audit.Event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Errorf("tail line %q: %v", sc.Text(), err)
			}
			lines <- ev
		}
		close(lines)
	}()
	next := func() audit.Event {
		t.Helper()
		select {
		case ev, ok := <-lines:
			if !ok {
				t.Fatalf("tail ended early: %s", stderr.String())
			}
			return ev
		case <-time.After(20 * time.Second):
			t.Fatalf("no tail line; stderr %s", stderr.String())
		}
		return audit.Event{}
	}
	switch mode {
	case "--history":
		for _, want := range []string{"before", "before1", "before2"} {
			if ev := next(); ev.Fields["target"] != want {
				t.Fatalf("line %+v, want the existing lock of %s", ev, want)
			}
		}
	case "-n":
		for _, want := range []string{"before1", "before2"} {
			if ev := next(); ev.Fields["target"] != want {
				t.Fatalf("line %+v, want the existing lock of %s (the last 2)", ev, want)
			}
		}
	default:
		// The tail has started once it prints anything: lock new users
		// until it does; the first line must be one of them.
		var first audit.Event
		for i := 0; first.Type == ""; i++ {
			if err := tg.locks.Lock(ctx, ca.Lock{Target: fmt.Sprint("new", i), By: "test"}); err != nil {
				t.Fatal(err)
			}
			select {
			case ev, ok := <-lines:
				if !ok {
					t.Fatalf("tail ended early: %s", stderr.String())
				}
				first = ev
			case <-time.After(200 * time.Millisecond):
			}
			if i > 100 {
				t.Fatalf("no tail line; stderr %s", stderr.String())
			}
		}
		if !strings.HasPrefix(first.Fields["target"], "new") {
			t.Fatalf("first line %+v: a tail without --history printed the history", first)
		}
		// Drain the locks made while it started.
		for drained := false; !drained; {
			select {
			case <-lines:
			case <-time.After(time.Second):
				drained = true
			}
		}
	}
	for _, target := range []string{"mallory", "trudy", "eve"} {
		if err := tg.locks.Lock(ctx, ca.Lock{Target: target, By: "test"}); err != nil {
			t.Fatal(err)
		}
		if err := tg.locks.Unlock(ctx, target, "test"); err != nil {
			t.Fatal(err)
		}
		if ev := next(); ev.Type != audit.TypeUserLocked || ev.Fields["target"] != target {
			t.Fatalf("tail line %+v, want the lock of %s", ev, target)
		}
	}
	// The client goes away; the gateway's tail ends and is audited.
	cmd.Process.Kill()
	cmd.Wait()
	tg.waitEvent(t, audit.TypeCommand, map[string]string{"command": strings.Join(args, " "), "exit_status": "0"})
}

// TestAuditExportDoesNotStallAuthentication: an export streamed to a
// client that stops reading holds no transaction, so logins and appends
// go on while it waits. Latencies are logged, not asserted.
func TestAuditExportDoesNotStallAuthentication(t *testing.T) {
	tg := startGateway(t, withAuditors)
	ctx := t.Context()
	const n = 50000
	fillLog(t, tg.store, n)
	user := tg.client(ca.Request{KeyID: "alice-laptop"})
	login := func() time.Duration {
		start := time.Now()
		if res := user.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "info")...); res.ExitCode != 0 {
			t.Fatalf("login during the export: %s", res)
		}
		return time.Since(start)
	}
	var idle []time.Duration
	for range 5 {
		idle = append(idle, login())
	}
	auditor := tg.client(ca.Request{KeyID: "auditor-laptop", Groups: []string{"auditors"}})
	cmd := auditor.Command(ctx, "ssh", tg.gatewayArgs(tg.user, "audit", "export")...)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	// Read the first 256 KiB to know the export is streaming, then stop
	// reading: the pipe, ssh's window and the socket buffers fill and the
	// gateway's writer blocks mid-export.
	if _, err := io.ReadFull(pr, make([]byte, 256<<10)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	var stalled []time.Duration
	for range 5 {
		stalled = append(stalled, login())
	}
	if _, err := tg.store.Append(ctx, audit.Event{Type: audit.TypeAuthFailed, Actor: "during-export"}); err != nil {
		t.Fatal(err)
	}
	for _, ev := range tg.events(audit.TypeCommand) {
		if ev.Fields["command"] == "audit export" {
			t.Fatal("the export finished before the logins; the reader never stalled it")
		}
	}
	rest, err := io.ReadAll(pr)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("export: %v", err)
	}
	lines := 1 + bytes.Count(rest, []byte("\n")) // at least; the first 256 KiB hold more
	if lines < n/2 {
		t.Errorf("the export wrote only ~%d lines after stalling", lines)
	}
	t.Logf("login latency with no export: median %s; with an export of %d events stalled on its reader: median %s",
		median(idle), n, median(stalled))
}

// median of ds.
func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// TestAuditAnchorOverSSH: `ssh auditor@gateway audit anchor` verifies the
// live chain and prints an anchor that the offline verify of the same
// file, later, accepts.
func TestAuditAnchorOverSSH(t *testing.T) {
	tg := startGateway(t, withoutBans, withAuditors)
	ctx := t.Context()
	auditor := tg.client(ca.Request{KeyID: "auditor-laptop", Groups: []string{"auditors"}})
	res := auditor.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "audit", "anchor")...)
	if res.ExitCode != 0 {
		t.Fatalf("audit anchor: %s", res)
	}
	a, err := audit.ParseAnchor(res.Stdout)
	if err != nil {
		t.Fatalf("audit anchor printed %q: %v", res.Stdout, err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tg.gw.Shutdown(sctx)
	if err := tg.store.Close(); err != nil {
		t.Fatal(err)
	}
	ro, err := audit.Open(tg.layout.AuditDB(), audit.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.VerifyAnchored(context.Background(), &a); err != nil {
		t.Fatalf("offline verify with the live anchor: %v", err)
	}
}
