package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/atomicfile"
	"github.com/bastion-ssh/bastion/internal/config"
)

func newCACommand(a *app) *cobra.Command {
	var caDir string
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Manage the certificate authority: init, sign, inspect, revoke, krl, export, rotate, retire",
		// --config names the data dir too: its data_dir is used unless
		// --data-dir is given on the command line.
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.useConfigDataDir(cmd); err != nil {
				return err
			}
			if caDir != "" {
				a.keyDir = caDir
			}
			return nil
		},
	}
	cmd.PersistentFlags().StringVar(&caDir, "ca-dir", "", "directory of the CA keys when they are not in DATA_DIR/ca (a gateway's ca.dir); wins over ca.dir of --config")
	cmd.PersistentFlags().StringVar(&a.configPath, "config", "", "bastion.yaml whose ca: signing policy applies, on its data_dir unless --data-dir is given (default: the policy the gateway last ran with on this data dir, else the built-in defaults)")
	cmd.AddCommand(
		newCAInitCommand(a),
		newCASignCommand(a),
		newCAInspectCommand(a),
		newCARevokeCommand(a),
		newCAKRLCommand(a),
		newCAExportCommand(a),
		newCARotateCommand(a),
		newCARetireCommand(a),
	)
	return cmd
}

// openAudit opens the audit log for writing, failing fast (not hanging)
// when a running gateway holds it.
func (a *app) openAudit() (*audit.Store, error) {
	store, _, err := a.openAuditOffline()
	return store, err
}

// openAuditOffline opens the audit log of a stopped gateway to write to
// it, as openAudit does. When the log belongs to a gateway of a cluster
// (its last gateway.start names the gateway), the events written carry
// that gateway's id, as the gateway's own do, and gatewayID is it ("":
// not in a cluster).
func (a *app) openAuditOffline() (store *audit.Store, gatewayID string, err error) {
	ctx := context.Background()
	opts := audit.Options{Timeout: time.Second}
	store, err = openAuditLog(ctx, a.layout(), opts, a.newAuditLog, a.operator(), a.stderr)
	if err != nil {
		return nil, "", err
	}
	ev, found, err := store.Last(ctx, audit.Filter{Types: []string{audit.TypeGatewayStart}})
	if err != nil || !found || ev.Fields[audit.FieldGateway] == "" {
		return store, "", nil // no cluster gateway wrote this log last
	}
	if err := store.Close(); err != nil {
		return nil, "", err
	}
	opts.GatewayID = ev.Fields[audit.FieldGateway]
	store, err = audit.Open(a.layout().AuditDB(), opts)
	if err != nil {
		return nil, "", err
	}
	return store, opts.GatewayID, nil
}

// offlineClusterNote tells the operator that a change written to a
// stopped cluster gateway's data dir reaches the other gateways only
// when this one starts again, and how to change the whole cluster now.
func (a *app) offlineClusterNote(gatewayID, throughGateway string) {
	fmt.Fprintf(a.stderr, "note: this data dir belongs to gateway %s of a cluster, which is stopped: the change is recorded in its log and takes effect on the other gateways only when %s starts again and publishes it to etcd. To change the whole cluster now, run it through a running gateway: %s\n",
		gatewayID, gatewayID, throughGateway)
}

// openAuditReadOnly opens the audit log to read.
func (a *app) openAuditReadOnly() (*audit.Store, error) {
	if _, err := os.Stat(a.layout().AuditDB()); err != nil {
		return nil, fmt.Errorf("no audit log at %s: it does not exist (%w); is --data-dir right? If this CA's log was lost, restore audit.db from a backup", a.layout().AuditDB(), err)
	}
	return audit.Open(a.layout().AuditDB(), audit.Options{Timeout: time.Second, ReadOnly: true})
}

// readPassphrase reads a passphrase file, dropping one trailing newline.
func readPassphrase(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	return readTrimmedFile(path, "passphrase")
}

// readTrimmedFile reads a file holding a passphrase or a secret (what
// names it in errors), dropping one trailing newline.
func readTrimmedFile(path, what string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s file: %w", what, err)
	}
	b = bytes.TrimSuffix(bytes.TrimSuffix(b, []byte("\n")), []byte("\r"))
	if len(b) == 0 {
		return nil, fmt.Errorf("%s file %s is empty", what, path)
	}
	return b, nil
}

