package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// bigTransfer is the size of the payloads that must cross the gateway
// byte-identical in each direction: large enough to need many windows and
// buffer refills, small enough for CI under -race.
const bigTransfer = 64 << 20

// TestTransferToolsThroughGateway runs the file-transfer tools users rely on
// (scp in both protocols, sftp, rsync, git, ssh with stdin) through the
// gateway with -J to a real sshd, checks that the data arrives intact and
// that each transfer is one audited session whose byte counts cover it.
// Every transfer uses its own certificate key id, so its session.start and
// session.end are the only ones with that id.
func TestTransferToolsThroughGateway(t *testing.T) {
	testTransferTools(t, startGateway(t))
}

// testTransferTools is TestTransferToolsThroughGateway's body, run in
// tunnel mode there and in record mode by TestRecordModeTransferTools.
func testTransferTools(t *testing.T, tg *testGateway) {
	remote := func(name string) string { return filepath.Join(tg.target.UserDir, name) }
	local := t.TempDir()
	big := filepath.Join(local, "big.bin")
	bigSum := xferRandomFile(t, big, bigTransfer)

	t.Run("scp", func(t *testing.T) {
		// OpenSSH 9 scp speaks SFTP by default; -O is the legacy scp
		// protocol (exec "scp -t" / "scp -f" on the target).
		up := tg.xferClient(t, "scp-up")
		if r := up.Run(t.Context(), "scp", tg.xferSCPArgs(big, tg.user+"@127.0.0.1:"+remote("scp.bin"))...); r.ExitCode != 0 {
			t.Fatalf("scp upload: %s", r)
		}
		xferSameFile(t, remote("scp.bin"), bigSum)
		tg.xferSession(t, "scp-up", bigTransfer, 0)

		down := tg.xferClient(t, "scp-down")
		back := filepath.Join(local, "scp-back.bin")
		if r := down.Run(t.Context(), "scp", tg.xferSCPArgs(tg.user+"@127.0.0.1:"+remote("scp.bin"), back)...); r.ExitCode != 0 {
			t.Fatalf("scp download: %s", r)
		}
		xferSameFile(t, back, bigSum)
		tg.xferSession(t, "scp-down", 0, bigTransfer)
	})

	t.Run("scp legacy protocol", func(t *testing.T) {
		const size = 1 << 20
		src := filepath.Join(local, "legacy.bin")
		sum := xferRandomFile(t, src, size)
		up := tg.xferClient(t, "scp-O-up")
		if r := up.Run(t.Context(), "scp", append([]string{"-O"}, tg.xferSCPArgs(src, tg.user+"@127.0.0.1:"+remote("legacy.bin"))...)...); r.ExitCode != 0 {
			t.Fatalf("scp -O upload: %s", r)
		}
		xferSameFile(t, remote("legacy.bin"), sum)
		tg.xferSession(t, "scp-O-up", size, 0)

		down := tg.xferClient(t, "scp-O-down")
		back := filepath.Join(local, "legacy-back.bin")
		if r := down.Run(t.Context(), "scp", append([]string{"-O"}, tg.xferSCPArgs(tg.user+"@127.0.0.1:"+remote("legacy.bin"), back)...)...); r.ExitCode != 0 {
			t.Fatalf("scp -O download: %s", r)
		}
		xferSameFile(t, back, sum)
		tg.xferSession(t, "scp-O-down", 0, size)
	})

	t.Run("ssh stdin and stdout", func(t *testing.T) {
		up := tg.xferClient(t, "cat-up")
		f, err := os.Open(big)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if r := up.RunInput(t.Context(), f, "ssh", tg.jumpArgs(tg.user, "cat > "+remote("cat.bin"))...); r.ExitCode != 0 {
			t.Fatalf("ssh -J 'cat > file' < 64 MiB: %s", r)
		}
		xferSameFile(t, remote("cat.bin"), bigSum)
		tg.xferSession(t, "cat-up", bigTransfer, 0)

		// Hash stdout as it streams rather than buffer 64 MiB.
		down := tg.xferClient(t, "cat-down")
		ctx, cancel := context.WithTimeout(t.Context(), testbed.DefaultTimeout)
		defer cancel()
		cmd := down.Command(ctx, "ssh", tg.jumpArgs(tg.user, "cat "+remote("cat.bin"))...)
		h, stderr := &xferHash{h: sha256.New()}, &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = h, stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("ssh -J 'cat file': %v\n%s", err, stderr)
		}
		if got := [32]byte(h.h.Sum(nil)); got != bigSum || h.n != bigTransfer {
			t.Fatalf("ssh -J 'cat file' returned %d bytes with SHA-256 %x, want %d bytes with %x", h.n, got, bigTransfer, bigSum)
		}
		tg.xferSession(t, "cat-down", 0, bigTransfer)
	})

	t.Run("sftp", func(t *testing.T) {
		const size = 8 << 20
		src := filepath.Join(local, "sftp.bin")
		sum := xferRandomFile(t, src, size)
		back := filepath.Join(local, "sftp-back.bin")
		batch := filepath.Join(local, "sftp.batch")
		script := fmt.Sprintf("cd %s\nput %s sftp-up.bin\nget sftp-up.bin %s\nls -l\n", tg.target.UserDir, src, back)
		if err := os.WriteFile(batch, []byte(script), 0o600); err != nil {
			t.Fatal(err)
		}
		c := tg.xferClient(t, "sftp")
		r := c.Run(t.Context(), "sftp", "-J", tg.xferJump(), "-P", strconv.Itoa(tg.target.Port), "-b", batch, tg.user+"@127.0.0.1")
		if r.ExitCode != 0 {
			t.Fatalf("sftp -J -b: %s", r)
		}
		xferSameFile(t, remote("sftp-up.bin"), sum)
		xferSameFile(t, back, sum)
		if !xferListed(r.Stdout, "sftp-up.bin", strconv.Itoa(size)) {
			t.Errorf("sftp ls -l does not list sftp-up.bin with size %d:\n%s", size, r.Stdout)
		}
		tg.xferSession(t, "sftp", size, size)
	})

	t.Run("rsync", func(t *testing.T) {
		testbed.RequireCommand(t, "rsync")
		src := filepath.Join(local, "tree")
		size := xferTree(t, src)
		c := tg.xferClient(t, "rsync-up")
		dest := remote("rsync-tree")
		if r := c.Run(t.Context(), "rsync", "-a", "-e", tg.xferSSHCommand(c), src+"/", tg.user+"@127.0.0.1:"+dest+"/"); r.ExitCode != 0 {
			t.Fatalf("rsync -a -e 'ssh -J ...' upload: %s", r)
		}
		xferSameTree(t, src, dest)
		tg.xferSession(t, "rsync-up", size, 0)

		c = tg.xferClient(t, "rsync-down")
		back := filepath.Join(local, "tree-back")
		if r := c.Run(t.Context(), "rsync", "-a", "-e", tg.xferSSHCommand(c), tg.user+"@127.0.0.1:"+dest+"/", back+"/"); r.ExitCode != 0 {
			t.Fatalf("rsync -a -e 'ssh -J ...' download: %s", r)
		}
		xferSameTree(t, src, back)
		tg.xferSession(t, "rsync-down", 0, size)
	})

	t.Run("git", func(t *testing.T) {
		testbed.RequireCommand(t, "git")
		c := tg.xferClient(t, "git")
		// git runs GIT_SSH_COMMAND through the shell; Env comes last, so
		// it replaces the plain "ssh -F config" that Run sets.
		c.Env = []string{"GIT_SSH_COMMAND=" + tg.xferSSHCommand(c)}
		bare := remote("repo.git")
		url := "ssh://" + tg.user + "@127.0.0.1:" + strconv.Itoa(tg.target.Port) + bare
		work, clone := filepath.Join(local, "work"), filepath.Join(local, "clone")
		if err := os.MkdirAll(work, 0o755); err != nil {
			t.Fatal(err)
		}
		payload := []byte("pushed through the gateway\n")
		if err := os.WriteFile(filepath.Join(work, "README"), payload, 0o644); err != nil {
			t.Fatal(err)
		}
		steps := [][]string{
			append([]string{"ssh"}, tg.jumpArgs(tg.user, "git", "init", "-q", "--bare", bare)...),
			{"git", "init", "-q", work},
			{"git", "-C", work, "add", "README"},
			{"git", "-C", work, "commit", "-q", "-m", "first"},
			{"git", "-C", work, "push", "-q", url, "main"}, // push over ssh through the gateway
			{"git", "clone", "-q", url, clone},             // clone over ssh through the gateway
			{"git", "-C", clone, "commit", "-q", "--allow-empty", "-m", "second"},
			{"git", "-C", clone, "push", "-q", "origin", "main"},
		}
		for _, s := range steps {
			if r := c.Run(t.Context(), s[0], s[1:]...); r.ExitCode != 0 {
				t.Fatalf("%s: %s", strings.Join(s, " "), r)
			}
		}
		if got, err := os.ReadFile(filepath.Join(clone, "README")); err != nil || !bytes.Equal(got, payload) {
			t.Errorf("cloned README = %q, %v; want %q", got, err, payload)
		}
		head := c.Run(t.Context(), "git", "-C", clone, "rev-parse", "HEAD")
		onTarget := c.Run(t.Context(), "git", "--git-dir", bare, "rev-parse", "main")
		if head.ExitCode != 0 || onTarget.ExitCode != 0 || head.Stdout != onTarget.Stdout {
			t.Errorf("the target's main is %q after the push, want the clone's HEAD %q (%s / %s)", onTarget.Stdout, head.Stdout, onTarget, head)
		}
		// One session per ssh connection: init, push, clone, push.
		for _, end := range tg.xferSessions(t, "git", 4) {
			if end.Fields["bytes_up"] == "0" || end.Fields["bytes_down"] == "0" {
				t.Errorf("git session %s moved no bytes: %v", end.Session, end.Fields)
			}
		}
	})

	t.Run("exit codes", func(t *testing.T) {
		c := tg.xferClient(t, "exit-codes")
		if r := c.Run(t.Context(), "ssh", tg.jumpArgs(tg.user, "false")...); r.ExitCode != 1 {
			t.Errorf("ssh -J target false: %s; want exit 1", r)
		}
		missing := tg.user + "@127.0.0.1:" + remote("no-such-file")
		for _, mode := range [][]string{nil, {"-O"}} {
			args := append(mode, tg.xferSCPArgs(missing, filepath.Join(local, "never"))...)
			r := c.Run(t.Context(), "scp", args...)
			if r.ExitCode != 1 || !strings.Contains(r.Stderr, "No such file") {
				t.Errorf("scp %s of a missing file: %s; want exit 1 and \"No such file\"", strings.Join(mode, ""), r)
			}
		}
		if _, err := os.Stat(filepath.Join(local, "never")); err == nil {
			t.Errorf("scp of a missing file created the local file")
		}
	})
}

