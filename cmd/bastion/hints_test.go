package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestCLIHintsAreRunnable: ca init's next step names the data dir it
// used; a refused -V 48h is reported as 48h; audit export --help shows
// FILE, not a command, as the placeholder of --identity.
func TestCLIHintsAreRunnable(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	_, errOut := mustRun(t, data, "ca", "init")
	if !strings.Contains(errOut, "bastion ca export --data-dir "+data+" --user") {
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
