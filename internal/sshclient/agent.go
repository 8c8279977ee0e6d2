package sshclient

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// AddToAgent hands key and its certificate to the ssh-agent listening on
// socket (SSH_AUTH_SOCK), constrained to the certificate's remaining
// validity so the agent forgets it when it expires. Certificates for the
// same key left by earlier logins are removed first, so ssh does not offer
// stale ones. It returns the lifetime set.
func AddToAgent(socket string, key *Key, cert *ssh.Certificate, comment string, now time.Time) (time.Duration, error) {
	left := Expiry(cert).Sub(now)
	if left < time.Second {
		return 0, fmt.Errorf("sshclient: the certificate expired at %s (is this machine's clock right?): nothing to add to ssh-agent", Expiry(cert).UTC().Format(time.RFC3339))
	}
	// LifetimeSecs 0 means "forever" to the agent, so never round down to 0.
	secs := uint32(min(left/time.Second, math.MaxUint32))
	conn, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return 0, fmt.Errorf("sshclient: cannot reach ssh-agent at %s (SSH_AUTH_SOCK): %w", socket, err)
	}
	defer conn.Close()
	// The socket deadline is wall-clock time, whatever clock now came from.
	if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return 0, fmt.Errorf("sshclient: ssh-agent at %s: %w", socket, err)
	}
	ag := agent.NewClient(conn)
	if err := removeOldCerts(ag, key.PublicKey()); err != nil {
		return 0, fmt.Errorf("sshclient: ssh-agent at %s: %w", socket, err)
	}
	err = ag.Add(agent.AddedKey{PrivateKey: key.Private, Certificate: cert, Comment: comment, LifetimeSecs: secs})
	if err != nil {
		return 0, fmt.Errorf("sshclient: ssh-agent at %s refused the certificate: %w", socket, err)
	}
	return time.Duration(secs) * time.Second, nil
}

// removeOldCerts removes the agent's certificates for pub.
func removeOldCerts(ag agent.ExtendedAgent, pub ssh.PublicKey) error {
	keys, err := ag.List()
	if err != nil {
		return err
	}
	var errs []error
	for _, k := range keys {
		pk, err := ssh.ParsePublicKey(k.Blob)
		if err != nil {
			continue
		}
		if c, ok := pk.(*ssh.Certificate); ok && bytes.Equal(c.Key.Marshal(), pub.Marshal()) {
			errs = append(errs, ag.Remove(pk))
		}
	}
	return errors.Join(errs...)
}
