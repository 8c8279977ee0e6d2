// Package sshclient is the client side of bastion: the user's key and
// certificate under ~/.ssh/bastion, trust-on-first-use pinning of the
// gateway's host CA, the connection to the gateway as a plain SSH client,
// the hand-off of key and certificate to ssh-agent, and the ssh config
// that lets stock OpenSSH jump through the gateway.
//
// `bastion login`, `bastion status` and the admin commands that reach a
// running gateway (`bastion lock --gateway ...`) are built on it. Like the
// rest of bastion's libraries it never logs and never exits the process:
// every failure is an error that says what to do about it.
//
// The files, all in one directory (see [Paths]):
//
//	id_ed25519            the user's private key (0600); it never leaves the machine
//	id_ed25519.pub        its public half
//	id_ed25519-cert.pub   the certificate from the gateway's login service (0600)
//	known_hosts           "@cert-authority * KEY": the pinned host CA
//	config                Host blocks for `Include ~/.ssh/bastion/config`
//	state.json            the last gateway and host patterns used
package sshclient
