package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/gateway"
	"github.com/bastion-ssh/bastion/internal/alert"
	"github.com/bastion-ssh/bastion/internal/atomicfile"
	"github.com/bastion-ssh/bastion/internal/cluster"
	"github.com/bastion-ssh/bastion/internal/config"
	"github.com/bastion-ssh/bastion/internal/gcpace"
	"github.com/bastion-ssh/bastion/internal/logattr"
	"github.com/bastion-ssh/bastion/internal/oidc"
	"github.com/bastion-ssh/bastion/internal/usertext"
)

func newServeCommand(a *app) *cobra.Command {
	var configPath, cpuProfile string
	cmd := &cobra.Command{
		Use:   "serve --config bastion.yaml",
		Short: "Run the SSH gateway",
		Long: `Run the certificate-only SSH gateway described by bastion.yaml. It holds
the audit log open for writing, so while it runs, CLI commands that write
(ca sign, ca revoke, lock) fail fast; use the gateway's admin commands
over SSH instead (ssh -p 2222 carol@bastion lock alice).`,
		Example: `  bastion ca init --data-dir ./data
  bastion serve --config bastion.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := config.Load(configPath)
			if err != nil {
				return err
			}
			logger := newLogger(a.stderr, f.Log)
			if cpuProfile != "" {
				stop, err := startCPUProfile(cpuProfile)
				if err != nil {
					return err
				}
				defer stop()
			}
			if setting, ok := gcpace.FromEnvironment(); ok {
				logger.Info("garbage collector paced by the environment", "setting", setting)
			} else {
				pacer := gcpace.Start(gcpace.Options{})
				defer pacer.Stop()
				logger.Info("garbage collector paced by bastion; set GOGC or GOMEMLIMIT to pace it yourself", "gc_percent", pacer.Percent())
			}
			rt, err := startRuntime(cmd.Context(), f, logger, a.newAuditLog, a.stderr)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "bastion: gateway listening on %s\n", rt.sshAddr)
			if rt.metricsAddr != "" {
				fmt.Fprintf(a.stderr, "bastion: metrics on http://%s/metrics\n", rt.metricsAddr)
			}
			// SIGHUP reloads the CA key files (and, in a cluster,
			// publishes the keys now trusted).
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			for running := true; running; {
				select {
				case <-cmd.Context().Done():
					running = false
				case <-hup:
					rt.reloadCA(cmd.Context(), logger)
				}
			}
			fmt.Fprintln(a.stderr, "bastion: shutting down")
			return rt.stop()
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "/etc/bastion/bastion.yaml", "path of bastion.yaml")
	cmd.Flags().StringVar(&cpuProfile, "cpu-profile", "", "write a CPU profile (pprof) of the whole run to this file when the gateway stops, for performance work (bench/jump.sh -cpu-profile)")
	return cmd
}

// startCPUProfile profiles the process until the returned function runs,
// which writes the profile to path (whole, through atomicfile: a profile
// is a few hundred KiB at most).
func startCPUProfile(path string) (func(), error) {
	var buf bytes.Buffer
	if err := pprof.StartCPUProfile(&buf); err != nil {
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := atomicfile.WriteFile(path, buf.Bytes(), 0o600); err != nil {
			fmt.Fprintf(os.Stderr, "--cpu-profile: %v\n", usertext.Error(err))
		}
	}, nil
}

// newLogger builds the slog debug logger the config asks for.
func newLogger(w interface{ Write([]byte) (int, error) }, lc config.Log) *slog.Logger {
	level := slog.LevelInfo
	_ = level.UnmarshalText([]byte(lc.Level))
	opts := &slog.HandlerOptions{Level: level}
	// Every component logs through this one logger: logattr bounds and
	// escapes its strings and writes durations and deadlines as text.
	if lc.Format == "text" {
		return slog.New(logattr.Wrap(slog.NewTextHandler(w, opts)))
	}
	return slog.New(logattr.Wrap(slog.NewJSONHandler(w, opts)))
}

// gatewayRuntime is a running gateway with everything it owns.
type gatewayRuntime struct {
	gw          *gateway.Gateway
	auth        *ca.Authority
	store       *audit.Store
	metricsSrv  *http.Server
	alerts      *alertRuntime    // nil without an alerts: section
	cluster     *cluster.Cluster // nil without a cluster: block
	sshAddr     string
	metricsAddr string
	served      chan error
	// drain is how long stop keeps serving with /healthz at 503 first
	// (cluster.drain), draining is set meanwhile.
	drain    time.Duration
	draining atomic.Bool
}

// startRuntime opens the data dir, builds the gateway and starts serving
// SSH (and metrics, when configured).
func startRuntime(ctx context.Context, f *config.File, logger *slog.Logger, newLog bool, stderr io.Writer) (*gatewayRuntime, error) {
	layout := ca.Layout{DataDir: f.DataDir, KeyDir: f.CA.Dir}
	if !layout.Exists() {
		if f.CA.Dir != "" {
			return nil, fmt.Errorf("no CA keys in %s (ca.dir): put user_ca, user_ca.pub, host_ca and host_ca.pub there, as `bastion ca init` makes them, or remove ca.dir to use %s", layout.Dir(), filepath.Join(f.DataDir, "ca"))
		}
		return nil, noCAError(layout, "bastion ca init --data-dir "+shellWord(f.DataDir))
	}
	if len(f.Access) == 0 {
		fmt.Fprintln(stderr, noAccessWarning(f.Path))
	}
	pass, err := readPassphrase(f.CA.PassphraseFile)
	if err != nil {
		return nil, err
	}
	policy, err := f.Policy()
	if err != nil {
		return nil, err
	}
	// The data dir remembers the policy, so `bastion ca sign` on it signs
	// under the same rules as the gateway.
	if err := ca.SavePolicy(layout, policy); err != nil {
		return nil, err
	}
	opts := audit.Options{Timeout: time.Second, Logger: logger, Retention: time.Duration(f.Audit.Retention),
		RecordingMaxBytes: int64(f.Recording.MaxBytesPerSession)}
	if f.Cluster != nil {
		// In a cluster every event names the gateway that wrote it.
		opts.GatewayID = f.Cluster.GatewayID
	}
	store, err := openAuditLog(ctx, layout, opts, newLog, "gateway", stderr)
	if err != nil {
		return nil, err
	}
	// Two descriptors per session (client and target): say when the limit
	// caps the gateway well below its design load of 10,000 sessions.
	if lim := gateway.OpenFileLimit(); lim > 0 && lim < minOpenFiles {
		logger.Warn("the open-file limit caps concurrent sessions at about half of it; raise it (LimitNOFILE in the systemd unit, the container runtime's nofile)", "open_file_limit", lim, "recommended", minOpenFiles)
	}
	// No session is live before the gateway serves: any the log shows
	// open were cut by a crash (kill -9, power loss). Close them in the
	// log so exports tell the truth; if that cannot be written now, the
	// next start tries again.
	if n, err := store.CloseInterrupted(ctx); err != nil {
		logger.Error("cannot close the sessions a crash cut short; the next start will try again", "closed", n, "err", err)
	} else if n > 0 {
		logger.Warn("closed sessions cut short by a crash or kill", "sessions", n, "reason", audit.ReasonGatewayCrashed)
	}
	var alerts *alertRuntime
	var cl *cluster.Cluster
	var ln net.Listener
	fail := func(err error) (*gatewayRuntime, error) {
		if ln != nil {
			ln.Close()
		}
		alerts.stop()
		if cl != nil {
			cl.Close()
		}
		store.Close()
		return nil, err
	}
	gc := f.Gateway()
	gc.Logger = logger
	if cc := f.ClusterConfig(); cc != nil {
		cc.Version = version
		if cl, err = cluster.Open(ctx, *cc, logger); err != nil {
			return fail(clusterStartError(err))
		}
	}
	// The listener is bound first (the advertise address may need its
	// port) but accepts nobody until the gateway is a member of its
	// cluster: a gateway given a live one's id, or one that cannot join,
	// exits having served no one.
	if ln, err = net.Listen("tcp", gc.Listen); err != nil {
		return fail(fmt.Errorf("listen on %s: %w%s", gc.Listen, gateway.ListenCause(err), gateway.ListenHint(err)))
	}
	sshAddr := ln.Addr().String()
	if cl != nil {
		if err := joinCluster(ctx, cl, f.Cluster.Advertise, sshAddr, logger); err != nil {
			return fail(err)
		}
	}
	auth, err := ca.New(ca.Config{Layout: layout, Policy: policy, Passphrase: pass}, store)
	if err != nil {
		return fail(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if f.OIDC != nil {
		if gc.Login, err = loginConfig(ctx, f, policy, store, reg, cl); err != nil {
			return fail(err)
		}
	}
	// Alerts start first: the gateway raises some itself (the audit log
	// failing, descriptors running out), straight to the webhooks.
	deps := gateway.Deps{Authority: auth, Audit: store, Registry: reg, Recordings: gateway.StoreRecordings{Store: store}, Cluster: cl}
	if f.Alerts != nil {
		var claimer alert.Claimer
		if cl != nil {
			claimer = cl // alerts de-duplicated across the cluster
		}
		if alerts, err = startAlerts(f, store, reg, logger, claimer); err != nil {
			return fail(err)
		}
		deps.Alerter = alerts.engine
	}
	gw, err := gateway.New(gc, deps)
	if err != nil {
		return fail(err)
	}
	rt := &gatewayRuntime{gw: gw, auth: auth, store: store, alerts: alerts, cluster: cl, sshAddr: sshAddr, served: make(chan error, 1)}
	if f.Cluster != nil {
		rt.drain = time.Duration(f.Cluster.Drain)
	}
	if f.MetricsListen != "" {
		mln, err := net.Listen("tcp", f.MetricsListen)
		if err != nil {
			ln.Close()
			return fail(fmt.Errorf("metrics_listen %s: %w", f.MetricsListen, err))
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if rt.draining.Load() {
				// Stopping: the balancer should send new users elsewhere
				// before the listener closes (cluster.drain).
				http.Error(w, "stopping: new connections should go to another gateway", http.StatusServiceUnavailable)
				return
			}
			if !gw.AuditAvailable() {
				// Load balancers and probes take the gateway out: it
				// refuses every login until the log takes writes.
				http.Error(w, "audit log unavailable: logins, jumps and commands are refused (see bastion_audit_available)", http.StatusServiceUnavailable)
				return
			}
			if cl != nil {
				if err := cl.Admit(); err != nil {
					// Past the staleness the consistency mode allows, the
					// gateway refuses new sessions: take it out.
					http.Error(w, usertext.Clean(err.Error()), http.StatusServiceUnavailable)
					return
				}
			}
			healthz(w, gc.Login)
		})
		rt.metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		rt.metricsAddr = mln.Addr().String()
		go rt.metricsSrv.Serve(mln)
	}
	go func() { rt.served <- gw.Serve(ln) }()
	return rt, nil
}

// joinCluster makes the gateway a member of its cluster under the address
// it advertises (port 0 in cluster.advertise: the port listened on), and
// records it among the cluster's known gateways. An error means the
// gateway must not serve: another live gateway holds its id (serving
// under it would mix up both gateways' records), or it could not join.
func joinCluster(ctx context.Context, cl *cluster.Cluster, adv, sshAddr string, logger *slog.Logger) error {
	if _, port, _ := net.SplitHostPort(adv); port == "0" {
		// listen :0 (tests, bastion dev): advertise the port taken.
		host, _, _ := net.SplitHostPort(adv)
		_, real, _ := net.SplitHostPort(sshAddr)
		adv = net.JoinHostPort(host, real)
	}
	m := cluster.Member{SSHAddr: adv, Started: time.Now().UTC()}
	if err := cl.Join(ctx, m); err != nil {
		if errors.Is(err, cluster.ErrIDInUse) {
			return err
		}
		return fmt.Errorf("this gateway did not start: %w", err)
	}
	if err := cl.Remember(ctx, m); err != nil {
		logger.Warn("not recorded among the cluster's known gateways; cluster-wide audit reads will not miss it while it runs", "err", err)
	}
	return nil
}

// minOpenFiles is the open-file limit below which serve warns: two
// descriptors for each of 10,000 sessions, and some to spare.
const minOpenFiles = 20480

// healthz answers 200 "ok" while the gateway serves (jumps work without
// the IdP, so an IdP outage must not get the gateway restarted), with the
// IdP's state on a second line for people and probes that look.
func healthz(w http.ResponseWriter, login *gateway.LoginConfig) {
	fmt.Fprintln(w, "ok")
	if login == nil {
		return
	}
	st := login.Provider.Status()
	if st.Up {
		fmt.Fprintf(w, "idp: up since %s (%s)\n", st.Since.UTC().Format(time.RFC3339), login.Provider.Issuer())
		return
	}
	fmt.Fprintf(w, "idp: down since %s (%s): %s; logins fail until it answers\n", st.Since.UTC().Format(time.RFC3339), login.Provider.Issuer(), st.LastError)
}

// loginConfig builds the login service's configuration. The IdP is
// reached in the background (oidc.Start): the gateway starts and serves
// jumps while it is down, logins answer idp_error meanwhile, an outage
// longer than two minutes is recorded as idp.down (which the idp_down
// alert rule reports), and bastion_idp_up shows the state.
func loginConfig(ctx context.Context, f *config.File, policy ca.Policy, store *audit.Store, reg prometheus.Registerer, cl *cluster.Cluster) (*gateway.LoginConfig, error) {
	o := f.OIDC
	secret, err := readSecretFile(o.ClientSecretFile)
	if err != nil {
		return nil, fmt.Errorf("oidc.client_secret_file: %w", err)
	}
	groupPrincipals := map[string][]string{}
	groupMax := map[string]time.Duration{}
	for g, cg := range f.Cert.Groups {
		groupPrincipals[g] = cg.Principals
		if cg.MaxValidity > 0 {
			groupMax[g] = time.Duration(cg.MaxValidity)
		}
	}
	// In a cluster, an ID token is good for one login on any gateway.
	var claim func(ctx context.Context, kind, id string, ttl time.Duration) (bool, error)
	if cl != nil {
		claim = cl.Claim
	}
	prov, err := oidc.Start(ctx, oidc.Config{
		Claim:  claim,
		Issuer: o.Issuer, ClientID: o.ClientID, ClientSecret: secret, Scopes: o.Scopes,
		UsernameClaim: o.UsernameClaim, GroupsClaim: o.GroupsClaim, GroupMap: o.GroupMap, AllowedDomains: o.AllowedDomains,
		GroupPrincipals: groupPrincipals, Forbidden: policy.Forbidden, ValidPrincipal: ca.ValidateUserPrincipal,
		OutageAfter: time.Duration(o.OutageAlertAfter),
		OnOutage: func(out oidc.Outage) {
			ev := audit.Event{Type: audit.TypeIdPUp, Actor: "gateway", Fields: map[string]string{"issuer": out.Issuer, "since": out.Start.UTC().Format(time.RFC3339)}}
			if out.Down {
				ev.Type = audit.TypeIdPDown
				ev.Fields["error"] = out.LastError
			}
			_, _ = store.Append(context.Background(), ev)
		},
	})
	if err != nil {
		return nil, err
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "bastion_idp_up", Help: "1 when the identity provider answered the gateway's last check (discovery, key set), else 0.",
	}, func() float64 {
		if prov.Status().Up {
			return 1
		}
		return 0
	}))
	return &gateway.LoginConfig{
		Provider: prov, ClientID: o.ClientID,
		DefaultValidity: time.Duration(f.Cert.DefaultValidity), MaxValidity: time.Duration(f.Cert.MaxValidity),
		GroupMaxValidity: groupMax, PerMinute: o.LoginsPerMinute, Dev: f.Dev,
	}, nil
}

// readSecretFile reads a secret, dropping the trailing newline; "" for no file.
func readSecretFile(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := readTrimmedFile(path, "secret")
	return string(b), err
}

// reloadCA reads the CA key files again; on error the keys in use stay.
func (rt *gatewayRuntime) reloadCA(ctx context.Context, logger *slog.Logger) {
	if err := rt.auth.Reload(); err != nil {
		logger.Error("SIGHUP: the CA files were not reloaded; the gateway keeps the keys it had", "err", err)
		return
	}
	logger.Info("SIGHUP: CA files reloaded")
	rt.gw.ReloadedCA(ctx)
}

// stop shuts the gateway down gracefully and closes the audit log.
func (rt *gatewayRuntime) stop() error {
	if rt.drain > 0 {
		rt.draining.Store(true)
		time.Sleep(rt.drain)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := rt.gw.Shutdown(ctx)
	if rt.metricsSrv != nil {
		rt.metricsSrv.Shutdown(ctx)
	}
	if serr := <-rt.served; serr != nil && !errors.Is(serr, net.ErrClosed) {
		err = errors.Join(err, serr)
	}
	// Alerts raised up to here still go out (briefly), and their delivery
	// records reach the log before it closes.
	rt.alerts.stop()
	if rt.cluster != nil {
		// Leaving revokes the lease: the member record and this
		// gateway's live-session entries go at once.
		err = errors.Join(err, rt.cluster.Close())
	}
	return errors.Join(err, rt.store.Close())
}

// alertFeed is how many audit events may wait for the alert engine before
// the feed drops (and counts) them; the gateway never waits for it.
const alertFeed = 8192

// alertRuntime is the alert engine reading the audit log's live feed.
type alertRuntime struct {
	engine *alert.Engine
	sub    *audit.Subscription
	done   chan struct{}
}

// startAlerts starts the alert engine on the store's live feed.
func startAlerts(f *config.File, store *audit.Store, reg prometheus.Registerer, logger *slog.Logger, claimer alert.Claimer) (*alertRuntime, error) {
	cfg, err := alertConfig(f, logger)
	if err != nil {
		return nil, err
	}
	eng, err := alert.New(cfg, alert.Deps{Store: store, Registry: reg, Cluster: claimer})
	if err != nil {
		return nil, err
	}
	ar := &alertRuntime{engine: eng, sub: store.Subscribe(alertFeed), done: make(chan struct{})}
	go func() {
		defer close(ar.done)
		eng.Run(context.Background(), ar.sub)
	}()
	return ar, nil
}

// alertGrace bounds how long a stopping gateway keeps delivering alerts.
const alertGrace = 5 * time.Second

// stop ends the feed and gives queued alerts alertGrace to go out; what is
// left is recorded as dead letters. A nil runtime does nothing.
func (ar *alertRuntime) stop() {
	if ar == nil {
		return
	}
	ar.sub.Close()
	<-ar.done
	ctx, cancel := context.WithTimeout(context.Background(), alertGrace)
	defer cancel()
	_ = ar.engine.Close(ctx)
}

// noAccessWarning is said when the configuration at path has no access
// rules: the gateway starts (logins and admin commands work) but refuses
// every jump.
func noAccessWarning(path string) string {
	if path == "" {
		path = "the configuration"
	}
	return "bastion: warning: " + path + " has no access: rules, so nobody can jump through this gateway; add rules naming principals or groups, hosts and ports (README, bastion serve)"
}

// clusterStartError is why a gateway of a cluster did not start: it
// starts only once it reaches etcd, because until it has read the
// cluster's locks and revocations it cannot tell whom to refuse (a
// running gateway that loses etcd keeps what it read, which a starting
// one never had).
func clusterStartError(err error) error {
	return fmt.Errorf("this gateway did not start: %w.\nA gateway of a cluster starts only once it reaches etcd: until it has read the cluster's locks and revocations it cannot tell whom to refuse. Start it again once etcd answers (etcdctl endpoint health --cluster); the gateways already running keep serving as cluster.consistency allows", err)
}
