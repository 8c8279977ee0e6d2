// Package ca is bastion's built-in SSH certificate authority.
//
// It owns two key pairs, one that signs user certificates and one that signs
// host certificates, stored in OpenSSH formats under DATA_DIR/ca. Every
// certificate, whoever asks for it (the CLI's `bastion ca sign` or the
// gateway's OIDC login), goes through the same signing pipeline:
//
//	key checks → template → request options → policy defaults → policy validators → sign → audit record
//
// and nothing is returned to the caller until its audit record is durable.
// The package also keeps the revocation list (by serial, key id or key) and
// writes it in OpenSSH's KRL format for sshd's RevokedKeys, and rotates CA
// keys with an overlap window in which both old and new keys are trusted.
package ca
