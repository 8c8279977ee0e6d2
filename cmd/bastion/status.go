package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
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
}

func newStatusCommand(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [--json]",
		Short: "Show your bastion certificate: identity, principals, groups and time left",
		Long: `bastion status reads the certificate that bastion login saved in
~/.ssh/bastion/ and shows who it says you are (its key id), the principals
(login names) and groups it carries, when it is valid and how long is left,
and the gateway it came from. It exits 1 when there is no certificate or it
has expired (or is not valid yet), so scripts can run bastion login when
needed:

    bastion status >/dev/null || bastion login`,
		Example: `  bastion status
  bastion status --json`,
		Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
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
				return &exitError{code: 1, err: fmt.Errorf("%s: run `bastion login`", s.Problem)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return cmd
}

// statusOf describes cert at now.
func statusOf(cert *gossh.Certificate, paths sshclient.Paths, gw string, now time.Time) certStatus {
	after, before := sshclient.ValidFrom(cert), sshclient.Expiry(cert)
	s := certStatus{
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
}
