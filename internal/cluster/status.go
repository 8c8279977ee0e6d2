package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Status is what `bastion cluster status` shows: the members, and how
// the gateway (or CLI) that asked sees etcd.
type Status struct {
	// Gateway is the id of the gateway that answered ("" from the CLI).
	Gateway string `json:"gateway,omitempty"`
	// Healthy, LastContact and Staleness are the answerer's view of etcd.
	Healthy     bool      `json:"etcd_healthy"`
	LastContact time.Time `json:"etcd_last_contact"`
	// StalenessMS is how long ago LastContact was, in milliseconds.
	StalenessMS int64 `json:"etcd_staleness_ms"`
	// Consistency and MaxStaleness are the answerer's configured mode.
	Consistency  string   `json:"consistency"`
	MaxStaleness string   `json:"max_staleness"`
	Admit        string   `json:"admit"` // "ok", or why new sessions are refused
	Members      []Member `json:"members"`
	// Down are the gateways that joined once and are not members now:
	// stopped, crashed, or cut off from etcd. Their audit logs cannot be
	// read until they run again (or are forgotten when retired).
	Down []Known `json:"down,omitempty"`
}

// Known is a gateway that joined the cluster at least once. Its record,
// <prefix>gateways/<id>, is not bound to a lease: it outlives the
// gateway, so cluster-wide audit reads know a gateway is missing rather
// than silently reading one log fewer.
type Known struct {
	ID      string    `json:"id"`
	SSHAddr string    `json:"ssh_addr"`
	Joined  time.Time `json:"joined"`
}

// Remember records this gateway as a known member (see Known); call it
// with the member record after Join.
func (c *Cluster) Remember(ctx context.Context, m Member) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	data, err := json.Marshal(Known{ID: c.cfg.GatewayID, SSHAddr: m.SSHAddr, Joined: c.now().UTC()})
	if err != nil {
		return err
	}
	if _, err := c.client.Put(ctx, c.Key("gateways", c.cfg.GatewayID), string(data)); err != nil {
		return fmt.Errorf("record this gateway among the cluster's known gateways: %w", err)
	}
	return nil
}

// KnownGateways lists every gateway that joined and was not forgotten,
// sorted by id.
func (c *Cluster) KnownGateways(ctx context.Context) ([]Known, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	resp, err := c.client.Get(ctx, c.Key("gateways")+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list the cluster's known gateways: %w", err)
	}
	out := make([]Known, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var k Known
		if json.Unmarshal(kv.Value, &k) == nil && k.ID != "" {
			out = append(out, k)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Forget removes a retired gateway from the known gateways; false when
// it was not known. A member that runs is remembered again at its next
// start.
func (c *Cluster) Forget(ctx context.Context, id string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	resp, err := c.client.Delete(ctx, c.Key("gateways", id))
	if err != nil {
		return false, fmt.Errorf("forget gateway %s: %w", id, err)
	}
	_, _ = c.client.Delete(ctx, c.Key("left", id))
	return resp.Deleted > 0, nil
}

// Status reads the member list and reports this gateway's view of etcd.
// An error reading the members is returned with the view filled in.
func (c *Cluster) Status(ctx context.Context) (Status, error) {
	st := Status{Gateway: c.cfg.GatewayID, Consistency: c.cfg.Consistency, MaxStaleness: c.cfg.MaxStaleness.String(), Admit: "ok"}
	ms, err := c.Members(ctx)
	st.Members = ms
	if err == nil {
		var known []Known
		known, err = c.KnownGateways(ctx)
		live := map[string]bool{}
		for _, m := range ms {
			live[m.ID] = true
		}
		for _, k := range known {
			if !live[k.ID] {
				st.Down = append(st.Down, k)
			}
		}
	}
	st.Healthy, st.LastContact, st.StalenessMS = c.Healthy(), c.LastContact().UTC(), c.Staleness().Milliseconds()
	if aerr := c.Admit(); aerr != nil {
		st.Admit = aerr.Error()
	}
	return st, err
}

// WriteStatus writes st as a table for people, or as one JSON object.
func WriteStatus(w io.Writer, st Status, asJSON bool, now time.Time) error {
	if asJSON {
		return json.NewEncoder(w).Encode(st)
	}
	who := "this CLI"
	if st.Gateway != "" {
		who = "gateway " + st.Gateway
	}
	health := "reachable"
	if !st.Healthy {
		health = "UNREACHABLE"
	}
	fmt.Fprintf(w, "etcd as seen by %s: %s, last quorum read %s ago (consistency %s, max_staleness %s); new sessions: %s\n",
		who, health, (time.Duration(st.StalenessMS) * time.Millisecond).Round(time.Millisecond), st.Consistency, st.MaxStaleness, st.Admit)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "GATEWAY\tSSH ADDRESS\tVERSION\tSTARTED\tLIVE SESSIONS\tUPDATED")
	for _, m := range st.Members {
		v := m.Version
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s ago\n", m.ID, m.SSHAddr, v, m.Started.UTC().Format(time.RFC3339), m.LiveSessions, now.Sub(m.Updated).Round(time.Second))
	}
	for _, k := range st.Down {
		fmt.Fprintf(tw, "%s\t%s\tDOWN\tjoined %s\t-\tnot in the member list (stopped, crashed or cut off from etcd; retired: bastion cluster forget %s)\n", k.ID, k.SSHAddr, k.Joined.UTC().Format(time.RFC3339), k.ID)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d member(s) up, %d down\n", len(st.Members), len(st.Down))
	return err
}
