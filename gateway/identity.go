package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// identityExtension is the Permissions.Extensions key that carries the
// Identity from the key callback to the connection. It contains an '@' so
// it can never collide with a certificate extension OpenSSH defines.
const identityExtension = "identity@bastion"

// Identity is who a connection authenticated as, taken from the
// certificate that was checked.
type Identity struct {
	// User is the SSH login name, equal to one of the cert's principals.
	User       string    `json:"user"`
	KeyID      string    `json:"key_id"`
	Serial     uint64    `json:"serial"`
	KeyFP      string    `json:"key_fp"`
	CAFP       string    `json:"ca_fp"`
	Principals []string  `json:"principals"`
	Groups     []string  `json:"groups,omitempty"`
	ValidUntil time.Time `json:"valid_until"`
	// ForceCommand is the cert's force-command critical option, if any.
	ForceCommand string `json:"force_command,omitempty"`
	// PublicKey is the certified (or, for the login user, offered) key
	// in authorized_keys form.
	PublicKey string `json:"public_key,omitempty"`
	// Login is true for the reserved login user: it may only use the
	// login service, which signs PublicKey.
	Login bool `json:"login,omitempty"`
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
		"user":       id.User,
		"key_fp":     id.KeyFP,
		"key_id":     id.KeyID,
		"principals": strings.Join(id.Principals, ","),
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
	if conn == nil || conn.Permissions == nil {
		return nil, errors.New("gateway: connection has no permissions")
	}
	raw, ok := conn.Permissions.Extensions[identityExtension]
	if !ok {
		return nil, errors.New("gateway: connection has no identity")
	}
	var id Identity
	if err := json.Unmarshal([]byte(raw), &id); err != nil {
		return nil, fmt.Errorf("gateway: corrupt identity: %w", err)
	}
	return &id, nil
}
