package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"
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
}

// Status reads the member list and reports this gateway's view of etcd.
// An error reading the members is returned with the view filled in.
func (c *Cluster) Status(ctx context.Context) (Status, error) {
	st := Status{Gateway: c.cfg.GatewayID, Consistency: c.cfg.Consistency, MaxStaleness: c.cfg.MaxStaleness.String(), Admit: "ok"}
	ms, err := c.Members(ctx)
	st.Members = ms
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
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d member(s)\n", len(st.Members))
	return err
}
