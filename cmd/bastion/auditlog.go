package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
)

// openAuditLog opens the data directory's audit log for writing. Where a
// log must already exist (the data directory has a CA, so it had one), a
// missing, empty or damaged file is an error naming the fix, never a new
// chain, unless newLog (--new-audit-log) says to start one: then a damaged
// or empty file is moved aside, and the new log's first event,
// audit.new_log, says who started it and what was moved.
func openAuditLog(ctx context.Context, layout ca.Layout, opts audit.Options, newLog bool, actor string, stderr io.Writer) (*audit.Store, error) {
	path := layout.AuditDB()
	opts.MustExist = logExpected(layout) && !newLog
	var moved string
	if fi, err := os.Stat(path); newLog && err == nil && fi.Size() == 0 {
		// Keep even an empty file in sight: it says the log was wiped.
		if moved, err = audit.MoveAside(path, time.Now()); err != nil {
			return nil, err
		}
	}
	store, err := audit.Open(path, opts)
	if newLog && errors.Is(err, audit.ErrDamaged) {
		if moved, err = audit.MoveAside(path, time.Now()); err != nil {
			return nil, err
		}
		fmt.Fprintf(stderr, "bastion: moved the damaged audit log to %s and starting a new one (--new-audit-log)\n", moved)
		store, err = audit.Open(path, opts)
	}
	if err != nil {
		return nil, err
	}
	if newLog && store.Created() {
		f := map[string]string{"reason": "--new-audit-log", "ca_present": strconv.FormatBool(layout.Exists())}
		if moved != "" {
			f["previous_file"] = moved
		}
		if _, err := store.Append(ctx, audit.Event{Type: audit.TypeAuditNewLog, Actor: actor, Fields: f}); err != nil {
			store.Close()
			return nil, err
		}
	}
	return store, nil
}

// logExpected says whether layout's data dir must already have an audit
// log. A data dir holding its CA keys got its log with them (`bastion ca
// init`). With the keys elsewhere (ca.dir, shared by a cluster's
// gateways) a gateway's first start makes the log, and its host key,
// written after the log, marks a data dir that has served: from then on a
// missing log is a wiped one.
func logExpected(layout ca.Layout) bool {
	if layout.KeyDir == "" {
		return layout.Exists()
	}
	_, err := os.Stat(filepath.Join(layout.DataDir, "gateway", "ssh_host_ed25519_key"))
	return err == nil
}
