// Package audit is bastion's evidence store: an append-only, hash-chained log
// of security events (certificates issued, logins accepted and refused,
// sessions, locks, revocations, CA operations) kept in one bbolt file.
//
// Every event gets a time-ordered ULID and a SHA-256 hash over the previous
// event's hash and its own canonical JSON encoding, so an edited, deleted or
// reordered record breaks the chain and [Store.Verify] names the first broken
// link. [Store.Append] returns only once the event is fsync'd, which lets the
// gateway fail closed: a session does not start until its start event is
// durable. Concurrent appends share bbolt commits, so durability stays cheap
// under load.
//
// Other packages keep state that must change together with its audit record
// (revocations, user locks) in their own buckets of the same file, through
// [Store.AppendWith] and [Store.View]. The bucket names "events", "meta"
// and "sessions" belong to this package.
//
// Committed events are also offered live to subscribers ([Store.Subscribe],
// which drops rather than wait, and [Store.Follow], which never misses
// one), for alerting and `audit tail`. With Options.Retention set, the
// oldest events are pruned in the background ([Store.Prune]) and
// verification starts from the recorded checkpoint.
//
// Session recordings ([Store.StartRecording]) are stored beside the events
// in zstd-compressed chunks, committed through the same group commit about
// once a second or per 64 KiB; each recording's SHA-256 goes into its
// session's session.end event, so VerifyChain checks the recordings too.
// They replay with [Store.Play] (terminal, asciicast v2, text) and are
// listed with [Store.Sessions]; retention prunes them with their
// session.end.
//
// bbolt holds an exclusive lock on the file while a writer has it open, so a
// second process gets [ErrInUse], naming the holder, once Options.Timeout
// passes; a live export goes through the running gateway. Logs leave the
// store as JSON Lines (the verifiable form) or CSV, through [Store.Export]
// or an [Encoder] on any event stream.
package audit
