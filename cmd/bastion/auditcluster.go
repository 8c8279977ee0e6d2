package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/internal/auditquery"
	"github.com/bastion-ssh/bastion/internal/cluster"
	"github.com/bastion-ssh/bastion/internal/usertext"
)

// Cluster-wide audit reads are a fan-out, not a shared log: each gateway
// keeps its own log and chain, and `audit export|sessions|verify
// --cluster` asks every gateway of the cluster (found in etcd with
// --config, or through --gateway's `cluster status`) with the auditor's
// own certificate, merges by time and reports each gateway separately. A
// gateway that cannot be read, running or not, is named and makes the
// exit status exitPartial: nothing is skipped silently.

// exitPartial is the exit status of a cluster-wide read that could not
// read every gateway; what it could read was written.
const exitPartial = 3

// fanoutParallel bounds the gateways asked at once.
const fanoutParallel = 8

// clusterFlags are --cluster and --config of the audit commands.
type clusterFlags struct {
	on  bool
	src clusterSource
}

func (c *clusterFlags) register(cmd *cobra.Command, what string) {
	cmd.Flags().BoolVar(&c.on, "cluster", false, what+" of every gateway of the cluster (found with --config's etcd, or through --gateway), merged by time; a gateway that cannot be read is named and the exit status is 3")
	c.src.registerConfig(cmd, "with --cluster: a bastion.yaml whose cluster: block reaches etcd, to find the gateways (without it, --gateway is asked for them)")
}

// memberRead is one gateway's answer to a fanned-out command.
type memberRead struct {
	id, addr       string
	stdout, stderr bytes.Buffer
	err            error
}

// fanOut runs command on every member of the cluster, and records every
// known gateway that is down as unreadable.
func (a *app) fanOut(ctx context.Context, cf clusterFlags, rf remoteFlags, command string) ([]*memberRead, error) {
	cf.src.rf = rf
	st, err := a.clusterStatus(ctx, cf.src)
	if err != nil {
		return nil, fmt.Errorf("find the cluster's gateways: %w", err)
	}
	if st.MembersCached {
		// etcd is unreachable from the gateway asked: it gave the last
		// member list it read, which is the best there is.
		if st.MembersAsOf.IsZero() {
			return nil, fmt.Errorf("etcd is unreachable from gateway %s and it has no member list to go on; %s", st.Gateway, cluster.EtcdAdvice(st.Endpoints))
		}
		fmt.Fprintf(a.stderr, "bastion: WARNING: etcd is unreachable from gateway %s; asking the gateways in the last member list it read, %s ago (a gateway that joined since is missed); %s\n",
			st.Gateway, time.Since(st.MembersAsOf).Round(time.Second), cluster.EtcdAdvice(st.Endpoints))
	}
	if len(st.Members) == 0 && len(st.Down) == 0 {
		return nil, errors.New("the cluster has no members: no gateway runs with this cluster: block (bastion cluster status)")
	}
	reads := make([]*memberRead, 0, len(st.Members)+len(st.Down))
	var wg sync.WaitGroup
	sem := make(chan struct{}, fanoutParallel)
	for _, m := range st.Members {
		r := &memberRead{id: m.ID, addr: m.SSHAddr}
		reads = append(reads, r)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			r.err = a.gatewayCommand(ctx, rf, r.addr, command, &r.stdout, &r.stderr)
		}()
	}
	for _, k := range st.Down {
		reads = append(reads, &memberRead{id: k.ID, addr: k.SSHAddr, err: fmt.Errorf("not running: it is not in the cluster's member list (stopped, crashed or cut off from etcd); start it, or `bastion cluster forget %s` if it is retired", k.ID)})
	}
	wg.Wait()
	sort.Slice(reads, func(i, j int) bool { return reads[i].id < reads[j].id })
	return reads, nil
}

