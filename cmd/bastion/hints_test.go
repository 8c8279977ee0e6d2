package main

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	shlex "github.com/anmitsu/go-shlex"
)

// TestCLIHintsAreRunnable: ca init's next step names the data dir it
// used; a refused -V 48h is reported as 48h; audit export --help shows
// FILE, not a command, as the placeholder of --identity.
func TestCLIHintsAreRunnable(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	_, errOut := mustRun(t, data, "ca", "init")
	if !strings.Contains(errOut, "bastion ca export --user --data-dir "+data) {
		t.Errorf("ca init's hint lacks --data-dir:\n%s", errOut)
	}
	key := writeUserKey(t, t.TempDir(), "alice")
	_, _, err := run(t, data, "ca", "sign", "-I", "alice", "-n", "alice", "-V", "48h", key)
	if err == nil || !strings.Contains(err.Error(), "requested validity 48h0m0s") {
		t.Errorf("ca sign -V 48h: %v", err)
	}
	out, _ := mustRun(t, data, "audit", "export", "--help")
	if !strings.Contains(out, "--identity FILE") || strings.Contains(out, "--identity bastion") {
		t.Errorf("audit export --help:\n%s", out)
	}
}

// hintRE finds the bastion command lines a message gives as next steps.
var hintRE = regexp.MustCompile("`(bastion [^`]*)`")

// TestEveryCAHintRunsVerbatim: every `bastion ...` step that the ca
// commands print, in a data dir that is not the default (its name needs
// quoting), runs as printed (placeholders filled in) on that data dir,
// with nothing but BASTION_DATA_DIR pointing elsewhere.
func TestEveryCAHintRunsVerbatim(t *testing.T) {
	newHome(t)
	data := filepath.Join(t.TempDir(), "my data")
	t.Setenv("BASTION_DATA_DIR", filepath.Join(t.TempDir(), "default"))
	keys := t.TempDir()
	fill := strings.NewReplacer("FILE", filepath.Join(keys, "revoked.krl"), "NAME", "alice")
	var hints []string
	collect := func(text string) {
		for _, m := range hintRE.FindAllStringSubmatch(text, -1) {
			hints = append(hints, m[1])
		}
	}
	_, errOut := mustRun(t, data, "ca", "init")
	collect(errOut)
	_, _, err := run(t, data, "ca", "init")
	collect(err.Error())
	mustRun(t, data, "ca", "sign", "-I", "alice@example.com sub=1", "-n", "alice", "-V", "+1h", writeUserKey(t, keys, "alice"))
	_, errOut = mustRun(t, data, "ca", "revoke", "--key-id", "alice@example.com")
	collect(errOut)
	_, errOut = mustRun(t, data, "ca", "revoke", "--user", "alice")
	collect(errOut)
	_, _, err = run(t, data, "ca", "revoke", "--user", "bob")
	collect(err.Error())
	_, errOut = mustRun(t, data, "ca", "rotate", "--host")
	collect(errOut)
	if len(hints) < 8 {
		t.Fatalf("found only %d hints: %q", len(hints), hints)
	}
	for _, h := range hints {
		if !strings.Contains(h, "--data-dir '"+data+"'") {
			t.Errorf("hint %q does not name the data dir %q", h, data)
		}
		words, err := shlex.Split(fill.Replace(h), true)
		if err != nil {
			t.Fatalf("%q: %v", h, err)
		}
		// Run in order: init's refusal names ca rotate, and rotate's
		// retire runs because the old host CA key signed nothing.
		if _, errOut, err := run(t, "", words[1:]...); err != nil {
			t.Errorf("the printed step `%s` failed: %v\n%s", h, err, errOut)
		}
	}
}
