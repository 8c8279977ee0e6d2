package atomicfile

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKill9LeavesNoPartialFile: a writer killed with SIGKILL at random
// moments leaves the destination whole (or absent) and no partial or empty
// file beside it: while data is written the file has no name (O_TMPFILE on
// Linux), and it gets one only once whole.
func TestKill9LeavesNoPartialFile(t *testing.T) {
	if dir := os.Getenv("ATOMICFILE_CHILD_DIR"); dir != "" {
		data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
		for i := 0; ; i++ {
			_ = WriteFile(filepath.Join(dir, "cert.pub"), data, 0o644)
		}
	}
	dir := t.TempDir()
	want := 16 * 64 << 10
	for i := range 20 {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestKill9LeavesNoPartialFile$")
		cmd.Env = append(os.Environ(), "ATOMICFILE_CHILD_DIR="+dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(20+i*7) * time.Millisecond)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			info, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			if info.Size() != int64(want) {
				t.Fatalf("kill %d left %s with %d bytes, want a whole %d-byte file or none", i, e.Name(), info.Size(), want)
			}
			if strings.Contains(e.Name(), ".tmp-") {
				// Named only between linking a whole file and renaming it.
				t.Logf("kill %d landed between link and rename: %s (whole)", i, e.Name())
			}
		}
	}
}

// TestStaleTemporaryFileRemoved: a whole temporary file a crash left
// between link and rename is removed by the next write once it is stale.
func TestStaleTemporaryFileRemoved(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k")
	stale := filepath.Join(dir, ".k.tmp-7")
	if err := os.WriteFile(stale, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * staleAfter)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(path, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("the stale temporary file is still there: %v", err)
	}
}

// TestSpecialFilesAreWrittenInPlace: writing to a device, a FIFO or
// through a symlink never replaces the special file or the link with a
// regular file (ca sign --out /dev/null must not destroy /dev/null).
func TestSpecialFilesAreWrittenInPlace(t *testing.T) {
	dir := t.TempDir()
	if err := WriteFile("/dev/null", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat("/dev/null"); err != nil || fi.Mode()&os.ModeDevice == 0 {
		t.Fatalf("/dev/null is no longer a device: %v %v", fi.Mode(), err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscallMkfifo(fifo); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := os.ReadFile(fifo)
		got <- b
	}()
	if err := WriteFile(fifo, []byte("through the pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b := <-got; string(b) != "through the pipe" {
		t.Errorf("the FIFO's reader got %q", b)
	}
	if fi, err := os.Lstat(fifo); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("the FIFO was replaced: %v %v", fi.Mode(), err)
	}
	target := filepath.Join(dir, "real")
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(target, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(link, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("the symlink was replaced by a file")
	}
	if b, _ := os.ReadFile(target); string(b) != "new" {
		t.Errorf("the link's target holds %q, want new", b)
	}
}