// reportUnread names, on stderr, every gateway that could not be read
// (with what it said), and returns the exitPartial error, or nil.
func (a *app) reportUnread(reads []*memberRead, what string) error {
	var bad []string
	for _, r := range reads {
		if r.err == nil {
			continue
		}
		bad = append(bad, r.id)
		fmt.Fprintf(a.stderr, "bastion: gateway %s (%s) could not be read: %s\n", r.id, r.addr, userError(r.err))
		for _, line := range strings.Split(strings.TrimSpace(r.stderr.String()), "\n") {
			if line != "" {
				fmt.Fprintf(a.stderr, "  %s: %s\n", r.id, usertext.Clean(line))
			}
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return &exitError{code: exitPartial, err: fmt.Errorf("%d of %d gateways could not be read (%s): %s is missing their part", len(bad), len(reads), strings.Join(bad, ", "), what)}
}

// exportCluster is `audit export --cluster`: every gateway's matching
// events, merged by time (then gateway, then id), in the asked format.
// Each line is the gateway's own canonical event, so a JSON Lines export
// can still be checked event by event.
func (a *app) exportCluster(ctx context.Context, cf clusterFlags, rf remoteFlags, q auditquery.Query) error {
	format := q.Format
	q.Format = audit.FormatJSONL
	reads, err := a.fanOut(ctx, cf, rf, remoteCommand("audit export", q.Args()))
	if err != nil {
		return err
	}
	type tagged struct {
		ev audit.Event
		gw string
	}
	var all []tagged
	for _, r := range reads {
		if r.err != nil {
			continue
		}
		sc := bufio.NewScanner(&r.stdout)
		sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
		for sc.Scan() {
			ev, err := audit.DecodeEvent(sc.Bytes())
			if err != nil {
				r.err = fmt.Errorf("its export has a line that is not an audit event (%v)", err)
				break
			}
			all = append(all, tagged{ev, r.id})
		}
	}
	sort.SliceStable(all, func(i, j int) bool {
		if !all[i].ev.Time.Equal(all[j].ev.Time) {
			return all[i].ev.Time.Before(all[j].ev.Time)
		}
		if all[i].gw != all[j].gw {
			return all[i].gw < all[j].gw
		}
		return all[i].ev.ID < all[j].ev.ID
	})
	enc := audit.NewEncoder(a.stdout, format)
	for _, t := range all {
		if err := enc.Encode(t.ev); err != nil {
			return err
		}
	}
	if err := enc.Flush(); err != nil {
		return err
	}
	return a.reportUnread(reads, "the export")
}

// sessionsCluster is `audit sessions --cluster`: every gateway's
// sessions (with --active, the cluster's live ones), by start time, each
// naming its gateway.
func (a *app) sessionsCluster(ctx context.Context, cf clusterFlags, rf remoteFlags, q auditquery.SessionsQuery) error {
	asJSON := q.JSON
	q.JSON = true
	reads, err := a.fanOut(ctx, cf, rf, remoteCommand("audit sessions", q.Args()))
	if err != nil {
		return err
	}
	var all []audit.SessionSummary
	for _, r := range reads {
		if r.err != nil {
			continue
		}
		dec := json.NewDecoder(&r.stdout)
		for dec.More() {
			var s audit.SessionSummary
			if err := dec.Decode(&s); err != nil {
				r.err = fmt.Errorf("its session list is not JSON (%v)", err)
				break
			}
			if s.Gateway == "" {
				s.Gateway = r.id // a session from before the cluster
			}
			all = append(all, s)
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].Start.Before(all[j].Start) })
	if err := audit.WriteSessions(a.stdout, all, asJSON); err != nil {
		return err
	}
	return a.reportUnread(reads, "the session list")
}

// verifyCluster is `audit verify --cluster`: each gateway verifies its
// own chain (`audit anchor`), reported one line per gateway. A broken
// chain exits 1; otherwise an unreadable gateway exits exitPartial.
func (a *app) verifyCluster(ctx context.Context, cf clusterFlags, rf remoteFlags) error {
	reads, err := a.fanOut(ctx, cf, rf, "audit anchor")
	if err != nil {
		return err
	}
	var broken []string
	for _, r := range reads {
		var ee *exitError
		switch {
		case r.err == nil:
			fmt.Fprintf(a.stdout, "%s (%s): ok, hash chain intact; anchor: %s\n", r.id, r.addr, strings.TrimSpace(r.stdout.String()))
		case errors.As(r.err, &ee) && ee.code == 1 && strings.Contains(r.stderr.String(), "NOT intact"):
			broken = append(broken, r.id)
			fmt.Fprintf(a.stdout, "%s (%s): NOT intact: %s\n", r.id, r.addr, strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(r.stderr.String()), "bastion: ")))
			r.err = nil // reported above, as a verdict
		default:
			fmt.Fprintf(a.stdout, "%s (%s): NOT VERIFIED: could not be read (see stderr)\n", r.id, r.addr)
		}
	}
	unread := a.reportUnread(reads, "the verification")
	if len(broken) > 0 {
		return &exitError{code: 1, err: fmt.Errorf("the audit log of %s is NOT intact (see above)", strings.Join(broken, ", "))}
	}
	return unread
}

