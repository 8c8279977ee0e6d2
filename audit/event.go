package audit

import (
	"fmt"
	"strings"
	"time"
)

// Event is one record of the audit log. Producers fill Type, Actor, Session
// and Fields; the Store assigns ID, Time (when zero), PrevHash and Hash.
//
// Fields are strings on purpose: the hash chain needs an encoding that
// survives a JSON round trip byte for byte, and 64-bit serials do not survive
// a trip through float64.
type Event struct {
	// ID is a ULID: lexically sortable, so bbolt key order is time order.
	// Ids strictly increase in append order; an id's time is the event's
	// Time, or the previous id's when the event is dated before it.
	ID string `json:"id"`
	// Time is when the event happened, in UTC.
	Time time.Time `json:"time"`
	// Type is a stable dotted name such as "cert.issued" or "auth.failed".
	Type string `json:"type"`
	// Actor is who caused the event: a principal, key id or "operator".
	Actor string `json:"actor,omitempty"`
	// Session ties together the events of one connection or session.
	Session string `json:"session,omitempty"`
	// Fields carry the event's details (reason codes, serials, addresses).
	Fields map[string]string `json:"fields,omitempty"`
	// PrevHash is the Hash of the event before this one ("" for the first).
	PrevHash string `json:"prev_hash"`
	// Hash is hex SHA-256 over PrevHash and this event's canonical encoding.
	Hash string `json:"hash"`
}

// Stable event type names. Other packages use these constants rather than
// string literals so that a typo is a compile error.
const (
	TypeCertIssued   = "cert.issued"
	TypeCertRefused  = "cert.refused"
	TypeCertRevoked  = "cert.revoked"
	TypeCARotated    = "ca.rotated"
	TypeCARetired    = "ca.retired"
	TypeCAInit       = "ca.init"
	TypeAuthOK       = "auth.ok"
	TypeAuthFailed   = "auth.failed"
	TypeSessionStart = "session.start"
	TypeSessionEnd   = "session.end"
	TypeUserLocked   = "user.locked"
	TypeUserUnlocked = "user.unlocked"
	TypeSourceBanned = "source.banned"
	// TypeSourceUnbanned records an admin lifting a ban.
	TypeSourceUnbanned = "source.unbanned"
	// TypeConnectionsDropped counts, per reporting interval, the
	// connections the gateway closed before their handshake (banned
	// source, full or per-source-full unauthenticated pool, early drop).
	TypeConnectionsDropped = "connections.dropped"
	// TypeConnectionEnded records the gateway ending an authenticated
	// connection because its credential stopped passing the certificate
	// check (revoked, locked, expired, CA no longer trusted), whether or
	// not it had a session open.
	TypeConnectionEnded = "connection.ended"
	// TypeSessionExec is a shell, command or subsystem started inside a
	// recorded session (written before the target sees the request).
	TypeSessionExec = "session.exec"
	// TypeSessionExit is how that command ended (exit status or signal).
	TypeSessionExit = "session.exit"
	// TypeSessionSFTP is one file operation inside a recorded SFTP session.
	TypeSessionSFTP = "session.sftp"
	// TypeSessionForward is a port forward opened inside a recorded session.
	TypeSessionForward = "session.forward"
	// TypeSessionCheckpoint is the digest and count of the recording
	// chunks a recorded session has committed so far, written by the
	// store every few chunks so the chain covers a recording a crash cut.
	TypeSessionCheckpoint = "session.checkpoint"
	// TypeSessionForwardEnd is one forwarded connection of a recorded
	// session closing: where it went and the bytes each way.
	TypeSessionForwardEnd = "session.forward_end"
	// TypeRecordingFailed is a recording write that failed.
	TypeRecordingFailed = "recording.failed"
	// TypeRecordingTruncated records that a session's recording reached
	// max_bytes_per_session: what follows is counted, not stored.
	TypeRecordingTruncated = "recording.truncated"
	// TypeAuditOutage closes an episode during which the audit log could
	// not be written (the gateway's spool writes it).
	TypeAuditOutage   = "audit.outage"
	TypeChannelDenied = "channel.refused"
	TypeRequestDenied = "request.refused"
	TypeCommand       = "gateway.command"
	TypeGatewayStart  = "gateway.start"
	TypeGatewayStop   = "gateway.stop"
	TypeLoginStarted  = "login.started"
	TypeLoginOK       = "login.ok"
	TypeLoginFailed   = "login.failed"
	// TypeAuditPruned records a retention run: how many events it deleted
	// and the checkpoint the chain now starts from.
	TypeAuditPruned = "audit.pruned"
	// TypeAuditNewLog is the first event of a log started with
	// --new-audit-log where a previous log existed or should have.
	TypeAuditNewLog = "audit.new_log"
	// TypeAuditSalvaged is appended by `bastion audit salvage` to the log
	// it writes: where the events came from and what was lost.
	TypeAuditSalvaged = "audit.salvaged"
	// TypeAlertSent and TypeAlertFailed record each alert's delivery to a
	// webhook, or its giving up (a dead letter).
	TypeAlertSent   = "alert.sent"
	TypeAlertFailed = "alert.failed"
	// TypeSourceSeen records the first successful login of a user from a
	// network (a /24 or /64), which the new_source alert rule remembers.
	TypeSourceSeen = "alert.source_seen"
	// TypeIdPDown records that the identity provider has not answered for
	// the gateway's outage threshold (logins fail meanwhile); TypeIdPUp
	// that it answers again.
	TypeIdPDown = "idp.down"
	TypeIdPUp   = "idp.up"
	// TypeStateApplied records that this gateway applied a lock, unlock,
	// revocation or ban another gateway of the cluster took (fields kind,
	// target, from_gateway); the gateway that took it recorded the
	// command itself.
	TypeStateApplied = "state.applied"
	// TypeSessionResumed records, in the log of the gateway holding a
	// session, that a peer had ended it as gateway_lost while this gateway
	// was cut off from etcd, and that it lives on (fields lost_by,
	// cut_off_ms): the holder's own later session.end is the one that
	// counts.
	TypeSessionResumed = "session.resumed"
)

