package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/gateway"
	"github.com/bastion-ssh/bastion/internal/sshclient"
)

// certStatus is what `bastion status` reports; its JSON form is --json.
type certStatus struct {
	Certificate    string    `json:"certificate"`
	KeyID          string    `json:"key_id"`
	Principals     []string  `json:"principals"`
	Groups         []string  `json:"groups"`
	Serial         uint64    `json:"serial"`
	KeyFingerprint string    `json:"key_fingerprint"`
	CAFingerprint  string    `json:"ca_fingerprint"`
	ValidAfter     time.Time `json:"valid_after"`
	ValidBefore    time.Time `json:"valid_before"`
	Valid          bool      `json:"valid"`
	SecondsLeft    int64     `json:"seconds_left"`
	Gateway        string    `json:"gateway,omitempty"`
	// Problem says why the certificate is not usable, when it is not.
	Problem string `json:"problem,omitempty"`
	// Barred is the reason code (revoked, locked, ...) when a gateway or
	// the data dir's revocation state refuses the certificate.
	Barred string `json:"barred,omitempty"`
	// Checked names what vouched for the certificate beyond its dates: the
	// gateway asked, the data dir's revocation state read.
	Checked []string `json:"checked"`
	// Unchecked says why a check could not be made.
	Unchecked []string `json:"unchecked,omitempty"`
}

