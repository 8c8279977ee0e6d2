// Command jumpbench measures bastion as an SSH jump host side by side with
// OpenSSH's sshd as one, on loopback, in one run: bulk throughput through
// `ssh -J`, connection set-up time, and memory per idle jumped session. It
// prints each figure for both and their ratio (bastion / OpenSSH).
//
// It starts, in a temporary directory, a target sshd that trusts a user CA
// made with `bastion ca init`, a second sshd as OpenSSH's jump host, and
// `bastion serve`; the same client key and certificate are used for both
// paths. Every process it starts is stopped before it exits, also on
// Ctrl-C or when -timeout passes. Run it through bench/jump.sh.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

type options struct {
	bastion     string
	barejump    string
	bytes       int64
	repeat      int
	setups      int
	sessions    int
	concurrency int
	timeout     time.Duration
	skip        string
	keep        bool
	gatewayEnv  string
}

func main() {
	var o options
	flag.StringVar(&o.bastion, "bastion", "", "the bastion binary to measure (bench/jump.sh builds it)")
	flag.StringVar(&o.barejump, "barejump", "", "bench/barejump binary: when set, the memory figure also measures a bare x/crypto/ssh jump host (bench/jump.sh builds it)")
	flag.Int64Var(&o.bytes, "bytes", 1<<30, "bytes per bulk transfer")
	flag.IntVar(&o.repeat, "repeat", 3, "bulk transfers per configuration and jump host (the median is reported)")
	flag.IntVar(&o.setups, "setups", 21, "connection set-ups per jump host (the median is reported; at least 20)")
	flag.IntVar(&o.sessions, "sessions", 2000, "idle jumped sessions held open for the memory figure")
	flag.IntVar(&o.concurrency, "concurrency", 16, "sessions opened at a time for the memory figure")
	flag.DurationVar(&o.timeout, "timeout", 30*time.Minute, "give up (and clean up) after this long")
	flag.StringVar(&o.skip, "skip", "", "comma-separated figures to skip: throughput, setup, memory")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (configs and logs) for inspection")
	flag.StringVar(&o.gatewayEnv, "gateway-env", "", "space-separated VAR=value pairs for bastion serve, for tuning experiments (e.g. GOGC=50)")
	flag.Parse()
	if o.bastion == "" || o.repeat < 1 || o.setups < 1 || o.sessions < 1 || o.concurrency < 1 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	err := run(ctx, o, os.Stdout)
	cancel()
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "jumpbench:", err)
		os.Exit(1)
	}
}

// row is one line of the result table.
type row struct {
	figure, bastion, openssh, ratio, target, verdict string
}

