package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
)

// identityExtension is the Permissions.Extensions key that carries the
// Identity from the key callback to the connection. It contains an '@' so
// it can never collide with a certificate extension OpenSSH defines.
const identityExtension = "identity@bastion"

// Identity is who a connection authenticated as, taken from the
// certificate that was checked.
type Identity struct {
	// User is the SSH login name, equal to one of the cert's principals.
	User   string `json:"user"`
	KeyID  string `json:"key_id"`
	Serial uint64 `json:"serial"`
	KeyFP  string `json:"key_fp"`
	CAFP   string `json:"ca_fp"`
	// CAKey is the signing CA's public key in authorized_keys form, so the
	// CA's trust can be re-checked after a rotation or retirement.
	CAKey      string `json:"ca_key,omitempty"`
	caPub      ssh.PublicKey
	Principals []string  `json:"principals"`
	Groups     []string  `json:"groups,omitempty"`
	ValidUntil time.Time `json:"valid_until"`
	// ForceCommand is the cert's force-command critical option, if any.
	ForceCommand string `json:"force_command,omitempty"`
	// SourceAddress is the cert's source-address critical option, if any.
	SourceAddress string `json:"source_address,omitempty"`
	// Extensions are the cert's extensions (permit-pty,
	// permit-port-forwarding, ...), the groups extension aside.
	Extensions map[string]string `json:"extensions,omitempty"`
	// PublicKey is the certified (or, for the login user, offered) key
	// in authorized_keys form.
	PublicKey string `json:"public_key,omitempty"`
	// Login is true for the reserved login user: it may only use the
	// login service, which signs PublicKey.
	Login bool `json:"login,omitempty"`
}

// Permits reports whether the certificate grants extension ext (e.g.
// "permit-port-forwarding"), as sshd reads it: absent means refused.
func (id *Identity) Permits(ext string) bool {
	_, ok := id.Extensions[ext]
	return ok
}

// subject is the identity as the revocation state matches it.
func (id *Identity) subject() ca.Subject {
	return ca.Subject{User: id.User, Principals: id.Principals, KeyID: id.KeyID, Serial: id.Serial, KeyFP: id.KeyFP}
}

// caKey parses CAKey.
// The parsed key is kept after the first call: recheck runs on every
// channel and request. An Identity is settled before other goroutines see
// it (verified parses it before the connection joins the live set).
func (id *Identity) caKey() (ssh.PublicKey, error) {
	if id.caPub != nil {
		return id.caPub, nil
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(id.CAKey))
	if err == nil {
		id.caPub = k
	}
	return k, err
}

// HasGroup reports whether the identity carries group g.
func (id *Identity) HasGroup(g string) bool {
	for _, have := range id.Groups {
		if have == g {
			return true
		}
	}
	return false
}

// auditFields are the fields every record about this identity carries.
func (id *Identity) auditFields() map[string]string {
	f := map[string]string{
		"user":       bounded(id.User),
		"key_fp":     id.KeyFP,
		"key_id":     bounded(id.KeyID),
		"principals": strings.Join(boundedList(id.Principals), ","),
	}
	if id.Serial != 0 {
		f["serial"] = fmt.Sprint(id.Serial)
	}
	if len(id.Groups) > 0 {
		f["groups"] = strings.Join(id.Groups, ",")
	}
	return f
}

// attach stores id in perms.
func (id *Identity) attach(perms *ssh.Permissions) error {
	b, err := json.Marshal(id)
	if err != nil {
		return err
	}
	if perms.Extensions == nil {
		perms.Extensions = map[string]string{}
	}
	perms.Extensions[identityExtension] = string(b)
	return nil
}

// identityOf reads the identity x/crypto kept for the key that
// authenticated the connection.
func identityOf(conn *ssh.ServerConn) (*Identity, error) {
	if conn == nil {
		return nil, errors.New("gateway: connection has no permissions")
	}
	return identityFromPerms(conn.Permissions)
}

// identityFromPerms reads the identity our check attached to perms.
func identityFromPerms(perms *ssh.Permissions) (*Identity, error) {
	if perms == nil {
		return nil, errors.New("gateway: connection has no permissions")
	}
	raw, ok := perms.Extensions[identityExtension]
	if !ok {
		return nil, errors.New("gateway: connection has no identity")
	}
	var id Identity
	if err := json.Unmarshal([]byte(raw), &id); err != nil {
		return nil, fmt.Errorf("gateway: corrupt identity: %w", err)
	}
	return &id, nil
}
