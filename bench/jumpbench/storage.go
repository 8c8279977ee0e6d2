package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// storageRun is what the storage figure measured: an interactive session
// running top, and an scp, both through bastion in record mode.
type storageRun struct {
	topTook  time.Duration
	scpBytes int64
}

// recordTop runs top in a 120×40 pty through bastion in record mode for
// seconds refreshes of one second: the screen-redrawing workload of an
// interactive session that someone leaves open.
func (e *env) recordTop(ctx context.Context, seconds int) (time.Duration, error) {
	// A pipe nobody writes to keeps stdin open (no keystrokes) until the
	// session ends, as a terminal would.
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer r.Close()
	defer w.Close()
	remote := fmt.Sprintf("stty cols 120 rows 40; TERM=xterm exec top -d 1 -n %d", seconds)
	args := append([]string{"-tt"}, e.sshArgs(e.cfgDefault, e.gateway.addr, e.recordPort, remote)...)
	_, took, err := runSSH(ctx, time.Duration(seconds)*time.Second+time.Minute, r, args...)
	return took, err
}

// recordSCP copies a file of n bytes (sparse: zeros) to the target's
// /dev/null with scp through bastion in record mode.
func (e *env) recordSCP(ctx context.Context, n int64) error {
	src := filepath.Join(e.dir, "scp-payload")
	f, err := os.Create(src)
	if err != nil {
		return err
	}
	err = f.Truncate(n)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	defer os.Remove(src)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "scp", "-q", "-F", e.cfgDefault, "-J", e.jumpSpec(e.gateway.addr),
		"-P", strconv.Itoa(e.recordPort), src, e.user+"@127.0.0.1:/dev/null")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("scp through record mode: %w\n%s", err, out)
	}
	return nil
}

// sessionEnd is the part of a session.end record the storage figure reads.
type sessionEnd struct {
	Fields map[string]string `json:"fields"`
}

// recordedSessions reads the record-mode session.end records, oldest
// first, with `bastion audit export` (bastion must not be running: it
// holds the log).
func (e *env) recordedSessions(ctx context.Context) ([]sessionEnd, error) {
	out, err := e.run(ctx, e.bastion, "audit", "export", "--type", "session.end", "--data-dir", e.dataDir)
	if err != nil {
		return nil, err
	}
	var ends []sessionEnd
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var s sessionEnd
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			return nil, fmt.Errorf("bastion audit export: %w", err)
		}
		if s.Fields["mode"] == "record" {
			ends = append(ends, s)
		}
	}
	return ends, sc.Err()
}

// storageFigures reads, with bastion stopped, what the top session and the
// scp stored: the last two record-mode sessions, in that order. It returns
// bytes per hour of the interactive session and bytes per GiB of scp.
func (e *env) storageFigures(ctx context.Context, run storageRun) (perHour, perGiB float64, err error) {
	ends, err := e.recordedSessions(ctx)
	if err != nil {
		return 0, 0, err
	}
	if len(ends) < 2 {
		return 0, 0, fmt.Errorf("the audit log holds %d record-mode session ends, want the top session's and the scp's", len(ends))
	}
	top, scp := ends[len(ends)-2].Fields, ends[len(ends)-1].Fields
	if up, _ := strconv.ParseInt(scp["payload_up"], 10, 64); up < run.scpBytes {
		return 0, 0, fmt.Errorf("the last recorded session carried %d bytes up, not the scp's %d: %v", up, run.scpBytes, scp)
	}
	tb, err1 := strconv.ParseFloat(top["recording_bytes"], 64)
	sb, err2 := strconv.ParseFloat(scp["recording_bytes"], 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("session.end without recording_bytes: %v / %v", top, scp)
	}
	return tb * float64(time.Hour) / float64(run.topTook), sb * float64(1<<30) / float64(run.scpBytes), nil
}