func run(ctx context.Context, o options, w io.Writer) (err error) {
	if err := raiseFileLimit(o.sessions); err != nil {
		return err
	}
	e, err := newEnv(ctx, o.bastion, strings.Fields(o.gatewayEnv))
	defer func() {
		if e != nil {
			e.close(o.keep)
			if o.keep {
				fmt.Fprintln(w, "kept", e.dir)
			}
		}
	}()
	if err != nil {
		return err
	}
	if _, err := e.startGateway(ctx); err != nil {
		return err
	}
	bastion := jumpHost{name: "bastion", addr: e.gateway.addr, pid: func() int { return e.gateway.cmd.Process.Pid }}
	openssh := jumpHost{name: "OpenSSH sshd", addr: e.jump.addr, pid: func() int { return e.jump.cmd.Process.Pid }}
	hosts := []jumpHost{bastion, openssh}
	skip := func(name string) bool { return strings.Contains(","+o.skip+",", ","+name+",") }
	progress := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "jumpbench: "+format+"\n", args...) }
	var rows []row
	var notes []string

	sshVersion, _ := exec.Command("ssh", "-V").CombinedOutput()
	fmt.Fprintf(w, "bastion jump host vs OpenSSH sshd — %d CPUs, %s, %s, %s\n\n",
		runtime.NumCPU(), strings.TrimSpace(string(sshVersion)), runtime.Version(), time.Now().UTC().Format(time.DateOnly))

	// Every figure alternates the two hosts so that drift in machine load
	// (other jobs, CPU frequency) hits both alike. Besides throughput, the
	// CPU time each jump host spent per GiB is reported: it depends much
	// less on what else the machine is doing.
	if !skip("throughput") {
		for _, c := range []struct {
			label, cfg string
			target     float64
		}{
			{"default config, default client", e.cfgDefault, 1.2},
			{"both forced to aes128-gcm", e.cfgAES, 1.0},
		} {
			notes = append(notes, fmt.Sprintf("%s: ciphers (jump hop / inner hop): bastion %s; OpenSSH %s",
				c.label, e.ciphers(ctx, c.cfg, bastion), e.ciphers(ctx, c.cfg, openssh)))
			mbs := [2][]float64{}
			cpu := [2]time.Duration{}
			for i := range o.repeat {
				for k, j := range hosts {
					m, t, err := e.throughput(ctx, c.cfg, j, o.bytes)
					if err != nil {
						return err
					}
					progress("bulk %s, %s, run %d: %.0f MB/s, jump host CPU %v", c.label, j.name, i+1, m, t)
					mbs[k] = append(mbs[k], m)
					cpu[k] += t
				}
			}
			mb, ms := medianF(mbs[0]), medianF(mbs[1])
			gib := float64(o.bytes) * float64(o.repeat) / (1 << 30)
			cb, cs := cpu[0].Seconds()/gib, cpu[1].Seconds()/gib
			rows = append(rows,
				row{
					figure:  fmt.Sprintf("bulk %s via ssh -J, %s (MB/s, median of %d)", size(o.bytes), c.label, o.repeat),
					bastion: fmt.Sprintf("%.0f", mb), openssh: fmt.Sprintf("%.0f", ms),
					ratio: fmt.Sprintf("%.2f×", mb/ms), target: fmt.Sprintf("≥ %.2f×", c.target), verdict: verdict(mb/ms >= c.target),
				},
				row{
					figure:  fmt.Sprintf("  jump host CPU per GiB, %s (s)", c.label),
					bastion: fmt.Sprintf("%.2f", cb), openssh: fmt.Sprintf("%.2f", cs), ratio: fmt.Sprintf("%.2f×", cb/cs),
				})
		}
	}

	if !skip("setup") {
		took := [2][]time.Duration{}
		for i := range o.setups {
			for k, j := range hosts {
				d, err := e.setup(ctx, j)
				if err != nil {
					return err
				}
				took[k] = append(took[k], d)
			}
			if (i+1)%10 == 0 {
				progress("set-up: %d of %d", i+1, o.setups)
			}
		}
		mb, ms := median(took[0]), median(took[1])
		r := float64(mb) / float64(ms)
		rows = append(rows, row{
			figure:  fmt.Sprintf("connection set-up, ssh -J … true (ms, median of %d)", o.setups),
			bastion: ms3(mb), openssh: ms3(ms), ratio: fmt.Sprintf("%.2f×", r), target: "≤ 0.80×", verdict: verdict(r <= 0.8),
		})
	}

	if !skip("memory") {
		// Fresh daemons, so that buffers left from the bulk transfers do
		// not hide what sessions cost.
		if err := e.restartJumpHosts(ctx); err != nil {
			return err
		}
		progress("memory: opening %d idle sessions through bastion", o.sessions)
		var gm map[string]float64
		bm, bBefore, bAfter, err := e.idleMemory(ctx, e.gateway.addr, e.gateway.hostKey,
			func() []int { return []int{e.gateway.cmd.Process.Pid} }, o.sessions, o.concurrency,
			func() { gm = goMetrics(ctx, e.gateway.metrics) })
		if err != nil {
			return fmt.Errorf("bastion: %w", err)
		}
		if o.barejump != "" {
			progress("memory: opening %d idle sessions through bench/barejump", o.sessions)
			bare, err := e.startBareJump(ctx, o.barejump)
			if err != nil {
				return err
			}
			xm, _, _, err := e.idleMemory(ctx, bare.addr, bare.hostKey,
				func() []int { return []int{bare.cmd.Process.Pid} }, o.sessions, o.concurrency, nil)
			bare.stop(10 * time.Second)
			if err != nil {
				return fmt.Errorf("barejump: %w", err)
			}
			notes = append(notes, fmt.Sprintf("memory floor: bench/barejump, a jump host of x/crypto/ssh alone (certificate check, direct-tcpip, the same 1 KiB relay buffers and GC pacing; no audit, policy, limits or gliderlabs), holds %.1f KiB RSS per idle session with %d held",
				float64(xm.RSS)/1024, o.sessions))
		}
		progress("memory: opening %d idle sessions through OpenSSH sshd", o.sessions)
		jumpPid := e.jump.cmd.Process.Pid
		sm, sBefore, sAfter, err := e.idleMemory(ctx, e.jump.addr, e.jump.hostKey,
			func() []int { return append(descendants(jumpPid), jumpPid) }, o.sessions, o.concurrency, nil)
		if err != nil {
			return fmt.Errorf("OpenSSH sshd: %w", err)
		}
		kib := func(b int64) string { return fmt.Sprintf("%.1f", float64(b)/1024) }
		rows = append(rows,
			row{
				figure:  fmt.Sprintf("memory per idle jumped session, %d held (KiB RSS)", o.sessions),
				bastion: kib(bm.RSS), openssh: kib(sm.RSS), ratio: fmt.Sprintf("%.3f×", float64(bm.RSS)/float64(sm.RSS)),
				target: "≤ 64 KiB", verdict: verdict(bm.RSS <= 64*1024),
			},
			row{
				figure:  fmt.Sprintf("memory per idle jumped session, %d held (KiB PSS)", o.sessions),
				bastion: kib(bm.PSS), openssh: kib(sm.PSS), ratio: fmt.Sprintf("%.3f×", float64(bm.PSS)/float64(sm.PSS)),
			},
		)
		notes = append(notes,
			fmt.Sprintf("memory: bastion RSS %d → %d KiB (1 process); OpenSSH sshd RSS %d → %d KiB, PSS %d → %d KiB (%d → %d processes)",
				bBefore.RSS, bAfter.RSS, sBefore.RSS, sAfter.RSS, sBefore.PSS, sAfter.PSS, sBefore.Procs, sAfter.Procs))
		if len(gm) > 0 {
			n := float64(o.sessions)
			notes = append(notes, fmt.Sprintf("bastion with %d sessions held: %.0f goroutines (%.1f per session), heap in use %.1f MiB (%.1f KiB per session), stacks %.1f MiB (%.1f KiB per session), Go runtime total %.1f MiB",
				o.sessions, gm["go_goroutines"], gm["go_goroutines"]/n,
				gm["go_memstats_heap_inuse_bytes"]/(1<<20), gm["go_memstats_heap_inuse_bytes"]/1024/n,
				gm["go_memstats_stack_inuse_bytes"]/(1<<20), gm["go_memstats_stack_inuse_bytes"]/1024/n,
				gm["go_memstats_sys_bytes"]/(1<<20)))
		}
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tbastion\tOpenSSH\tratio\ttarget\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s %s\t\n", r.figure, r.bastion, r.openssh, r.ratio, r.target, r.verdict)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
	return nil
}

// restartJumpHosts restarts bastion and OpenSSH's jump sshd.
func (e *env) restartJumpHosts(ctx context.Context) error {
	e.gateway.stop(10 * time.Second)
	if _, err := e.startGateway(ctx); err != nil {
		return err
	}
	e.jump.stop(10 * time.Second)
	var err error
	if e.jump, err = e.startSSHD(ctx, "jump2", e.dir+"/user_ca.pub", "AllowTcpForwarding yes\n"); err != nil {
		return err
	}
	return e.writeKnownHosts()
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

func ms3(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }

func size(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

// raiseFileLimit lifts the soft open-file limit to what holding sessions
// needs (one socket each here; two in bastion, which inherits the limit).
func raiseFileLimit(sessions int) error {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	need := uint64(3*sessions + 256)
	if rl.Cur >= need {
		return nil
	}
	if rl.Max < need {
		return errors.New("the open-file limit is too low for -sessions: raise it (ulimit -Hn) to at least " + fmt.Sprint(need) + " or lower -sessions")
	}
	rl.Cur = need
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
}