// xferClient is a client whose certificate carries keyID, so that the
// sessions it opens can be told apart in the audit log.
func (tg *testGateway) xferClient(t *testing.T, keyID string) *testbed.Client {
	t.Helper()
	return tg.client(ca.Request{KeyID: "transfer-" + keyID})
}

// xferJump is the -J argument for the gateway.
func (tg *testGateway) xferJump() string { return tg.user + "@" + tg.addr }

// xferSCPArgs are scp arguments for a copy from src to dst through the
// gateway, the target's port given with scp's -P.
func (tg *testGateway) xferSCPArgs(src, dst string) []string {
	return []string{"-q", "-J", tg.xferJump(), "-P", strconv.Itoa(tg.target.Port), src, dst}
}

// xferSSHCommand returns the ssh command line (for rsync -e and
// GIT_SSH_COMMAND) that goes through the gateway to the target's port.
func (tg *testGateway) xferSSHCommand(c *testbed.Client) string {
	return c.SSHCommand() + " -J " + tg.xferJump() + " -p " + strconv.Itoa(tg.target.Port)
}

// xferSessions waits until n jump sessions of keyID have ended and returns
// their session.end events, after checking each has a session.start.
func (tg *testGateway) xferSessions(t *testing.T, keyID string, n int) []audit.Event {
	t.Helper()
	keyID = "transfer-" + keyID
	want := map[string]string{"key_id": keyID}
	deadline := time.Now().Add(10 * time.Second)
	var ends []audit.Event
	for {
		ends = ends[:0]
		for _, ev := range tg.events(audit.TypeSessionEnd) {
			if fieldsMatch(ev.Fields, want) {
				ends = append(ends, ev)
			}
		}
		if len(ends) >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d session.end events for %s, want %d; audit log:\n%s", len(ends), keyID, n, tg.dump())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(ends) != n {
		t.Errorf("%d session.end events for %s, want %d", len(ends), keyID, n)
	}
	starts := map[string]audit.Event{}
	for _, ev := range tg.events(audit.TypeSessionStart) {
		if fieldsMatch(ev.Fields, want) {
			starts[ev.Session] = ev
		}
	}
	for _, end := range ends {
		start, ok := starts[end.Session]
		switch {
		case !ok:
			t.Errorf("session %s of %s ended without a session.start", end.Session, keyID)
		case start.Fields["target"] != end.Fields["target"] || start.Time.After(end.Time):
			t.Errorf("session %s: start %v does not match end %v", end.Session, start.Fields, end.Fields)
		}
		if end.Fields["target"] != tg.target.Addr {
			t.Errorf("session %s: target %q, want %q", end.Session, end.Fields["target"], tg.target.Addr)
		}
	}
	return ends
}

