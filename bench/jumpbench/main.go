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
	hosts       string
	topSeconds  int
	scpBytes    int64
	cpuProfile  string
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
	flag.StringVar(&o.skip, "skip", "", "comma-separated figures to skip: throughput, setup, storage, memory")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (configs and logs) for inspection")
	flag.StringVar(&o.gatewayEnv, "gateway-env", "", "space-separated VAR=value pairs for bastion serve, for tuning experiments (e.g. GOGC=50)")
	flag.StringVar(&o.hosts, "hosts", "tunnel,record,barejump,openssh", "comma-separated jump hosts to measure: tunnel and record (bastion's two modes), barejump (needs -barejump), openssh")
	flag.IntVar(&o.topSeconds, "top-seconds", 30, "seconds of top in a recorded pty for the storage figure (scaled to an hour)")
	flag.Int64Var(&o.scpBytes, "scp-bytes", 256<<20, "bytes copied with scp for the storage figure (scaled to a GiB)")
	flag.StringVar(&o.cpuProfile, "cpu-profile", "", "write bastion's CPU profile (pprof) of the bulk transfers to this file, e.g. for cmd/bastion/default.pgo")
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

// row is one line of the result table: a value per jump host measured
// (by name), and the ratios that have targets.
type row struct {
	figure string
	vals   map[string]string
	// ratios: record/tunnel and tunnel/OpenSSH, with their targets.
	recTun, tunSSH       string
	recTarget, sshTarget string
}

// Names of the jump hosts, as -hosts and the table name them.
const (
	hostTunnel   = "tunnel"
	hostRecord   = "record"
	hostBareJump = "barejump"
	hostOpenSSH  = "openssh"
)