// remoteCommand renders `verb ARGS...` for the gateway's parser.
func remoteCommand(verb string, args []string) string {
	for _, arg := range args {
		verb += " " + quoteArg(arg)
	}
	return verb
}

// whereIsSession finds which gateway holds a live session, for audit
// watch and play: through etcd (--config) or a gateway's `cluster
// sessions`. found is false when no live session has that id.
func (a *app) whereIsSession(ctx context.Context, cf clusterFlags, rf remoteFlags, id string) (s cluster.Session, found bool, err error) {
	cf.src.rf = rf
	var list []cluster.Session
	if cf.src.config != "" {
		list, err = a.clusterSessionsEtcd(ctx, cf.src.config)
	} else {
		var out bytes.Buffer
		if err = a.gatewayCommand(ctx, rf, rf.gateway, "cluster sessions --json", &out, a.stderr); err == nil {
			err = json.Unmarshal(out.Bytes(), &list)
		}
	}
	if err != nil {
		return cluster.Session{}, false, fmt.Errorf("look up which gateway holds session %s: %w", id, err)
	}
	for _, s := range list {
		if s.ID == id {
			return s, true, nil
		}
	}
	return cluster.Session{}, false, nil
}

// registerHolder adds --cluster and --config to audit play and watch.
func (c *clusterFlags) registerHolder(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&c.on, "cluster", false, "find the gateway holding the live session in the cluster's registry (through --gateway or --config) and ask that one")
	c.src.registerConfig(cmd, "with --cluster: a bastion.yaml whose cluster: block reaches etcd")
}

// holderOf points rf at the gateway holding live session id. A session
// no longer live is asked of --gateway (its recording stays in the log of
// the gateway that held it; audit sessions --cluster names it).
func (a *app) holderOf(ctx context.Context, cf clusterFlags, rf remoteFlags, id string) (remoteFlags, error) {
	s, found, err := a.whereIsSession(ctx, cf, rf, id)
	if err != nil {
		return rf, err
	}
	if !found {
		if rf.gateway == "" {
			return rf, fmt.Errorf("session %s is not live anywhere in the cluster; find the gateway that held it with `bastion audit sessions --cluster`, then pass --gateway", id)
		}
		return rf, nil
	}
	cf.src.rf = rf
	st, err := a.clusterStatus(ctx, cf.src)
	if err != nil {
		return rf, err
	}
	for _, m := range st.Members {
		if m.ID == s.Gateway {
			fmt.Fprintf(a.stderr, "bastion: session %s is on gateway %s (%s)\n", id, m.ID, m.SSHAddr)
			rf.gateway = m.SSHAddr
			return rf, nil
		}
	}
	return rf, fmt.Errorf("session %s is held by gateway %s, which is not in the member list now: it may have just stopped or crashed (its sessions are then ended as gateway_lost within 10s); see `bastion cluster status`, and find the session's gateway later with `bastion audit sessions --cluster`", id, s.Gateway)
}
