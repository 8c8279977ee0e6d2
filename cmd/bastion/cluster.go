package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/bastion-ssh/bastion/internal/cluster"
	"github.com/bastion-ssh/bastion/internal/config"
	"github.com/bastion-ssh/bastion/internal/sshclient"
	"github.com/bastion-ssh/bastion/internal/textbound"
)

func newClusterCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "See the gateways of a cluster (etcd) and retire one",
	}
	cmd.AddCommand(newClusterStatusCommand(a), newClusterForgetCommand(a))
	return cmd
}

// clusterSource is where the CLI learns the cluster's members: etcd
// through a bastion.yaml's cluster: block, or a gateway over SSH.
type clusterSource struct {
	config string
	rf     remoteFlags
}

func (c *clusterSource) registerConfig(cmd *cobra.Command, help string) {
	cmd.Flags().StringVar(&c.config, "config", "", help)
}

// status reads the cluster's status from etcd (--config) or from the
// gateway at --gateway (`cluster status --json` over SSH, as your
// certificate's identity, which must be an admin or an auditor).
func (a *app) clusterStatus(ctx context.Context, src clusterSource) (cluster.Status, error) {
	if src.config != "" {
		cl, err := openClusterCLI(ctx, src.config)
		if err != nil {
			return cluster.Status{}, err
		}
		defer cl.Close()
		st, err := cl.Status(ctx)
		st.Gateway = "" // the CLI's own view of etcd
		return st, err
	}
	if src.rf.gateway == "" {
		return cluster.Status{}, errors.New("say where the cluster is: --config bastion.yaml (reads etcd with its cluster: block) or --gateway HOST:PORT (asks a gateway)")
	}
	var out bytes.Buffer
	if err := a.gatewayCommand(ctx, src.rf, src.rf.gateway, "cluster status --json", &out, a.stderr); err != nil {
		return cluster.Status{}, err
	}
	var st cluster.Status
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		return cluster.Status{}, fmt.Errorf("the gateway at %s answered `cluster status --json` with something else than a status (%v); is it a bastion gateway of this version?", src.rf.gateway, err)
	}
	return st, nil
}

// gatewayCommand runs command on the gateway at addr with rf's identity,
// writing its output to stdout and stderr.
func (a *app) gatewayCommand(ctx context.Context, rf remoteFlags, addr, command string, stdout, stderr io.Writer) error {
	rf, err := rf.resolve()
	if err != nil {
		return err
	}
	n, err := sshclient.NormalizeAddr(addr)
	if err != nil {
		return fmt.Errorf("gateway address: %w", err)
	}
	signer, cert, closeAgent, err := loadIdentity(rf.identity)
	if err != nil {
		return err
	}
	defer closeAgent()
	user := rf.user
	if user == "" {
		user = cert.ValidPrincipals[0]
	}
	return a.gatewayExecTo(ctx, n, user, signer, rf.knownHosts, command, stdout, stderr)
}

func newClusterStatusCommand(a *app) *cobra.Command {
	var (
		src    clusterSource
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "status (--config bastion.yaml | --gateway HOST:PORT) [--json]",
		Short: "List the cluster's gateways: id, SSH address, version, start, live sessions, last update",
		Long: `List the gateways of the cluster with their SSH address, version, start
time, live sessions and when each last updated its record, the gateways
known to have joined that are down now, and how etcd looks from here:
reachable or not, and how stale the last quorum read is.

With --config it reads etcd with the bastion.yaml's cluster: block; with
--gateway it asks that gateway over SSH, as your certificate's identity
(an admin or an auditor). A crashed gateway leaves the member list when
its lease expires (10 s).

While etcd is unreachable, --gateway still answers with that gateway's
own view: how long since it last reached etcd, whether it still admits
new sessions, the last member list it read (and how old it is), its own
live sessions, and what to check, and the exit status is 3 (a partial
view, as for the --cluster reads). --config needs etcd, and says so.`,
		Example: `  bastion cluster status --config /etc/bastion/bastion.yaml
  bastion cluster status --gateway bastion.example.com:2222 --json
  ssh -p 2222 carol@bastion cluster status`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := a.clusterStatus(cmd.Context(), src)
			if err != nil {
				return err
			}
			if err := cluster.WriteStatus(a.stdout, st, asJSON, time.Now()); err != nil {
				return err
			}
			if st.MembersCached {
				// The gateway's own view, not etcd's: scripts and probes
				// must not take it for a healthy cluster.
				return &exitError{code: exitPartial, err: fmt.Errorf("etcd is unreachable from gateway %s: the members above are its last-known list, not the cluster's current one", st.Gateway)}
			}
			return nil
		},
	}
	src.registerConfig(cmd, "a bastion.yaml whose cluster: block reaches etcd")
	src.rf.register(cmd, false)
	cmd.Flags().BoolVar(&asJSON, "json", false, "write one JSON object")
	return cmd
}

