package main

import "regexp"

// internalPrefixRE matches the package prefixes bastion's packages put on
// their errors ("sshclient: ", "ca: "...), at the start of a message or
// after a ": " that wraps it. They help a developer reading a log and tell
// a user nothing, so userError drops them.
var internalPrefixRE = regexp.MustCompile(`(^|: )(?:sshclient|devidp|devtarget|gateway|ca|audit|auditquery|config|oidc|scan|alert|atomicfile|sftpinspect|recstore): `)

// userError is the text of err as the CLI shows it to a user: without
// internal package prefixes. main prints every error through it, once.
func userError(err error) string {
	msg := err.Error()
	for {
		next := internalPrefixRE.ReplaceAllString(msg, "$1")
		if next == msg {
			return msg
		}
		msg = next
	}
}
