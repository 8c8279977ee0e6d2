package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDevDeletesTempDirWhenItsOutputPipeIsClosed: `bastion dev 2>&1 | tee
// log` and Ctrl-C closes the pipe before bastion's farewell lines; the
// temporary data directory (CA private keys) must still be deleted.
func TestDevDeletesTempDirWhenItsOutputPipeIsClosed(t *testing.T) {
	bin, err := faultBinary()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "dev", "--listen", "127.0.0.1:0", "--target", "builtin")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "HOME="+tmp, "BASTION_DATA_DIR=")
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	defer cmd.Process.Kill() //nolint:errcheck // best effort if the test fails early
	// Read until the instructions are out (the gateway is up), then close
	// the reader, as a Ctrl-C'd tee does.
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "bastion login") {
				ready <- true
				return
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("bastion dev ended before printing its instructions")
		}
	case <-time.After(90 * time.Second):
		t.Fatal("bastion dev printed no instructions within 90s")
	}
	r.Close()
	dirs, _ := filepath.Glob(filepath.Join(tmp, "bastion-dev-*"))
	if len(dirs) == 0 {
		t.Fatalf("no temporary data dir under %s", tmp)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("bastion dev did not stop within 60s of SIGINT")
	}
	for _, d := range dirs {
		if strings.Contains(filepath.Base(d), "target") {
			continue
		}
		if _, err := os.Stat(d); err == nil {
			t.Errorf("temporary data dir %s left behind (exit: %v)", d, cmd.ProcessState)
		}
	}
}