// kindFlags adds the --user/--host pair (exactly one required) and
// returns a resolver for the chosen CA.
func kindFlags(cmd *cobra.Command) func() ca.Kind {
	var user, host bool
	cmd.Flags().BoolVar(&user, "user", false, "the user CA")
	cmd.Flags().BoolVar(&host, "host", false, "the host CA")
	// Checked here rather than with cobra's flag groups, whose messages
	// ("at least one of the flags in the group [user host] is required")
	// do not say what to do.
	cmd.PreRunE = func(cmd *cobra.Command, _ []string) error {
		if user == host {
			return fmt.Errorf("name the CA to %s: --user or --host (one at a time)", cmd.Name())
		}
		return nil
	}
	return func() ca.Kind {
		if host {
			return ca.HostCA
		}
		return ca.UserCA
	}
}

func newCAInitCommand(a *app) *cobra.Command {
	var keyType, passFile string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the user and host CA keys in DATA_DIR/ca",
		Example: `  bastion ca init --data-dir ./data
  bastion ca init --key-type ecdsa-p256 --passphrase-file /etc/bastion/ca-pass`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kt, err := ca.ParseKeyType(keyType)
			if err != nil {
				return err
			}
			pass, err := readPassphrase(passFile)
			if err != nil {
				return err
			}
			l := a.layout()
			if l.Exists() {
				return fmt.Errorf("a CA already exists in %s; refusing to overwrite it (use `%s` or `%s` to replace a key)", l.Dir(), a.caHint("ca rotate --user"), a.caHint("ca rotate --host"))
			}
			// Open the audit log first: if a gateway holds it, fail before
			// creating anything.
			if err := os.MkdirAll(l.DataDir, 0o700); err != nil {
				return err
			}
			store, err := a.openAudit()
			if err != nil {
				return err
			}
			defer store.Close()
			user, host, err := ca.Init(l, ca.InitOptions{KeyType: kt, Passphrase: pass})
			if err != nil {
				return err
			}
			_, err = store.Append(cmd.Context(), audit.Event{Type: audit.TypeCAInit, Actor: a.operator(), Fields: map[string]string{
				"user_ca_fp": ca.Fingerprint(user), "host_ca_fp": ca.Fingerprint(host), "key_type": string(kt), "encrypted": strconv.FormatBool(len(pass) > 0),
			}})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "created CA in %s\n  user CA: %s\n  host CA: %s\n", l.Dir(), ca.Fingerprint(user), ca.Fingerprint(host))
			fmt.Fprintf(a.stderr, "next: `%s` for sshd's TrustedUserCAKeys, `%s` for known_hosts\n", a.caHint("ca export --user"), a.caHint("ca export --host"))
			return nil
		},
	}
	cmd.Flags().StringVar(&keyType, "key-type", "ed25519", "CA key type: ed25519, ecdsa-p256 or rsa-4096")
	cmd.Flags().StringVar(&passFile, "passphrase-file", "", "encrypt the CA private keys with the passphrase in this file")
	return cmd
}

// loadAuthority opens the audit log and the CA for signing.
func (a *app) loadAuthority(passFile string) (*ca.Authority, *audit.Store, error) {
	pass, err := readPassphrase(passFile)
	if err != nil {
		return nil, nil, err
	}
	if !a.layout().Exists() {
		return nil, nil, noCAError(a.layout(), a.hint("ca init"))
	}
	store, err := a.openAudit()
	if err != nil {
		return nil, nil, err
	}
	policy, err := a.signingPolicy()
	if err != nil {
		store.Close()
		return nil, nil, err
	}
	auth, err := ca.New(ca.Config{Layout: a.layout(), Policy: policy, Passphrase: pass}, store)
	if err != nil {
		store.Close()
		return nil, nil, err
	}
	return auth, store, nil
}

// useConfigDataDir makes `ca --config FILE` work on FILE's data_dir and
// CA key directory (ca.dir), as `bastion serve --config FILE` does; an
// explicit --data-dir wins over data_dir.
func (a *app) useConfigDataDir(cmd *cobra.Command) error {
	if a.configPath == "" {
		return nil
	}
	f, err := config.Load(a.configPath)
	if err != nil {
		return err
	}
	a.keyDir = f.CA.Dir
	if !cmd.Flags().Changed("data-dir") {
		a.dataDir = f.DataDir
	}
	return nil
}

