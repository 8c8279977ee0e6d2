package main

import (
	"io"
	"log/slog"
	"regexp"
)

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

// libraryLogger is the process's default slog logger, set once by main:
// libraries that log through slog's default (the dev IdP's zitadel/oidc
// logs every authorization_pending poll of a device login at Info) are
// heard only from Warn up.
func libraryLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
