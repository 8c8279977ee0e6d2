package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// daemon is a long-running process the benchmark started (sshd, bastion).
type daemon struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once cmd has been waited for
}

// procs tracks every daemon so that cleanup can stop them all, children
// included, whatever happened.
type procs struct {
	mu      sync.Mutex
	daemons []*daemon
}

// start runs name with args, its output to logPath, in its own process
// group so that a Ctrl-C at the terminal reaches only the benchmark, which
// then stops everything in order.
func (p *procs) start(name, logPath string, env []string, bin string, args ...string) (*daemon, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	_ = logf.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(d.done) }()
	p.mu.Lock()
	p.daemons = append(p.daemons, d)
	p.mu.Unlock()
	return d, nil
}

// waitLog waits until the daemon's log matches want (returning the
// matching line), the daemon exits, or the timeout passes.
func (d *daemon) waitLog(ctx context.Context, timeout time.Duration, want func(line string) bool) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		if data, err := os.ReadFile(d.log); err == nil {
			for _, line := range strings.Split(string(data), "\n") {
				if want(line) {
					return line, nil
				}
			}
		}
		select {
		case <-d.done:
			return "", fmt.Errorf("%s exited (%v); log %s:\n%s", d.name, d.cmd.ProcessState, d.log, tail(d.log))
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s not ready after %v; log %s:\n%s", d.name, timeout, d.log, tail(d.log))
		}
	}
}

// stop ends the daemon and every process descended from it (sshd forks a
// process per connection and those call setsid, so they are not in its
// process group): SIGTERM first, SIGKILL after a grace period.
func (d *daemon) stop(grace time.Duration) {
	select {
	case <-d.done:
		return
	default:
	}
	kids := descendants(d.cmd.Process.Pid)
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	for _, pid := range kids {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	select {
	case <-d.done:
	case <-time.After(grace):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
	}
	for _, pid := range kids {
		if alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// stopAll stops every daemon, newest first.
func (p *procs) stopAll() {
	p.mu.Lock()
	ds := p.daemons
	p.daemons = nil
	p.mu.Unlock()
	for i := len(ds) - 1; i >= 0; i-- {
		ds[i].stop(5 * time.Second)
	}
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// descendants lists every process whose parent chain leads to root
// (excluding root itself), from /proc.
func descendants(root int) []int {
	if out, ok := descendantsByChildren(root); ok {
		return out
	}
	return descendantsByScan(root)
}

// descendantsByChildren walks /proc/PID/task/TID/children from root down,
// which costs a few reads per process in the tree; scanning all of /proc
// every 20 ms took a quarter of a core and slowed the transfers being
// measured. ok is false when the kernel lacks the children files
// (CONFIG_PROC_CHILDREN).
func descendantsByChildren(root int) (out []int, ok bool) {
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d/children", os.Getpid(), os.Getpid())); err != nil {
		return nil, false
	}
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		for _, task := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if child, err := strconv.Atoi(f); err == nil {
					out = append(out, child)
					queue = append(queue, child)
				}
			}
		}
	}
	return out, true
}

// descendantsByScan reads every process's parent from /proc.
func descendantsByScan(root int) []int {
	parent := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, err := parentOf(pid); err == nil {
			parent[pid] = ppid
		}
	}
	var out []int
	for pid := range parent {
		for p, hops := parent[pid], 0; p != 0 && hops < 64; p, hops = parent[p], hops+1 {
			if p == root {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// parentOf reads the parent pid from /proc/PID/stat. The command name in
// parentheses may itself contain spaces and parentheses, hence LastIndex.
func parentOf(pid int) (int, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, errors.New("malformed stat")
	}
	return strconv.Atoi(f[1])
}

// clockTick is the unit of the times in /proc/PID/stat (USER_HZ), which
// is 100 on every Linux ABI Go supports.
const clockTick = 10 * time.Millisecond

// ownCPU is the user and system time pid itself has used (utime and
// stime in /proc/PID/stat).
func ownCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, errors.New("malformed stat")
	}
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed stat")
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// memory is resident memory in KiB: RSS counts shared pages in every
// process that maps them; PSS divides them among the sharers.
type memory struct {
	RSS, PSS int64
	Procs    int
}

// memoryOf sums RSS and PSS over pids; processes that have exited are
// skipped.
func memoryOf(pids []int) memory {
	var m memory
	for _, pid := range pids {
		rss, pss, err := procMemory(pid)
		if err != nil {
			continue
		}
		m.RSS += rss
		m.PSS += pss
		m.Procs++
	}
	return m
}

// procMemory reads Rss and Pss (KiB) from /proc/PID/smaps_rollup.
func procMemory(pid int) (rss, pss int64, err error) {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "smaps_rollup"))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "Rss:":
			rss = v
		case "Pss:":
			pss = v
		}
	}
	return rss, pss, sc.Err()
}

// tail returns the last lines of a log file for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}
