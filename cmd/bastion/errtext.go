package main

import (
	"io"
	"log/slog"

	"github.com/bastion-ssh/bastion/internal/logattr"
	"github.com/bastion-ssh/bastion/internal/usertext"
)

// userError is the text of err as the CLI shows it to a user: without
// internal package prefixes. main prints every error through it, once.
func userError(err error) string { return usertext.Error(err) }

// libraryLogger is the process's default slog logger, set once by main:
// libraries that log through slog's default (the dev IdP's zitadel/oidc
// logs every authorization_pending poll of a device login at Info) are
// heard only from Warn up.
func libraryLogger(w io.Writer) *slog.Logger {
	return slog.New(logattr.Wrap(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn})))
}
