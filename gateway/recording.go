package gateway

import (
	"context"
	"time"

	"github.com/bastion-ssh/bastion/audit"
)

// Recordings stores what happens inside recorded sessions; *audit.Store implements it (recstore branch).
type Recordings interface {
	StartRecording(ctx context.Context, session string) (Recording, error)
}

// Recording is one record-mode session's recording.
type Recording interface {
	// Write appends one timed entry of channel ch: kind "o" output, "e" stderr, "i" input, "r" resize ("COLSxROWS"), "x" exec/subsystem marker.
	Write(ch uint32, kind string, at time.Duration, data []byte) error
	// Close flushes, and returns the SHA-256 (hex) over everything written and the bytes stored.
	Close(ctx context.Context) (sha256 string, stored int64, err error)
}

// committedRecording is a Recording that can say what it committed:
// the digest and count of its stored chunks (*audit.Recording is one).
// After a failed commit, that is what the session.end must carry.
type committedRecording interface {
	Committed() (sha256 string, chunks uint64, stored int64)
}

// recordingLimit is implemented by a Recording with a size limit
// (*audit.Recording): Limited reports whether it stopped storing, what it
// stored and the limit.
type recordingLimit interface {
	Limited() (limited bool, stored, limit int64)
}

// SFTPInspector is fed both byte streams of a `subsystem sftp` channel,
// in order, so that file-transfer metadata (paths opened, read, written,
// removed) can be audited.
// By default record mode uses internal/sftpinspect and writes each
// operation as a session.sftp record (record_sftp.go); Deps.SFTP
// replaces that.
type SFTPInspector interface {
	// ClientToServer receives the bytes the client sent, in order.
	ClientToServer(p []byte)
	// ServerToClient receives the bytes the target sent, in order.
	ServerToClient(p []byte)
	// Close ends the channel's inspection.
	Close() error
}

// StoreRecordings adapts *audit.Store to Recordings: its StartRecording
// returns the concrete *audit.Recording, which Go does not take as the
// interface.
type StoreRecordings struct{ Store *audit.Store }

// StartRecording starts the recording of session in the audit store.
func (r StoreRecordings) StartRecording(ctx context.Context, session string) (Recording, error) {
	rec, err := r.Store.StartRecording(ctx, session)
	if err != nil {
		return nil, err // never a typed nil inside the interface
	}
	return rec, nil
}