// signingPolicy is the one signing policy for this data dir: the
// configuration's when --config is given, else the one the gateway last
// ran with (DATA_DIR/ca/policy.json), else the defaults.
func (a *app) signingPolicy() (ca.Policy, error) {
	if a.configPath != "" {
		f, err := config.Load(a.configPath)
		if err != nil {
			return ca.Policy{}, err
		}
		return f.Policy()
	}
	p, ok, err := ca.LoadPolicy(a.layout())
	if err != nil || ok {
		return p, err
	}
	return ca.DefaultPolicy(), nil
}

// readPublicKeyFile reads one authorized_keys-format key.
func readPublicKeyFile(path string) (ssh.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read public key: %w", err)
	}
	if bytes.HasPrefix(bytes.TrimSpace(data), []byte("ssh-dss ")) {
		return nil, fmt.Errorf("%s is a DSA key: DSA is broken and bastion never signs it (rule key_weak); generate a new key with ssh-keygen -t ed25519", path)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s is not an OpenSSH public key (want the .pub file, e.g. ~/.ssh/id_ed25519.pub): %w", path, err)
	}
	return k, nil
}

// certOutPath is where ssh-keygen would put KEY's certificate.
func certOutPath(keyPath string) string {
	return strings.TrimSuffix(keyPath, ".pub") + "-cert.pub"
}

func newCASignCommand(a *app) *cobra.Command {
	var (
		identity, validity, out, passFile string
		principals, groups, options       []string
		host                              bool
		serial                            uint64
	)
	cmd := &cobra.Command{
		Use:   "sign [flags] KEY.pub",
		Short: "Sign a user or host public key (like ssh-keygen -s)",
		Long: `Sign a public key with the user CA (default) or, with --host, the host CA.
Every certificate passes the signing policy: root and forbidden principals
are never signed, principals must be valid login names or hostnames,
validity is capped (user 24h, host 1y) and valid_after is backdated 5m for
clock skew, weak keys (DSA, RSA < 2048) are refused. The certificate is
written only after its audit record is durable.`,
		Example: `  bastion ca sign -I alice@example.com -n alice -V +8h ~/.ssh/id_ed25519.pub
  bastion ca sign -I web1 --host -n web1.internal,10.0.0.5 /etc/ssh/ssh_host_ed25519_key.pub
  bastion ca sign -I deploy -n deploy -O force-command=/usr/local/bin/deploy -O source-address=10.0.0.0/8 deploy.pub
  bastion ca sign -I alice -n alice --groups eng,dba --out - alice.pub`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := readPublicKeyFile(args[0])
			if err != nil {
				return err
			}
			v, err := ca.ParseValidity(validity)
			if err != nil {
				return err
			}
			auth, store, err := a.loadAuthority(passFile)
			if err != nil {
				return err
			}
			defer store.Close()
			kind := ca.UserCA
			if host {
				kind = ca.HostCA
			}
			cert, err := auth.Sign(cmd.Context(), ca.Request{
				Kind: kind, Key: key, KeyID: identity, Principals: principals, Groups: groups,
				Validity: v, Serial: serial, Options: options, Requester: a.operator(), Via: "cli",
			})
			if err != nil {
				return err
			}
			if err := a.writeCert(cert, args[0], out); err != nil {
				return err
			}
			a.noteUnservedLog(cmd.Context(), store)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&identity, "identity", "I", "", "key id recorded in the certificate and in sshd's logs (default: first principal)")
	f.StringSliceVarP(&principals, "principals", "n", nil, "comma-separated user names (or host names with --host); required, and never root")
	f.StringVarP(&validity, "validity", "V", "", "validity: 8h, +8h, -5m:+8h or YYYYMMDD[HHMM[SS]]:... (default: policy default, 8h user / 30d host)")
	f.BoolVar(&host, "host", false, "sign a host certificate with the host CA")
	f.Uint64VarP(&serial, "serial", "z", 0, "certificate serial (default: random non-zero 64-bit)")
	f.StringArrayVarP(&options, "option", "O", nil, "ssh-keygen option: force-command=CMD, source-address=CIDR[,CIDR], no-pty, no-port-forwarding, no-agent-forwarding, ...")
	f.StringSliceVar(&groups, "groups", nil, "groups to carry in the groups@bastion extension (matched by the gateway's access rules)")
	f.StringVar(&out, "out", "", "where to write the certificate, or - for stdout (default: KEY-cert.pub beside the key)")
	f.StringVar(&passFile, "passphrase-file", "", "passphrase of an encrypted CA key")
	return cmd
}