// ratio formats a/b, or "" when either is missing.
func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// goal formats a ratio's target and whether it was met, or "".
func goal(r float64, want string, ok bool) string {
	if r == 0 {
		return ""
	}
	return want + " " + verdict(ok)
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
	e.cpuProfile = o.cpuProfile
	if _, err := e.startGateway(ctx); err != nil {
		return err
	}
	want := func(name string) bool { return strings.Contains(","+o.hosts+",", ","+name+",") }
	gatewayPid := func() int { return e.gateway.cmd.Process.Pid }
	var hosts []jumpHost
	if want(hostTunnel) {
		hosts = append(hosts, jumpHost{name: hostTunnel, addr: e.gateway.addr, port: e.target.port, pid: gatewayPid})
	}
	if want(hostRecord) {
		hosts = append(hosts, jumpHost{name: hostRecord, addr: e.gateway.addr, port: e.recordPort, pid: gatewayPid})
	}
	if want(hostBareJump) && o.barejump != "" {
		if _, err := e.startBareJump(ctx, o.barejump); err != nil {
			return err
		}
		hosts = append(hosts, jumpHost{name: hostBareJump, addr: e.bare.addr, port: e.target.port, pid: func() int { return e.bare.cmd.Process.Pid }})
	}
	if want(hostOpenSSH) {
		hosts = append(hosts, jumpHost{name: hostOpenSSH, addr: e.jump.addr, port: e.target.port, pid: func() int { return e.jump.cmd.Process.Pid }})
	}
	if len(hosts) == 0 {
		return errors.New("-hosts names no jump host to measure: use tunnel, record, barejump, openssh")
	}
	// The gateway and the jump sshd restart between figures: addresses
	// are looked up when used.
	addrOf := func(j jumpHost) string {
		switch j.name {
		case hostTunnel, hostRecord:
			return e.gateway.addr
		case hostBareJump:
			return e.bare.addr
		}
		return e.jump.addr
	}
	skip := func(name string) bool { return strings.Contains(","+o.skip+",", ","+name+",") }
	progress := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "jumpbench: "+format+"\n", args...) }
	var rows []row
	var notes []string
	// ratios fills a row's ratios from per-host numbers.
	ratios := func(r *row, v map[string]float64, recGoal string, recOK func(float64) bool, sshGoal string, sshOK func(float64) bool) {
		r.recTun = ratio(v[hostRecord], v[hostTunnel])
		r.tunSSH = ratio(v[hostTunnel], v[hostOpenSSH])
		if rr := v[hostRecord] / v[hostTunnel]; recGoal != "" && v[hostRecord] != 0 && v[hostTunnel] != 0 {
			r.recTarget = goal(rr, recGoal, recOK(rr))
		}
		if rs := v[hostTunnel] / v[hostOpenSSH]; sshGoal != "" && v[hostTunnel] != 0 && v[hostOpenSSH] != 0 {
			r.sshTarget = goal(rs, sshGoal, sshOK(rs))
		}
	}

	sshVersion, _ := exec.Command("ssh", "-V").CombinedOutput()
	fmt.Fprintf(w, "bastion (tunnel and record mode), bench/barejump and OpenSSH sshd as jump hosts — %d CPUs, %s, %s, %s\n\n",
		runtime.NumCPU(), strings.TrimSpace(string(sshVersion)), runtime.Version(), time.Now().UTC().Format(time.DateOnly))

	// Every figure alternates the hosts so that drift in machine load
	// (other jobs, CPU frequency) hits all alike. Besides throughput, the
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
			var cs []string
			for _, j := range hosts {
				cs = append(cs, j.name+" "+e.ciphers(ctx, c.cfg, j))
			}
			notes = append(notes, fmt.Sprintf("%s: ciphers (jump hop / inner hop): %s", c.label, strings.Join(cs, "; ")))
			mbs := map[string][]float64{}
			cpu := map[string]time.Duration{}
			calls := map[string]int64{}
			for i := range o.repeat {
				for _, j := range hosts {
					j.addr = addrOf(j)
					m, t, n, err := e.throughput(ctx, c.cfg, j, o.bytes)
					if err != nil {
						return err
					}
					g := float64(o.bytes) / (1 << 30)
					progress("bulk %s, %s, run %d: %.0f MB/s, jump host CPU %v (%.2f s/GiB), %.0f read+write calls/GiB", c.label, j.name, i+1, m, t, t.Seconds()/g, float64(n)/g)
					mbs[j.name] = append(mbs[j.name], m)
					cpu[j.name] += t
					calls[j.name] += n
				}
			}
			gib := float64(o.bytes) * float64(o.repeat) / (1 << 30)
			tr := row{figure: fmt.Sprintf("bulk %s via ssh -J, %s (MB/s, median of %d)", size(o.bytes), c.label, o.repeat), vals: map[string]string{}}
			cr := row{figure: fmt.Sprintf("  jump host CPU per GiB, %s (s)", c.label), vals: map[string]string{}}
			sr := row{figure: fmt.Sprintf("  jump host read+write calls per GiB, %s (thousands)", c.label), vals: map[string]string{}}
			tv, cv, sv := map[string]float64{}, map[string]float64{}, map[string]float64{}
			for _, j := range hosts {
				tv[j.name] = medianF(mbs[j.name])
				cv[j.name] = cpu[j.name].Seconds() / gib
				sv[j.name] = float64(calls[j.name]) / gib
				tr.vals[j.name] = fmt.Sprintf("%.0f", tv[j.name])
				cr.vals[j.name] = fmt.Sprintf("%.2f", cv[j.name])
				sr.vals[j.name] = fmt.Sprintf("%.1f", sv[j.name]/1000)
			}
			ratios(&tr, tv, "≥ 0.60×", func(r float64) bool { return r >= 0.6 }, fmt.Sprintf("≥ %.2f×", c.target), func(r float64) bool { return r >= c.target })
			ratios(&cr, cv, "", nil, "", nil)
			ratios(&sr, sv, "", nil, "", nil)
			rows = append(rows, tr, cr, sr)
		}
		if e.cpuProfile != "" {
			// Stopping bastion writes the profile of the transfers.
			e.cpuProfile = ""
			e.gateway.stop(10 * time.Second)
			if _, err := e.startGateway(ctx); err != nil {
				return err
			}
			notes = append(notes, "CPU profile of bastion during the transfers: "+o.cpuProfile)
		}
	}

	if !skip("setup") {
		took := map[string][]time.Duration{}
		for i := range o.setups {
			for _, j := range hosts {
				j.addr = addrOf(j)
				d, err := e.setup(ctx, j)
				if err != nil {
					return err
				}
				took[j.name] = append(took[j.name], d)
			}
			if (i+1)%10 == 0 {
				progress("set-up: %d of %d", i+1, o.setups)
			}
		}
		r := row{figure: fmt.Sprintf("connection set-up, ssh -J … true (ms, median of %d)", o.setups), vals: map[string]string{}}
		v := map[string]float64{}
		for _, j := range hosts {
			m := median(took[j.name])
			v[j.name] = float64(m)
			r.vals[j.name] = ms3(m)
		}
		ratios(&r, v, "≤ 1.30×", func(r float64) bool { return r <= 1.3 }, "≤ 0.80×", func(r float64) bool { return r <= 0.8 })
		rows = append(rows, r)
	}

	if !skip("storage") && want(hostRecord) {
		progress("storage: top for %d s in a recorded pty, then scp of %s, through record mode", o.topSeconds, size(o.scpBytes))
		run := storageRun{scpBytes: o.scpBytes}
		if run.topTook, err = e.recordTop(ctx, o.topSeconds); err != nil {
			return err
		}
		if err := e.recordSCP(ctx, o.scpBytes); err != nil {
			return err
		}
		// bastion holds the audit log: read it stopped.
		e.gateway.stop(10 * time.Second)
		perHour, perGiB, err := e.storageFigures(ctx, run)
		if err != nil {
			return err
		}
		if _, err := e.startGateway(ctx); err != nil {
			return err
		}
		rows = append(rows,
			row{figure: fmt.Sprintf("recording stored per hour of an interactive session (top -d 1 in 120×40, %d s scaled) (KiB)", o.topSeconds),
				vals: map[string]string{hostRecord: fmt.Sprintf("%.0f", perHour/1024)}},
			row{figure: fmt.Sprintf("recording stored per GiB of scp (%s scaled) (KiB)", size(o.scpBytes)),
				vals: map[string]string{hostRecord: fmt.Sprintf("%.1f", perGiB/1024)}})
	}

	if !skip("memory") {
		rss, pss := row{figure: fmt.Sprintf("memory per idle jumped session, %d held (KiB RSS)", o.sessions), vals: map[string]string{}},
			row{figure: fmt.Sprintf("memory per idle jumped session, %d held (KiB PSS)", o.sessions), vals: map[string]string{}}
		rv, pv := map[string]float64{}, map[string]float64{}
		kib := func(b int64) string { return fmt.Sprintf("%.1f", float64(b)/1024) }
		for _, j := range hosts {
			// A fresh daemon for each, so that buffers left from the
			// bulk transfers or the previous host do not hide what
			// sessions cost.
			var pids func() []int
			var key = e.gateway.hostKey
			var whileHeld func()
			var gm map[string]float64
			switch j.name {
			case hostTunnel, hostRecord:
				e.gateway.stop(10 * time.Second)
				if _, err := e.startGateway(ctx); err != nil {
					return err
				}
				pids = func() []int { return []int{e.gateway.cmd.Process.Pid} }
				whileHeld = func() { gm = goMetrics(ctx, e.gateway.metrics) }
			case hostBareJump:
				e.bare.stop(10 * time.Second)
				if _, err := e.startBareJump(ctx, o.barejump); err != nil {
					return err
				}
				pids = func() []int { return []int{e.bare.cmd.Process.Pid} }
			default:
				e.jump.stop(10 * time.Second)
				if e.jump, err = e.startSSHD(ctx, fmt.Sprintf("jump-%d", time.Now().UnixNano()), e.dir+"/user_ca.pub", "AllowTcpForwarding yes\n"); err != nil {
					return err
				}
				if err := e.writeKnownHosts(); err != nil {
					return err
				}
				jumpPid := e.jump.cmd.Process.Pid
				pids = func() []int { return append(descendants(jumpPid), jumpPid) }
				key = e.jump.hostKey
			}
			progress("memory: opening %d idle sessions through %s", o.sessions, j.name)
			m, before, after, err := e.idleMemory(ctx, addrOf(j), key, j.port, pids, o.sessions, o.concurrency, whileHeld)
			if err != nil {
				return fmt.Errorf("%s: %w", j.name, err)
			}
			progress("memory, %s: %.1f KiB RSS, %.1f KiB PSS per idle session", j.name, float64(m.RSS)/1024, float64(m.PSS)/1024)
			rv[j.name], pv[j.name] = float64(m.RSS), float64(m.PSS)
			rss.vals[j.name], pss.vals[j.name] = kib(m.RSS), kib(m.PSS)
			notes = append(notes, fmt.Sprintf("memory, %s: RSS %d → %d KiB, PSS %d → %d KiB (%d → %d processes)",
				j.name, before.RSS, after.RSS, before.PSS, after.PSS, before.Procs, after.Procs))
			if len(gm) > 0 {
				n := float64(o.sessions)
				notes = append(notes, fmt.Sprintf("bastion (%s) with %d sessions held: %.0f goroutines (%.1f per session), heap in use %.1f MiB (%.1f KiB per session), stacks %.1f MiB (%.1f KiB per session), Go runtime total %.1f MiB",
					j.name, o.sessions, gm["go_goroutines"], gm["go_goroutines"]/n,
					gm["go_memstats_heap_inuse_bytes"]/(1<<20), gm["go_memstats_heap_inuse_bytes"]/1024/n,
					gm["go_memstats_stack_inuse_bytes"]/(1<<20), gm["go_memstats_stack_inuse_bytes"]/1024/n,
					gm["go_memstats_sys_bytes"]/(1<<20)))
			}
		}
		ratios(&rss, rv, "", nil, "", nil)
		ratios(&pss, pv, "", nil, "", nil)
		if t, ok := rv[hostTunnel]; ok {
			rss.sshTarget = "tunnel ≤ 64 KiB " + verdict(t <= 64*1024)
		}
		rows = append(rows, rss, pss)
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "figure\t")
	for _, j := range hosts {
		fmt.Fprintf(tw, "%s\t", j.name)
	}
	fmt.Fprintln(tw, "record/tunnel\ttarget\ttunnel/openssh\ttarget\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t", r.figure)
		for _, j := range hosts {
			fmt.Fprintf(tw, "%s\t", r.vals[j.name])
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", r.recTun, r.recTarget, r.tunSSH, r.sshTarget)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
	return nil
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
