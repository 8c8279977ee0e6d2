// Package usertext turns bastion's errors into what a user is shown:
// without the package prefixes ("sshclient: ", "ca: ", ...) that help a
// developer reading a log and tell a user nothing. The CLI, the gateway's
// replies over SSH and the dev IdP's pages all go through it.
package usertext

import "regexp"

// internalPrefixRE matches a bastion package prefix at the start of a
// message or after the ": " that wraps it.
var internalPrefixRE = regexp.MustCompile(`(^|: |\n)(?:sshclient|devidp|devtarget|gateway|ca|audit|auditquery|config|oidc|scan|alert|atomicfile|sftpinspect|cluster|clusterstate|etcdembed|ssh|etcdclient): `)

// rawTimeoutRE matches the words Go and gRPC use for a deadline that
// passed: they say nothing about what was waited for, which the message
// around them names.
var rawTimeoutRE = regexp.MustCompile(`(?:rpc error: code = DeadlineExceeded desc = )?context deadline exceeded`)

// grpcCodeRE matches gRPC's framing of an error (etcd's client passes
// them on): the description after it is what says something.
var grpcCodeRE = regexp.MustCompile(`rpc error: code = \w+ desc = `)

// Clean drops every internal package prefix from msg, and says "timed
// out" where Go's "context deadline exceeded" would reach a user.
func Clean(msg string) string {
	msg = Timeouts(msg)
	msg = grpcCodeRE.ReplaceAllString(msg, "")
	for {
		next := internalPrefixRE.ReplaceAllString(msg, "$1")
		if next == msg {
			return msg
		}
		msg = next
	}
}

// Timeouts says "timed out" where msg has Go's (or gRPC's) "context
// deadline exceeded", and changes nothing else: logs keep the package
// prefixes a developer reads them by.
func Timeouts(msg string) string { return rawTimeoutRE.ReplaceAllString(msg, "timed out") }

// Error is Clean of err's text.
func Error(err error) string { return Clean(err.Error()) }