func newStatusCommand(a *app) *cobra.Command {
	var (
		asJSON, offline bool
		gw              string
	)
	cmd := &cobra.Command{
		Use:   "status [--json]",
		Short: "Show your bastion certificate: identity, principals, groups and time left",
		Long: `bastion status reads the certificate that bastion login saved in
~/.ssh/bastion/ and shows who it says you are (its key id), the principals
(login names) and groups it carries, when it is valid and how long is left,
and the gateway it came from. It exits 1 when there is no certificate or it
has expired (or is not valid yet), so scripts can run bastion login when
needed:

    bastion status >/dev/null || bastion login

A certificate within its dates may still be refused: revoked, its holder
locked, or its CA retired. So status asks the gateway of your last login
(or --gateway, $BASTION_GATEWAY) to run its own certificate check on it,
over the login service with your bastion key (nothing is signed, nothing
counts as a failed login), and, when the audit log in --data-dir can be
read (no gateway running on it), reads its revocations and locks too. It
says what it checked; --offline asks no gateway. A refused certificate is
NOT VALID, exit 1.`,
		Example: `  bastion status
  bastion status --json
  bastion status --offline
  bastion status --data-dir /var/lib/bastion     # on the gateway host, gateway stopped`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			paths, err := sshclient.DefaultPaths()
			if err != nil {
				return err
			}
			cert, err := sshclient.ReadCertificate(paths.Certificate())
			if err != nil {
				return err
			}
			st, _ := sshclient.LoadState(paths.State())
			s := statusOf(cert, paths, st.Gateway, time.Now())
			if s.Valid {
				a.checkLocalState(&s, cert)
			}
			if s.Valid && !offline {
				addr, err := resolveGateway(gw, st, "")
				if err != nil {
					return fmt.Errorf("--gateway: %w", err)
				}
				if addr != "" {
					s.Gateway = addr
					askGateway(cmd.Context(), &s, addr, paths, cert)
				}
			}
			if asJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(s); err != nil {
					return err
				}
			} else {
				writeStatus(a, s)
			}
			if !s.Valid {
				fix := "run `bastion login`"
				switch s.Barred {
				case ca.BarredLocked:
					fix = "ask an administrator (logins are refused while you are locked)"
				case ca.BarredRevoked:
					fix = "run `bastion login` for a new certificate, or ask an administrator"
				}
				return &exitError{code: 1, err: fmt.Errorf("%s: %s", s.Problem, fix)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	cmd.Flags().BoolVar(&offline, "offline", false, "do not ask the gateway whether it accepts the certificate")
	cmd.Flags().StringVar(&gw, "gateway", "", "ask this gateway (HOST:PORT; default $BASTION_GATEWAY, else the one of your last login)")
	return cmd
}

// statusCheckTimeout bounds the gateway check of `bastion status`.
const statusCheckTimeout = 10 * time.Second

// checkLocalState reads the revocations and locks of the audit log in the
// data dir, when it is readable and its CA signed cert, and marks s not
// valid when they bar the certificate.
func (a *app) checkLocalState(s *certStatus, cert *gossh.Certificate) {
	l := a.layout()
	if _, err := os.Stat(l.AuditDB()); err != nil {
		return // no data dir here: nothing to say
	}
	keys, err := l.TrustedKeys(ca.UserCA)
	if err != nil || !slices.ContainsFunc(keys, func(k gossh.PublicKey) bool { return bytes.Equal(k.Marshal(), cert.SignatureKey.Marshal()) }) {
		return // another CA's data dir, or none readable
	}
	store, err := audit.Open(l.AuditDB(), audit.Options{Timeout: 200 * time.Millisecond, ReadOnly: true})
	if err != nil {
		if errors.Is(err, audit.ErrInUse) {
			s.Unchecked = append(s.Unchecked, fmt.Sprintf("data dir %s: a running gateway holds its audit log (the gateway check covers it)", a.dataDir))
		} else {
			s.Unchecked = append(s.Unchecked, fmt.Sprintf("data dir %s: %s", a.dataDir, userError(err)))
		}
		return
	}
	defer store.Close()
	state, err := ca.LoadState(store, nil)
	if err != nil {
		s.Unchecked = append(s.Unchecked, fmt.Sprintf("data dir %s: %s", a.dataDir, userError(err)))
		return
	}
	s.Checked = append(s.Checked, "data dir "+a.dataDir)
	user := ""
	if len(cert.ValidPrincipals) > 0 {
		user = cert.ValidPrincipals[0]
	}
	if err := state.Check(ca.SubjectOf(cert, user)); err != nil {
		var be *ca.BarredError
		if errors.As(err, &be) {
			s.barred(be.Reason, fmt.Sprintf("the revocation state in %s bars it: certificate %s", a.dataDir, be.Detail))
		}
	}
}

// askGateway has the gateway at addr run its certificate check on cert
// (`login-status` over the login service, authenticated with the key the
// certificate is for), and marks s not valid when the gateway refuses it.
func askGateway(ctx context.Context, s *certStatus, addr string, paths sshclient.Paths, cert *gossh.Certificate) {
	ctx, cancel := context.WithTimeout(ctx, statusCheckTimeout)
	defer cancel()
	unchecked := func(why string) {
		s.Unchecked = append(s.Unchecked, fmt.Sprintf("gateway %s: %s", addr, why))
	}
	key, err := sshclient.LoadKey(paths.Key())
	if err != nil {
		unchecked(userError(err))
		return
	}
	hc, err := sshclient.NewHostCheck(sshclient.HostCheckConfig{KnownHosts: paths.KnownHosts()})
	if err != nil {
		unchecked(userError(err))
		return
	}
	conn, err := sshclient.Dial(ctx, addr, gateway.LoginUser, key.Signer, hc)
	if err != nil {
		unchecked(userError(err))
		return
	}
	defer func() { _ = conn.Close() }()
	var out, errOut bytes.Buffer
	code, err := conn.Exec(ctx, "login-status", bytes.NewReader(gossh.MarshalAuthorizedKey(cert)), &out, &errOut)
	var cs gateway.CertStatus
	switch {
	case err != nil:
		unchecked(userError(err))
		return
	case code != 0 || json.Unmarshal(out.Bytes(), &cs) != nil:
		unchecked(fmt.Sprintf("it does not answer status checks (exit %d: %s); update the gateway", code, strings.TrimSpace(errOut.String())))
		return
	}
	s.Checked = append(s.Checked, "gateway "+addr)
	if !cs.OK {
		s.barred(cs.Reason, fmt.Sprintf("the gateway at %s refuses it (%s): %s", addr, ca.Printable(cs.Reason), ca.Printable(cs.Detail)))
	}
}

// barred marks s not valid for reason, once: the first refusal found is
// the one reported.
func (s *certStatus) barred(reason, problem string) {
	if !s.Valid {
		return
	}
	s.Valid, s.SecondsLeft, s.Barred, s.Problem = false, 0, reason, problem
}

// statusOf describes cert at now.
func statusOf(cert *gossh.Certificate, paths sshclient.Paths, gw string, now time.Time) certStatus {
	after, before := sshclient.ValidFrom(cert), sshclient.Expiry(cert)
	s := certStatus{
		Checked:     []string{},
		Certificate: paths.Certificate(), KeyID: cert.KeyId, Principals: cert.ValidPrincipals, Groups: []string{},
		Serial: cert.Serial, KeyFingerprint: gossh.FingerprintSHA256(cert.Key), CAFingerprint: gossh.FingerprintSHA256(cert.SignatureKey),
		ValidAfter: after.UTC(), ValidBefore: before.UTC(), Valid: sshclient.ValidAt(cert, now), Gateway: gw,
	}
	if s.Principals == nil {
		s.Principals = []string{}
	}
	if g := cert.Extensions[ca.GroupsExtension]; g != "" {
		s.Groups = strings.Split(g, ",")
	}
	if s.Valid {
		s.SecondsLeft = int64(before.Sub(now) / time.Second)
	}
	switch {
	case now.Before(after):
		s.Problem = fmt.Sprintf("the certificate is not valid until %s (is this machine's clock right?)", after.UTC().Format(time.RFC3339))
	case !s.Valid:
		s.Problem = fmt.Sprintf("the certificate expired %s ago", now.Sub(before).Round(time.Second))
	}
	if s.Valid && cert.ValidBefore == gossh.CertTimeInfinity {
		// The gateway refuses such a certificate (no_expiry).
		s.Valid, s.SecondsLeft = false, 0
		s.Problem = "the certificate never expires, and bastion accepts only certificates that do: run bastion login"
	}
	if key, err := sshclient.LoadKey(paths.Key()); err == nil && !bytes.Equal(key.PublicKey().Marshal(), cert.Key.Marshal()) {
		s.Valid, s.SecondsLeft = false, 0
		s.Problem = fmt.Sprintf("the certificate is for key %s, not for %s", s.KeyFingerprint, paths.Key())
	}
	return s
}

// writeStatus prints s the way `tsh status` does.
func writeStatus(a *app, s certStatus) {
	w := a.stdout
	fmt.Fprintf(w, "> Certificate:  %s\n", s.Certificate)
	fmt.Fprintf(w, "  Identity:     %s\n", s.KeyID)
	fmt.Fprintf(w, "  Principals:   %s\n", strings.Join(s.Principals, ", "))
	groups := strings.Join(s.Groups, ", ")
	if groups == "" {
		groups = "(none)"
	}
	fmt.Fprintf(w, "  Groups:       %s\n", groups)
	fmt.Fprintf(w, "  Serial:       %d\n", s.Serial)
	fmt.Fprintf(w, "  Key:          %s\n", s.KeyFingerprint)
	fmt.Fprintf(w, "  Valid from:   %s\n", s.ValidAfter.Local().Format(time.RFC3339))
	left := fmt.Sprintf("valid for %s", (time.Duration(s.SecondsLeft) * time.Second).Round(time.Minute))
	if s.SecondsLeft < 3600 {
		left = fmt.Sprintf("valid for %s", time.Duration(s.SecondsLeft)*time.Second)
	}
	if !s.Valid {
		left = "NOT VALID: " + s.Problem
	}
	fmt.Fprintf(w, "  Valid until:  %s [%s]\n", s.ValidBefore.Local().Format(time.RFC3339), left)
	if s.Gateway != "" {
		fmt.Fprintf(w, "  Gateway:      %s\n", s.Gateway)
	}
	if len(s.Checked) > 0 {
		fmt.Fprintf(w, "  Checked:      %s (revocations, locks, CA)\n", strings.Join(s.Checked, ", "))
	}
	for _, u := range s.Unchecked {
		fmt.Fprintf(w, "  Not checked:  %s\n", u)
	}
	if s.Valid && len(s.Checked) == 0 {
		fmt.Fprintf(w, "  Note:         only its dates were checked: no gateway or data dir was asked whether it is revoked or you are locked\n")
	}
}