// xferSession checks that keyID opened exactly one jump session and that
// its byte counts are plausible for a transfer of minUp bytes up and
// minDown bytes down: at least the payload (encryption only adds), and for
// a one-way transfer of a large payload, much less the other way.
func (tg *testGateway) xferSession(t *testing.T, keyID string, minUp, minDown int64) {
	t.Helper()
	end := tg.xferSessions(t, keyID, 1)[0]
	up, err1 := strconv.ParseInt(end.Fields["bytes_up"], 10, 64)
	down, err2 := strconv.ParseInt(end.Fields["bytes_down"], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("session.end of %s has unparseable byte counts: %v", keyID, end.Fields)
	}
	if up < minUp || down < minDown || up == 0 || down == 0 {
		t.Errorf("session.end of %s: bytes_up=%d bytes_down=%d, want at least %d and %d", keyID, up, down, minUp, minDown)
	}
	const big = 1 << 20
	if minUp >= big && minDown == 0 && down > minUp/4 {
		t.Errorf("session.end of %s: an upload of %d bytes counted %d bytes down; are the directions swapped?", keyID, minUp, down)
	}
	if minDown >= big && minUp == 0 && up > minDown/4 {
		t.Errorf("session.end of %s: a download of %d bytes counted %d bytes up; are the directions swapped?", keyID, minDown, up)
	}
	if d, err := strconv.Atoi(end.Fields["duration_ms"]); err != nil || d < 0 {
		t.Errorf("session.end of %s: duration_ms %q", keyID, end.Fields["duration_ms"])
	}
	// ssh -J's proxy may close its channel before the target's sshd has
	// closed its socket (client_closed), or end the connection first.
	if r := end.Fields["reason"]; r != "closed" && r != "client_closed" && r != "connection_closed" {
		t.Errorf("session.end of %s: reason %q, want an orderly close", keyID, r)
	}
}