// writeCert writes cert as an authorized_keys line and summarises it on stderr.
func (a *app) writeCert(cert *ssh.Certificate, keyPath, out string) error {
	line := ssh.MarshalAuthorizedKey(cert)
	if out == "" {
		out = certOutPath(keyPath)
	}
	if out == "-" {
		if _, err := a.stdout.Write(line); err != nil {
			return err
		}
	} else if err := atomicfile.WriteFile(out, line, 0o644); err != nil {
		return fmt.Errorf("write certificate: %w", err)
	}
	kind := "user"
	if cert.CertType == ssh.HostCert {
		kind = "host"
	}
	dest := out
	if out == "-" {
		dest = "stdout"
	}
	fmt.Fprintf(a.stderr, "signed %s certificate %s\n  key id:     %q\n  serial:     %d\n  principals: %s\n  valid:      %s to %s\n  CA:         %s\n",
		kind, dest, cert.KeyId, cert.Serial, strings.Join(cert.ValidPrincipals, ","),
		ca.FormatCertTime(cert.ValidAfter), ca.FormatCertTime(cert.ValidBefore),
		ca.Fingerprint(cert.SignatureKey))
	return nil
}

func newCAInspectCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "inspect CERT",
		Short:   "Show a certificate's fields, as ssh-keygen -L does",
		Example: "  bastion ca inspect ~/.ssh/id_ed25519-cert.pub",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, err := readPublicKeyFile(args[0])
			if err != nil {
				return err
			}
			cert, ok := k.(*ssh.Certificate)
			if !ok {
				return fmt.Errorf("%s is a plain public key, not a certificate", args[0])
			}
			_, err = fmt.Fprint(a.stdout, ca.Describe(args[0], cert))
			return err
		},
	}
}