// KnownTypes lists every event type bastion writes, for checking the
// types a reader filters on: a misspelt type would otherwise match
// nothing, silently. TestKnownTypesListsEveryType keeps it whole.
func KnownTypes() []string {
	return []string{TypeCertIssued, TypeCertRefused, TypeCertRevoked, TypeCARotated, TypeCARetired, TypeCAInit,
		TypeAuthOK, TypeAuthFailed, TypeSessionStart, TypeSessionEnd, TypeUserLocked, TypeUserUnlocked,
		TypeSourceBanned, TypeSourceUnbanned, TypeConnectionsDropped, TypeChannelDenied, TypeRequestDenied,
		TypeCommand, TypeGatewayStart, TypeGatewayStop, TypeLoginStarted, TypeLoginOK, TypeLoginFailed,
		TypeAuditPruned, TypeAuditNewLog, TypeAuditSalvaged, TypeAlertSent, TypeAlertFailed, TypeSourceSeen,
		TypeAuditOutage, TypeConnectionEnded, TypeSessionExec, TypeSessionExit, TypeSessionSFTP, TypeSessionForward,
		TypeSessionForwardEnd, TypeSessionCheckpoint, TypeRecordingFailed, TypeRecordingTruncated, TypeIdPDown, TypeIdPUp, TypeStateApplied, TypeSessionResumed}
}

// CheckKnownType reports a filter type (a name or a "family.*" prefix)
// that matches no type in KnownTypes, listing the known ones.
func CheckKnownType(pattern string) error {
	known := KnownTypes()
	for _, k := range known {
		if prefix, ok := strings.CutSuffix(pattern, ".*"); ok && strings.HasPrefix(k, prefix+".") || k == pattern {
			return nil
		}
	}
	return fmt.Errorf("audit: event type %q does not exist; the types are %s (a family such as auth.* matches several)", pattern, strings.Join(known, ", "))
}
