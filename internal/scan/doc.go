// Package scan probes SSH servers the way the gateway would and reports
// whether they are hardened.
//
// The breach that bastion answers happened on a server that still accepted
// passwords. A scan connects to a target once, never sends a credential, and
// reports:
//
//   - the authentication methods the server advertises in its reply to the
//     "none" method (password or keyboard-interactive = FAIL);
//   - whether it presents a host certificate, and whether that certificate
//     was signed by bastion's host CA;
//   - the algorithms in its SSH_MSG_KEXINIT that ssh-audit fails or warns
//     about (SHA-1, CBC, DSA = FAIL; NIST curves, encrypt-and-MAC = WARN);
//   - its version banner.
//
// A Result passes when it has no FAIL finding and the probe completed.
// Scan probes one target, ScanAll many with bounded concurrency, and Checker
// caches results per address for the gateway's require_hardened_targets
// option, so a burst of jumps to one target costs one probe.
//
// What a probe cannot see: the methods a server lists are those for the
// probe's user (Options.User) at the first step, so a Match block for
// another user, or a second step of a multi-step AuthenticationMethods
// ("publickey,password"), stays hidden; scan with Options.User set to the
// login in question, and read the target's sshd -T for the rest.
//
// Whether root may log in cannot be seen from outside without root
// credentials, and bastion's CA never signs root, not even for a probe; the
// target sshd_config snippet in deploy/target covers that side.
package scan