func newCARevokeCommand(a *app) *cobra.Command {
	var (
		serial               uint64
		keyID, keyFile, user string
		reason               string
	)
	cmd := &cobra.Command{
		Use:   "revoke (--serial N | --key-id ID | --key FILE.pub | --user NAME) [--reason TEXT]",
		Short: "Revoke certificates by serial, key id or user, or a key (and every certificate for it)",
		Long: `Revoke certificates. --user revokes every unexpired certificate issued to
a user (by principal, key id, or the email in a login certificate's key id),
found in the cert.issued records; it does not stop new logins: lock the user
for that. --key-id revokes an exact key id and says how many issued
certificates it matched.`,
		Example: `  bastion ca revoke --serial 1234567890 --reason "laptop stolen"
  bastion ca revoke --user alice --reason "left the company"
  bastion ca revoke --key-id 'alice@example.com sub=8d2f'
  bastion ca revoke --key ~/.ssh/id_ed25519.pub`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (retErr error) {
			if err := ca.CheckReason(reason); err != nil {
				return fmt.Errorf("--reason: %w", err)
			}
			store, gatewayID, err := a.openAuditOffline()
			if err != nil {
				return err
			}
			defer store.Close()
			if gatewayID != "" {
				defer func() {
					if retErr == nil {
						a.offlineClusterNote(gatewayID, "ssh -p PORT YOUR_USER@HOST revoke ... (as a member of an admin group)")
					}
				}()
			}
			state, err := ca.LoadState(store, nil)
			if err != nil {
				return err
			}
			if user != "" {
				done, err := state.RevokeUser(cmd.Context(), store, user, reason, a.operator(), time.Now())
				if err != nil {
					return err
				}
				if len(done) == 0 {
					return fmt.Errorf("no unexpired certificate was issued to %q; nothing revoked (to refuse %s new certificates and sessions: `%s`)", user, user, a.hint("lock "+shellWord(user)))
				}
				for _, c := range done {
					fmt.Fprintf(a.stderr, "revoked serial %d (key id %q, valid until %s)\n", c.Serial, c.KeyID, c.ValidBefore.Format(time.RFC3339))
				}
				fmt.Fprintf(a.stderr, "revoked %d certificate(s) of %s\nnext: `%s` for the hosts' RevokedKeys; `%s` to refuse new logins\n", len(done), user, a.caHint("ca krl --out FILE"), a.hint("lock "+shellWord(user)))
				return nil
			}
			var rev ca.Revocation
			switch {
			case serial != 0:
				rev = ca.Revocation{Kind: ca.RevokeSerial, Value: strconv.FormatUint(serial, 10)}
			case keyID != "":
				rev = ca.Revocation{Kind: ca.RevokeKeyID, Value: keyID}
			default:
				k, err := readPublicKeyFile(keyFile)
				if err != nil {
					return err
				}
				rev = ca.RevokeKeyRequest(k)
			}
			rev.Reason, rev.By = reason, a.operator()
			if err := state.Revocations.Revoke(cmd.Context(), rev); err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "revoked %s %s\n", rev.Kind, rev.Value)
			if rev.Kind == ca.RevokeKeyID {
				exact, similar, err := ca.KeyIDMatches(cmd.Context(), store, keyID, time.Now())
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stderr, "it matches %d unexpired certificate(s) issued by this CA\n", exact)
				if exact == 0 && len(similar) > 0 {
					fmt.Fprintf(a.stderr, "warning: key ids are matched exactly; these issued key ids start with %q: %s\n  to revoke everything a user holds: `%s`\n", keyID, strings.Join(similar, ", "), a.hint("ca revoke --user NAME"))
				}
			}
			fmt.Fprintf(a.stderr, "next: `%s` and copy FILE to the RevokedKeys path on every host\n", a.caHint("ca krl --out FILE"))
			return nil
		},
	}
	f := cmd.Flags()
	f.Uint64Var(&serial, "serial", 0, "revoke the certificate with this serial")
	f.StringVar(&keyID, "key-id", "", "revoke every certificate with exactly this key id")
	f.StringVar(&keyFile, "key", "", "revoke this public key (or the key inside this certificate)")
	f.StringVar(&user, "user", "", "revoke every unexpired certificate issued to this user")
	f.StringVar(&reason, "reason", "", "why, for the audit log")
	cmd.MarkFlagsMutuallyExclusive("serial", "key-id", "key", "user")
	cmd.MarkFlagsOneRequired("serial", "key-id", "key", "user")
	return cmd
}

func newCAKRLCommand(a *app) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "krl --out FILE",
		Short: "Write the revocation list as an OpenSSH KRL for sshd's RevokedKeys",
		Example: `  bastion ca krl --out /etc/ssh/bastion_revoked.krl
  ssh-keygen -Q -f /etc/ssh/bastion_revoked.krl ~/.ssh/id_ed25519-cert.pub`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.requireCA(); err != nil {
				return err
			}
			cas, err := a.layout().RevocationCAs()
			if err != nil {
				return err
			}
			store, err := a.openAuditReadOnly()
			if err != nil {
				return err
			}
			defer store.Close()
			revs, err := ca.LoadRevocations(store, nil)
			if err != nil {
				return err
			}
			data, err := revs.KRL(cas).Marshal()
			if err != nil {
				return err
			}
			if out == "-" {
				_, err = a.stdout.Write(data)
				return err
			}
			if err := atomicfile.WriteFile(out, data, 0o644); err != nil {
				return fmt.Errorf("write KRL: %w", err)
			}
			fmt.Fprintf(a.stderr, "wrote %s (%d revocations)\n", out, len(revs.List()))
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to write (- for stdout)")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func newCAExportCommand(a *app) *cobra.Command {
	var pattern string
	cmd := &cobra.Command{
		Use:   "export (--user | --host)",
		Short: "Print the CA public keys as TrustedUserCAKeys lines (--user) or @cert-authority known_hosts lines (--host)",
		Example: `  bastion ca export --user > /etc/ssh/bastion_user_ca.pub     # sshd: TrustedUserCAKeys /etc/ssh/bastion_user_ca.pub
  bastion ca export --host --hosts '*.internal' >> ~/.ssh/known_hosts`,
		Args: cobra.NoArgs,
	}
	kind := kindFlags(cmd)
	cmd.Flags().StringVar(&pattern, "hosts", "*", "known_hosts host pattern for --host lines")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		k := kind()
		if err := a.requireCA(); err != nil {
			return err
		}
		keys, err := a.layout().TrustedKeys(k)
		if err != nil {
			return err
		}
		_, err = fmt.Fprint(a.stdout, ca.ExportLines(k, keys, pattern))
		return err
	}
	return cmd
}