// xferRandomFile writes size random bytes to path and returns their SHA-256.
func xferRandomFile(t *testing.T, path string, size int64) [32]byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// xferHash is an io.Writer that hashes and counts what it is given.
type xferHash struct {
	h hash.Hash
	n int64
}

func (x *xferHash) Write(p []byte) (int, error) {
	x.n += int64(len(p))
	return x.h.Write(p)
}

// xferSameFile fails unless path's content has SHA-256 want.
func xferSameFile(t *testing.T, path string, want [32]byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatal(err)
	}
	if got := [32]byte(h.Sum(nil)); got != want {
		t.Fatalf("%s (%d bytes) has SHA-256 %s, want %s", path, n, hex.EncodeToString(got[:]), hex.EncodeToString(want[:]))
	}
}

// xferListed reports whether an sftp "ls -l" output has a line for name
// showing size.
func xferListed(out, name, size string) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[len(f)-1] == name && strings.Contains(" "+line+" ", " "+size+" ") {
			return true
		}
	}
	return false
}

// xferTree builds a directory tree with nested and empty directories, an
// executable, a symlink and random binary content, and returns the number
// of file bytes in it.
func xferTree(t *testing.T, root string) int64 {
	t.Helper()
	var total int64
	for _, d := range []string{"a/b/c", "empty", "bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i, size := range []int64{0, 1, 4096, 100_000, 3 << 20} {
		xferRandomFile(t, filepath.Join(root, "a/b/c", fmt.Sprintf("file%d.bin", i)), size)
		total += size
	}
	text := []byte("#!/bin/sh\necho rsync\n")
	if err := os.WriteFile(filepath.Join(root, "bin/run.sh"), text, 0o750); err != nil {
		t.Fatal(err)
	}
	total += int64(len(text))
	if err := os.Symlink("a/b/c/file1.bin", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	return total
}

// xferSameTree fails unless want and got hold the same names, types,
// permission bits, symlink targets and file contents.
func xferSameTree(t *testing.T, want, got string) {
	t.Helper()
	describe := func(root string) map[string]string {
		out := map[string]string{}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			info, err := d.Info()
			if err != nil {
				return err
			}
			desc := info.Mode().String()
			switch {
			case d.Type()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				desc += " -> " + target
			case d.Type().IsRegular():
				data, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				sum := sha256.Sum256(data)
				desc += " " + hex.EncodeToString(sum[:])
			}
			out[rel] = desc
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	w, g := describe(want), describe(got)
	for name, d := range w {
		if name == "." {
			continue // the top directory's mode depends on who created it
		}
		if g[name] != d {
			t.Errorf("%s: %s is %q, want %q", got, name, g[name], d)
		}
	}
	for name := range g {
		if _, ok := w[name]; !ok {
			t.Errorf("%s: unexpected %s", got, name)
		}
	}
}
