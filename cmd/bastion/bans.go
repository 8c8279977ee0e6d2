package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newBansCommand(a *app) *cobra.Command {
	var (
		gw     string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "bans",
		Short: "List the sources the running gateway has banned",
		Long: `bastion bans lists the source addresses (IPv4 addresses, IPv6 /64s) that
the running gateway has banned for failing authentication too often, and
when each ban ends. Bans live in the gateway's memory, so this asks the
gateway over SSH with your bastion certificate (from bastion login; it
must carry an admin group): --gateway, $BASTION_GATEWAY, or the gateway of
your last bastion login. A stopped single gateway has no bans; in a
cluster bans are shared through etcd, so ask a running member. With none, it says
"no bans" on stderr; --json prints a JSON array ([] when empty).`,
		Example: `  bastion bans
  bastion bans --gateway bastion.example.com:2222 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			remote := "bans"
			if asJSON {
				remote += " --json"
			}
			return a.changeLock(cmd, gw, lockChange{
				remote: remote,
				offline: func(clusterGatewayID string) error {
					if clusterGatewayID != "" {
						return clusterBansError(a.dataDir, clusterGatewayID, "bastion bans")
					}
					if asJSON {
						fmt.Fprintln(a.stdout, "[]")
					}
					fmt.Fprintf(a.stderr, "no bans: no gateway is running on %s, and bans live in a running gateway's memory\n", a.dataDir)
					return nil
				},
			})
		},
	}
	cmd.Flags().StringVar(&gw, "gateway", "", "ask this running gateway (HOST:PORT) with your bastion certificate")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the bans as a JSON array")
	return cmd
}

func newUnbanCommand(a *app) *cobra.Command {
	var gw string
	cmd := &cobra.Command{
		Use:   "unban ADDRESS",
		Short: "Lift the running gateway's ban on a source address",
		Long: `bastion unban lifts the ban on ADDRESS (an IPv4 address, or an IPv6
address or /64: IPv6 sources are banned by /64) and forgets its recent
failures; the gateway records source.unbanned. A source that is not
banned is reported as such, and the command still succeeds (as unlock of
a user who is not locked does). Like bastion bans, it goes
through the running gateway with your bastion certificate, which must
carry an admin group.`,
		Example: `  bastion unban 192.0.2.7
  bastion unban 2001:db8:1:2::/64 --gateway bastion.example.com:2222`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.changeLock(cmd, gw, lockChange{
				remote: "unban " + quoteArg(args[0]),
				offline: func(clusterGatewayID string) error {
					if clusterGatewayID != "" {
						return clusterBansError(a.dataDir, clusterGatewayID, "bastion unban "+quoteArg(args[0]))
					}
					// Like unlock of a user who is not locked: done, with a note.
					fmt.Fprintf(a.stdout, "%s was not banned: no gateway is running on %s, and bans live only in a running gateway's memory\n", args[0], a.dataDir)
					return nil
				},
			})
		},
	}
	cmd.Flags().StringVar(&gw, "gateway", "", "unban through this running gateway (HOST:PORT) with your bastion certificate")
	return cmd
}

// clusterBansError is the answer of bans/unban run on a stopped cluster
// gateway's data dir: bans live in etcd, shared by the running members,
// not in this data dir, so only a running member can list or lift them.
func clusterBansError(dataDir, gatewayID, command string) error {
	return fmt.Errorf("no gateway is running on %s, which belongs to gateway %s of a cluster; a cluster's bans are shared through etcd by its running gateways, so ask one of them: %s --gateway HOST:PORT", dataDir, gatewayID, command)
}