func newCARotateCommand(a *app) *cobra.Command {
	var keyType, passFile string
	cmd := &cobra.Command{
		Use:   "rotate (--user | --host)",
		Short: "Replace a CA key; the old key stays trusted until `ca retire`",
		Example: `  bastion ca rotate --user
  bastion ca export --user > /etc/ssh/bastion_user_ca.pub   # distribute: both keys are listed
  bastion ca retire --user                                  # after the longest certificate has expired`,
		Args: cobra.NoArgs,
	}
	kind := kindFlags(cmd)
	cmd.Flags().StringVar(&keyType, "key-type", "", "type of the new key (default: same as the current one)")
	cmd.Flags().StringVar(&passFile, "passphrase-file", "", "passphrase of an encrypted CA key (the new key uses it too)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		k := kind()
		var kt ca.KeyType
		if keyType != "" {
			var err error
			if kt, err = ca.ParseKeyType(keyType); err != nil {
				return err
			}
		}
		auth, store, err := a.loadAuthority(passFile)
		if err != nil {
			return err
		}
		defer store.Close()
		oldKey, newKey, err := auth.Rotate(cmd.Context(), k, kt, a.operator())
		if err != nil {
			return err
		}
		retire := "ca retire --" + string(k)
		if passFile != "" {
			retire += " --passphrase-file " + shellWord(passFile)
		}
		fmt.Fprintf(a.stderr, "rotated the %s CA\n  new (signing): %s\n  old (trusted until retired): %s\nnext: distribute `%s`, then `%s` once certificates from the old key have expired\n",
			k, ca.Fingerprint(newKey), ca.Fingerprint(oldKey), a.caHint("ca export --"+string(k)), a.caHint(retire))
		a.noteUnservedLog(cmd.Context(), store)
		return nil
	}
	return cmd
}

func newCARetireCommand(a *app) *cobra.Command {
	var (
		fp, passFile string
		force        bool
	)
	cmd := &cobra.Command{
		Use:     "retire (--user | --host) [--fingerprint SHA256:...]",
		Short:   "Stop trusting CA keys replaced by `ca rotate` (all, or one by fingerprint)",
		Example: "  bastion ca retire --user --fingerprint SHA256:kdpyCBXKMz1hP1/MaIbxJNEdwEzGRVjZey2ZvPpP1d4",
		Args:    cobra.NoArgs,
	}
	kind := kindFlags(cmd)
	cmd.Flags().StringVar(&fp, "fingerprint", "", "retire only the previous key with this fingerprint")
	cmd.Flags().BoolVar(&force, "force", false, "retire even while certificates from the key are still valid")
	cmd.Flags().StringVar(&passFile, "passphrase-file", "", "passphrase of an encrypted CA key")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		k := kind()
		auth, store, err := a.loadAuthority(passFile)
		if err != nil {
			return err
		}
		defer store.Close()
		// Refuse while certificates from a key to retire may still be in
		// use: retiring it would lock their holders out (or, for host
		// certificates, make every client warn).
		var fps []string
		for _, old := range auth.TrustedKeys(k)[1:] {
			if f := ca.Fingerprint(old); fp == "" || f == fp {
				fps = append(fps, f)
			}
		}
		n, until, err := ca.ValidUnder(cmd.Context(), store, fps, time.Now())
		if err != nil {
			return err
		}
		if n > 0 && !force {
			return fmt.Errorf("%d %s certificate(s) signed by the key(s) to retire are valid until %s; retire after that, or pass --force to refuse them now", n, k, until.Local().Format(time.RFC3339))
		}
		if n > 0 {
			fmt.Fprintf(a.stderr, "warning: %d %s certificate(s) still valid until %s will be refused from now on\n", n, k, until.Local().Format(time.RFC3339))
		}
		gone, err := auth.Retire(cmd.Context(), k, fp, a.operator())
		if err != nil {
			return err
		}
		for _, g := range gone {
			fmt.Fprintf(a.stderr, "retired %s CA key %s\n", k, ca.Fingerprint(g))
		}
		return nil
	}
	return cmd
}
