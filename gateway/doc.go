// Package gateway is bastion's SSH server: a certificate-only jump host.
//
// It accepts user certificates signed by bastion's user CA and nothing
// else (publickey is the only method ever offered; `root` and forbidden
// principals are refused before any key is looked at), enforces per-group
// access rules on direct-tcpip jumps, bans sources that keep failing, and
// writes every attempt and every session to the audit log before anything
// flows.
//
// The server runs on gliderlabs/ssh for connection handling, with two
// deliberate departures from its defaults, both to keep identity honest
// (CVE-2024-45337): each public-key callback returns a fresh
// *ssh.Permissions rather than gliderlabs' shared per-connection one, and
// after the handshake the identity is read only from the ServerConn's
// Permissions (the ones x/crypto kept for the key that authenticated),
// never from gliderlabs' context. Channels are handled by our own code, so
// that agent forwarding, X11 and anything else we do not do is refused and
// audited instead of silently accepted.
package gateway