func newClusterForgetCommand(a *app) *cobra.Command {
	var src clusterSource
	cmd := &cobra.Command{
		Use:   "forget GATEWAY_ID --config bastion.yaml",
		Short: "Retire a gateway: cluster-wide audit reads stop expecting its log",
		Long: `A gateway that joined the cluster once stays known after it stops, so
that ` + "`audit export --cluster`" + ` names it as unreachable instead of silently
reading one log fewer. When a gateway is retired for good (its log
archived), forget it. A gateway that runs again is known again.`,
		Example: `  bastion cluster forget gw-3 --config /etc/bastion/bastion.yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if src.config == "" {
				return errors.New("--config is required: the bastion.yaml whose cluster: block reaches etcd")
			}
			// The id is echoed in every answer: bounded, whatever was typed.
			id := strconv.Quote(textbound.Cut(args[0], 64))
			if err := cluster.ValidateGatewayID(args[0]); err != nil {
				return fmt.Errorf("%s is not a gateway id (bastion cluster status lists them)", id)
			}
			cl, err := openClusterCLI(cmd.Context(), src.config)
			if err != nil {
				return err
			}
			defer cl.Close()
			ms, err := cl.Members(cmd.Context())
			if err != nil {
				return err
			}
			for _, m := range ms {
				if m.ID == args[0] {
					return fmt.Errorf("gateway %s is running (it is in the member list): stop it before forgetting it", id)
				}
			}
			ok, err := cl.Forget(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("no gateway %s is known to the cluster (bastion cluster status lists them)", id)
			}
			fmt.Fprintf(a.stdout, "forgot gateway %s\n", id)
			return nil
		},
	}
	src.registerConfig(cmd, "a bastion.yaml whose cluster: block reaches etcd")
	return cmd
}

// clusterSessionsEtcd lists the cluster's live sessions from etcd with
// the bastion.yaml's cluster: block.
func (a *app) clusterSessionsEtcd(ctx context.Context, configPath string) ([]cluster.Session, error) {
	cl, err := openClusterCLI(ctx, configPath)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	return cl.Sessions(ctx)
}

// openClusterCLI connects the CLI to etcd with the cluster: block of the
// bastion.yaml at path. When etcd does not answer, the error says what to
// check and that a running gateway still answers with its own view.
func openClusterCLI(ctx context.Context, path string) (*cluster.Cluster, error) {
	// Only the cluster: block matters here: no data_dir, CA or audit
	// files need exist on the host the CLI runs on.
	cc, err := config.LoadCluster(path)
	if err != nil {
		return nil, err
	}
	if cc == nil {
		return nil, fmt.Errorf("%s has no cluster: block: pass the bastion.yaml of a gateway in a cluster, or --gateway HOST:PORT", path)
	}
	cl, err := cluster.Open(ctx, *cc, nil)
	if err != nil {
		return nil, fmt.Errorf("cannot read the cluster from etcd with %s's cluster: block: %w; meanwhile each running gateway answers with its own view (its last-known members, its own sessions): bastion cluster status --gateway HOST:PORT", path, err)
	}
	return cl, nil
}
