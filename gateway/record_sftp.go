package gateway

import (
	"context"
	"io"
	"strconv"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/internal/sftpinspect"
)

// sftpAudit feeds both streams of an sftp subsystem channel to the SFTP
// inspector and writes each operation it reports as a session.sftp record.
type sftpAudit struct {
	in             *sftpinspect.Inspector
	client, server io.Writer
}

func (a *sftpAudit) ClientToServer(p []byte) { _, _ = a.client.Write(p) }
func (a *sftpAudit) ServerToClient(p []byte) { _, _ = a.server.Write(p) }
func (a *sftpAudit) Close() error            { a.in.Close(); return nil }

// sftpInspector returns the inspector of one sftp channel of s: the one
// Deps.SFTP builds if set, else an sftpAudit writing s's records.
func (s *recordedSession) sftpInspector(ch uint32) SFTPInspector {
	if s.g.deps.SFTP != nil {
		return s.g.deps.SFTP(s.id2, ch)
	}
	channel := strconv.Itoa(int(ch))
	in := sftpinspect.New(func(op sftpinspect.Op) {
		f := map[string]string{"channel": channel, "op": op.Op, "path": bounded(op.Path), "status": op.Status}
		if op.Target != "" {
			f["target_path"] = bounded(op.Target)
		}
		if op.PathClean != "" {
			f["path_clean"] = bounded(op.PathClean)
		}
		if op.TargetClean != "" {
			f["target_path_clean"] = bounded(op.TargetClean)
		}
		if op.Flags != "" {
			f["flags"] = op.Flags
		}
		if op.Op == "close" {
			f["bytes_read"], f["bytes_written"] = strconv.FormatInt(op.Read, 10), strconv.FormatInt(op.Written, 10)
			// The contents, hashed as they streamed: hex SHA-256, or
			// "non-sequential" when they did not move in order.
			if op.ReadSHA256 != "" {
				f["read_sha256"] = op.ReadSHA256
			}
			if op.WrittenSHA256 != "" {
				f["written_sha256"] = op.WrittenSHA256
			}
		}
		// A record of what already happened: if the log is down it waits
		// in memory (see auditspool.go).
		_ = s.event(context.Background(), audit.TypeSessionSFTP, f)
	})
	return &sftpAudit{in: in, client: in.ClientWriter(), server: in.ServerWriter()}
}
