package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/internal/testbed"
)

// TestDevListens: --gateways N takes consecutive ports from --listen, and
// port 0 stays 0 for every gateway.
func TestDevListens(t *testing.T) {
	for _, tc := range []struct {
		listen string
		n      int
		want   []string
		bad    bool
	}{
		{"127.0.0.1:2222", 1, []string{"127.0.0.1:2222"}, false},
		{"127.0.0.1:2222", 3, []string{"127.0.0.1:2222", "127.0.0.1:2223", "127.0.0.1:2224"}, false},
		{"127.0.0.1:0", 2, []string{"127.0.0.1:0", "127.0.0.1:0"}, false},
		{"127.0.0.1:65535", 2, nil, true},
		{"127.0.0.1", 2, nil, true},
	} {
		got, err := devListens(tc.listen, tc.n)
		if (err != nil) != tc.bad || strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("devListens(%q, %d) = %v, %v; want %v (error: %v)", tc.listen, tc.n, got, err, tc.want, tc.bad)
		}
	}
	if _, err := startDev(t.Context(), devOptions{DataDir: t.TempDir(), Listen: "127.0.0.1:0", IdPListen: "127.0.0.1:0", Gateways: maxDevGateways + 1}); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("--gateways %d: %v, want a refusal naming the maximum", maxDevGateways+1, err)
	}
}

// TestDevClusterLockStepsVerbatim runs the steps `bastion dev --gateways 2`
// prints, verbatim, on an account with no ~/.ssh: log in through gw-1,
// hold a session through gw-1, lock alice through gw-2; the session held
// through gw-1 ends within a second of the lock, and a new jump through
// gw-1 is refused. The gateways have their own data dirs and one CA.
func TestDevClusterLockStepsVerbatim(t *testing.T) {
	testbed.RequireOpenSSH(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	env, err := startDev(ctx, devOptions{DataDir: dir, Listen: "127.0.0.1:0", IdPListen: "127.0.0.1:0", Target: "auto", PollInterval: time.Second, Gateways: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	if len(env.Gateways) != 2 || env.Gateways[0] == env.Gateways[1] {
		t.Fatalf("gateways %v, want two addresses", env.Gateways)
	}
	for _, id := range []string{"gw-1", "gw-2"} {
		if _, err := os.Stat(filepath.Join(dir, id, "audit.db")); err != nil {
			t.Errorf("%s has no audit log of its own: %v", id, err)
		}
		if _, err := os.Stat(filepath.Join(dir, id, "ca", "user_ca")); err == nil {
			t.Errorf("%s has a CA key copy in its data dir; the gateways must read the one in %s", id, filepath.Join(dir, "ca"))
		}
	}
	text := env.Instructions()
	for _, gw := range env.Gateways {
		_, p, _ := net.SplitHostPort(gw)
		if !strings.Contains(text, "ssh -p "+p+" 127.0.0.1") {
			t.Errorf("instructions lack gateway %s:\n%s", gw, text)
		}
	}
	login := stepLines(t, text, "with nothing but OpenSSH", 2)
	hold := stepLines(t, text, "hold a session through gw-1", 1)[0]
	lock := stepLines(t, text, "lock alice through gw-2", 1)[0]
	if !strings.Contains(hold, "alice@"+env.Gateways[0]) || !strings.Contains(lock, "alice@127.0.0.1") {
		t.Fatalf("the steps do not use gw-1 then gw-2:\n%s\n%s", hold, lock)
	}
	acct := newFreshAccount(t)
	approve := func(l string) {
		if m := devCodeRE.FindStringSubmatch(l); m != nil {
			if err := env.IdP.ApproveDevice(m[1], "alice"); err != nil {
				t.Error(err)
			}
		}
	}
	for i, l := range login {
		if out, err := acct.sh(ctx, t, l, approve); err != nil {
			t.Fatalf("login step %d %s: %v\n%s", i+1, l, err, out)
		}
	}

	// A descriptor the held command inherits (no close-on-exec): once the
	// session is cut, no process may still hold it (the demo host hangs
	// up the command; it must not run on as an orphan).
	marker := filepath.Join(t.TempDir(), "held-marker")
	fd, err := syscall.Open(marker, syscall.O_CREAT|syscall.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan error, 1)
	var heldOut string
	go func() {
		var err error
		heldOut, err = acct.sh(ctx, t, hold, nil)
		held <- err
	}()
	// The session is up once gw-1 lists it as active.
	_, p1, _ := net.SplitHostPort(env.Gateways[0])
	_, targetPort, _ := net.SplitHostPort(env.TargetAddr)
	for deadline := time.Now().Add(20 * time.Second); ; {
		out, _ := acct.sh(ctx, t, "ssh -p "+p1+" alice@127.0.0.1 audit sessions --active", nil)
		if strings.Contains(out, ":"+targetPort) {
			break
		}
		select {
		case err := <-held:
			t.Fatalf("the held session ended before the lock: %v\n%s", err, heldOut)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("gw-1 never listed the held session as active:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}

	if out, err := acct.sh(ctx, t, lock, nil); err != nil {
		t.Fatalf("%s: %v\n%s", lock, err, out)
	}
	locked := time.Now()
	select {
	case <-held:
		took := time.Since(locked)
		t.Logf("the session through gw-1 ended %s after the lock through gw-2 returned", took)
		if took > time.Second {
			t.Errorf("the session through gw-1 ended %s after the lock through gw-2; want within 1s", took)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a lock through gw-2 did not end alice's session through gw-1 within 10s")
	}
	syscall.Close(fd)
	for deadline := time.Now().Add(5 * time.Second); ; {
		holders := markerHolders(marker)
		if len(holders) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("processes %v still run the cut session's command 5s after the cut", holders)
			for _, pid := range holders {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	jump := stepLines(t, text, "Jump to the demo host", 1)[0]
	if out, err := acct.sh(ctx, t, jump+" echo through-the-gateway", nil); err == nil || strings.Contains(out, "through-the-gateway") {
		t.Errorf("a locked alice jumped through gw-1:\n%s", out)
	}
}

// markerHolders are the processes with path open.
func markerHolders(path string) []int {
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		for _, f := range fds {
			if l, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", f.Name())); err == nil && l == path {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
