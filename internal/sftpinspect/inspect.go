// Package sftpinspect reads the two byte streams of an SFTP session
// (version 3, as OpenSSH speaks it) and reports the file operations in
// them: opens with path and flags, the bytes read and written through each
// handle (at its close), removes, renames, mkdir, rmdir, setstat and
// symlink, each with the server's answer.
//
// The record-mode proxy feeds it what it relays on an sftp subsystem
// channel, in whatever pieces the channel delivers. It is a parser of
// outside input with bounded memory: a packet whose length header
// exceeds MaxPacket is malformed and ends inspection of that session (it
// is never buffered); of any packet only the first few KiB are kept (file
// contents are counted, not stored); and the requests awaiting replies
// and the open handles are capped.
//
// github.com/pkg/sftp, the well-kept Go SFTP library, was checked first:
// its packet types and their decoders are unexported, and its stream
// decoder lives in an internal package, so it offers nothing to parse a
// relayed stream with. Hence this small parser.
package sftpinspect

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"path"
	"strings"
	"sync"

	"github.com/bastion-ssh/bastion/internal/textbound"
)

// MaxPacket is the largest packet length accepted (OpenSSH's sftp-server
// refuses more than 256 KiB too).
const MaxPacket = 256 << 10

const (
	// keepMax is how much of one packet is kept for parsing: enough for
	// any header and a long path; the rest (file data) is only counted.
	keepMax = 8 << 10
	// maxPending bounds the requests awaiting a reply.
	maxPending = 4096
	// maxHandles bounds the handles tracked.
	maxHandles = 1024
	// maxString bounds every path or message in an Op.
	maxString = 1024
)

// Packet types (draft-ietf-secsh-filexfer-02, and OpenSSH's extensions).
const (
	fxpInit     = 1
	fxpVersion  = 2
	fxpOpen     = 3
	fxpClose    = 4
	fxpRead     = 5
	fxpWrite    = 6
	fxpSetstat  = 9
	fxpFsetstat = 10
	fxpRemove   = 13
	fxpMkdir    = 14
	fxpRmdir    = 15
	fxpRename   = 18
	fxpSymlink  = 20
	fxpStatus   = 101
	fxpHandle   = 102
	fxpData     = 103
	fxpExtended = 200
)

// Op is one file operation and its outcome.
type Op struct {
	// Op is open, close, remove, rename, mkdir, rmdir, setstat, symlink,
	// hardlink or malformed.
	Op string
	// Path is the file; Target the new name (rename, hardlink) or what a
	// symlink points to.
	Path, Target string
	// PathClean and TargetClean are path.Clean of Path and Target (before
	// bounding), set only when that differs from the string sent: what a
	// "/./././.../etc/passwd" names, whatever its length.
	PathClean, TargetClean string
	// Flags are an open's flags: read, write, append, creat, trunc, excl.
	Flags string
	// Read and Written are the bytes moved through the handle (close).
	Read, Written int64
	// ReadSHA256 and WrittenSHA256 (close, when bytes moved that way) are
	// the hex SHA-256 of the data, hashed as it streamed past, when it
	// moved in order from offset 0 (as sftp and scp clients move whole
	// files); else NonSequential.
	ReadSHA256, WrittenSHA256 string
	// Status is "ok", the server's error code name (no_such_file,
	// permission_denied, failure, ...), "no_reply" when the session ended
	// first, "reply_not_tracked" when too many requests were in flight to
	// follow this one's reply, or for malformed the reason.
	Status string
}

// String renders op as one line for a recording marker or a log.
func (op Op) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sftp %s %q", op.Op, op.Path)
	if op.Target != "" {
		fmt.Fprintf(&b, " -> %q", op.Target)
	}
	if op.Flags != "" {
		fmt.Fprintf(&b, " flags=%s", op.Flags)
	}
	if op.Op == "close" {
		fmt.Fprintf(&b, " read=%d written=%d", op.Read, op.Written)
		if op.ReadSHA256 != "" {
			fmt.Fprintf(&b, " read_sha256=%s", op.ReadSHA256)
		}
		if op.WrittenSHA256 != "" {
			fmt.Fprintf(&b, " written_sha256=%s", op.WrittenSHA256)
		}
	}
	fmt.Fprintf(&b, " status=%s", op.Status)
	return b.String()
}

// NonSequential is the digest of a handle's data that did not move in
// order from offset 0: the bytes were counted but not hashed.
const NonSequential = "non-sequential"

// pending is a request awaiting its reply.
type pending struct {
	op           Op
	handle       string // read: the handle the data is for
	offset       uint64 // read: where
	isRead, open bool
}

// handleState is an open file.
type handleState struct {
	path, pathClean, flags string
	read, written          int64
	// Digests of the data each way while it stays in order: next is the
	// offset the next data must start at; a nil hash with moved bytes
	// means the order broke.
	rd, wr digest
}

// digest hashes one direction of a handle's data, streamed.
type digest struct {
	h       hash.Hash
	next    uint64
	broken  bool
	started bool
}

// at returns a sink for data at offset off of length n, or nil (and the
// order is broken) when it is not the next in order.
func (d *digest) at(off uint64, n int) func([]byte) {
	if d.broken || off != d.next {
		d.broken = true
		return nil
	}
	if !d.started {
		d.h, d.started = sha256.New(), true
	}
	d.next += uint64(n)
	return func(b []byte) { d.h.Write(b) }
}

// sum is the digest for a close that moved n bytes this way.
func (d *digest) sum(n int64) string {
	switch {
	case n == 0:
		return ""
	case d.broken || !d.started || d.next != uint64(n):
		return NonSequential
	}
	return hex.EncodeToString(d.h.Sum(nil))
}

// closeOp is the close of h.
func (st *handleState) closeOp(status string) Op {
	return Op{Op: "close", Path: st.path, PathClean: st.pathClean, Flags: st.flags, Read: st.read, Written: st.written,
		ReadSHA256: st.rd.sum(st.read), WrittenSHA256: st.wr.sum(st.written), Status: status}
}

// Inspector follows one SFTP session. Its two writers may be used from
// two goroutines.
type Inspector struct {
	emit func(Op)

	mu       sync.Mutex
	pending  map[uint32]pending
	handles  map[string]*handleState
	broken   bool
	client   framer
	server   framer
	overflow int // requests not tracked because maxPending was reached
}

// New returns an Inspector that calls emit with each operation, in the
// order their outcomes are seen. emit is called with the Inspector's lock
// held and must not call back into it.
func New(emit func(Op)) *Inspector {
	in := &Inspector{emit: emit, pending: map[uint32]pending{}, handles: map[string]*handleState{}}
	in.client.packet, in.client.head = in.request, in.requestHead
	in.server.packet, in.server.head = in.reply, in.replyHead
	return in
}

// ClientWriter is fed the client-to-server stream.
func (in *Inspector) ClientWriter() *StreamWriter { return &StreamWriter{in: in, f: &in.client} }

// ServerWriter is fed the server-to-client stream.
func (in *Inspector) ServerWriter() *StreamWriter { return &StreamWriter{in: in, f: &in.server} }

// StreamWriter feeds one direction of the session. Write never fails, so
// it can sit in an io.MultiWriter or io.TeeReader beside the relay.
type StreamWriter struct {
	in *Inspector
	f  *framer
}

// Write parses p as the next bytes of its stream.
func (w *StreamWriter) Write(p []byte) (int, error) {
	in := w.in
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.broken {
		return len(p), nil
	}
	if reason := w.f.feed(p); reason != "" {
		in.broken = true
		in.emit(Op{Op: "malformed", Status: reason})
	}
	return len(p), nil
}

// Close reports the operations still awaiting a reply (status no_reply)
// and the handles never closed, at the end of the session.
func (in *Inspector) Close() {
	in.mu.Lock()
	defer in.mu.Unlock()
	for id, p := range in.pending {
		delete(in.pending, id)
		if !p.isRead {
			p.op.Status = "no_reply"
			in.emit(p.op)
		}
	}
	for h, st := range in.handles {
		delete(in.handles, h)
		in.emit(st.closeOp("no_reply"))
	}
}

// framer cuts one stream into packets. It keeps at most keepMax bytes of
// the packet being read and counts the rest.
type framer struct {
	hdr    [4]byte
	nhdr   int
	length int    // of the current packet (0: reading the header)
	seen   int    // bytes of the current packet seen
	keep   []byte // its first bytes
	packet func(kept []byte, length int)
	// head, once keepMax bytes or the whole packet are kept, may name
	// where in the packet its file data starts and a sink that is then
	// fed that data as it streams past, so that nothing is held.
	head     func(kept []byte, length int) (start int, sink func([]byte))
	headDone bool
	sink     func([]byte)
}

// feed consumes p; it returns a reason when the stream is malformed.
func (f *framer) feed(p []byte) string {
	for len(p) > 0 {
		if f.length == 0 {
			n := copy(f.hdr[f.nhdr:], p)
			f.nhdr += n
			p = p[n:]
			if f.nhdr < 4 {
				return ""
			}
			f.nhdr = 0
			l := binary.BigEndian.Uint32(f.hdr[:])
			if l == 0 || l > MaxPacket {
				return fmt.Sprintf("packet length %d outside 1..%d", l, MaxPacket)
			}
			f.length, f.seen, f.keep = int(l), 0, f.keep[:0]
			f.headDone, f.sink = false, nil
			continue
		}
		n := min(len(p), f.length-f.seen)
		chunk := p[:n]
		if room := keepMax - len(f.keep); room > 0 {
			f.keep = append(f.keep, chunk[:min(n, room)]...)
		}
		if f.sink != nil {
			f.sink(chunk) // the keep is full: all of it is past it
		} else if !f.headDone && f.head != nil && (len(f.keep) == keepMax || f.seen+n == f.length) {
			f.headDone = true
			if start, sink := f.head(f.keep, f.length); sink != nil && start >= 0 {
				kept := len(f.keep)
				if start < kept {
					sink(f.keep[start:])
				}
				if from := max(kept, start); f.seen+n > from {
					sink(chunk[from-f.seen:])
				}
				f.sink = sink
			}
		}
		f.seen += n
		p = p[n:]
		if f.seen == f.length {
			f.packet(f.keep, f.length)
			f.length = 0
		}
	}
	return ""
}

// reader decodes the kept part of a packet; a read past it fails.
type reader struct {
	b  []byte
	ok bool
}

func (r *reader) u32() uint32 {
	if !r.ok || len(r.b) < 4 {
		r.ok = false
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *reader) u64() uint64 {
	hi := uint64(r.u32())
	return hi<<32 | uint64(r.u32())
}

func (r *reader) u8() byte {
	if !r.ok || len(r.b) < 1 {
		r.ok = false
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) skip(n int) {
	if !r.ok || len(r.b) < n {
		r.ok = false
		return
	}
	r.b = r.b[n:]
}

func (r *reader) str() string {
	n := r.u32()
	if !r.ok || uint32(len(r.b)) < n {
		r.ok = false
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// bound makes a client-supplied string safe to log: at most maxString
// bytes, valid UTF-8, no control characters.
func bound(s string) string {
	s = textbound.Cut(strings.ToValidUTF8(s, "\uFFFD"), maxString)
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

// cleaned is path.Clean(raw), bounded, or "" when that is raw itself.
func cleaned(raw string) string {
	c := path.Clean(raw)
	if raw == "" || c == raw {
		return ""
	}
	return bound(c)
}

// pathOp is an operation on one path.
func pathOp(op, raw string) Op {
	return Op{Op: op, Path: bound(raw), PathClean: cleaned(raw)}
}

// request handles a client packet.
func (in *Inspector) request(kept []byte, length int) {
	r := &reader{b: kept, ok: true}
	typ := r.u8()
	if typ == fxpInit || !r.ok {
		return
	}
	id := r.u32()
	var p pending
	switch typ {
	case fxpOpen:
		path := r.str()
		flags := r.u32()
		p = pending{op: Op{Op: "open", Path: bound(path), PathClean: cleaned(path), Flags: openFlags(flags)}, open: true}
	case fxpClose:
		h := r.str()
		if st, ok := in.handles[h]; ok && r.ok {
			delete(in.handles, h)
			in.emit(st.closeOp("ok"))
		}
		return
	case fxpRead:
		h := r.str()
		p = pending{handle: h, offset: r.u64(), isRead: true}
	case fxpWrite:
		h := r.str()
		r.skip(8)
		r.u32()
		// The data's length is what is left of the packet, kept or not.
		hdr := 1 + 4 + 4 + len(h) + 8 + 4
		if st, ok := in.handles[h]; ok && r.ok && length >= hdr {
			st.written += int64(length - hdr)
		}
		return
	case fxpRemove:
		p = pending{op: pathOp("remove", r.str())}
	case fxpMkdir:
		p = pending{op: pathOp("mkdir", r.str())}
	case fxpRmdir:
		p = pending{op: pathOp("rmdir", r.str())}
	case fxpSetstat:
		p = pending{op: pathOp("setstat", r.str())}
	case fxpFsetstat:
		h := r.str()
		path, clean := "handle", ""
		if st, ok := in.handles[h]; ok {
			path, clean = st.path, st.pathClean
		}
		p = pending{op: Op{Op: "setstat", Path: path, PathClean: clean}}
	case fxpRename:
		from, to := r.str(), r.str()
		p = pending{op: Op{Op: "rename", Path: bound(from), Target: bound(to), PathClean: cleaned(from), TargetClean: cleaned(to)}}
	case fxpSymlink:
		// OpenSSH sends the target first and the link second, the
		// reverse of the draft (PROTOCOL, section 4.1).
		target, link := r.str(), r.str()
		p = pending{op: Op{Op: "symlink", Path: bound(link), Target: bound(target), PathClean: cleaned(link)}}
	case fxpExtended:
		switch name := r.str(); name {
		case "posix-rename@openssh.com":
			from, to := r.str(), r.str()
			p = pending{op: Op{Op: "rename", Path: bound(from), Target: bound(to), PathClean: cleaned(from), TargetClean: cleaned(to)}}
		case "hardlink@openssh.com":
			from, to := r.str(), r.str()
			p = pending{op: Op{Op: "hardlink", Path: bound(to), Target: bound(from), PathClean: cleaned(to), TargetClean: cleaned(from)}}
		case "lsetstat@openssh.com":
			p = pending{op: pathOp("setstat", r.str())}
		default:
			return
		}
	default:
		return // stat, readdir, realpath and the like change nothing
	}
	if !r.ok {
		p.op.Path += " (truncated)"
	}
	if _, dup := in.pending[id]; !dup && len(in.pending) >= maxPending {
		// Too many requests in flight to follow their replies: report the
		// operation now rather than lose it.
		in.overflow++
		if !p.isRead {
			p.op.Status = "reply_not_tracked"
			in.emit(p.op)
		}
		return
	}
	in.pending[id] = p
}

// requestHead finds the data of a client's write: it is hashed when it
// continues the handle's data in order.
func (in *Inspector) requestHead(kept []byte, length int) (int, func([]byte)) {
	r := &reader{b: kept, ok: true}
	if r.u8() != fxpWrite {
		return 0, nil
	}
	r.u32()
	h := r.str()
	off := r.u64()
	r.u32()
	hdr := 1 + 4 + 4 + len(h) + 8 + 4
	st, ok := in.handles[h]
	if !ok || !r.ok || length < hdr {
		return 0, nil
	}
	return hdr, st.wr.at(off, length-hdr)
}

// replyHead finds the data of a server's reply to a read: it is hashed
// when it continues the handle's data in order.
func (in *Inspector) replyHead(kept []byte, length int) (int, func([]byte)) {
	r := &reader{b: kept, ok: true}
	if r.u8() != fxpData {
		return 0, nil
	}
	id := r.u32()
	p, ok := in.pending[id]
	if !ok || !r.ok || !p.isRead || length < 1+4+4 {
		return 0, nil
	}
	st, ok := in.handles[p.handle]
	if !ok {
		return 0, nil
	}
	return 1 + 4 + 4, st.rd.at(p.offset, length-1-4-4)
}

// reply handles a server packet.
func (in *Inspector) reply(kept []byte, length int) {
	r := &reader{b: kept, ok: true}
	typ := r.u8()
	if typ == fxpVersion || !r.ok {
		return
	}
	id := r.u32()
	p, ok := in.pending[id]
	if !ok || !r.ok {
		return
	}
	delete(in.pending, id)
	switch typ {
	case fxpStatus:
		if p.isRead {
			return // EOF or an error: no data
		}
		p.op.Status = statusName(r.u32())
		in.emit(p.op)
	case fxpHandle:
		if !p.open {
			return
		}
		h := r.str()
		if !r.ok {
			return
		}
		p.op.Status = "ok"
		in.emit(p.op)
		if len(in.handles) < maxHandles {
			in.handles[h] = &handleState{path: p.op.Path, pathClean: p.op.PathClean, flags: p.op.Flags}
		}
	case fxpData:
		if st, ok := in.handles[p.handle]; ok && p.isRead && length >= 1+4+4 {
			st.read += int64(length - 1 - 4 - 4)
		}
	}
}

// openFlags names SSH_FXF_* flags.
func openFlags(f uint32) string {
	var names []string
	for _, fl := range []struct {
		bit  uint32
		name string
	}{{0x01, "read"}, {0x02, "write"}, {0x04, "append"}, {0x08, "creat"}, {0x10, "trunc"}, {0x20, "excl"}} {
		if f&fl.bit != 0 {
			names = append(names, fl.name)
		}
	}
	if rest := f &^ 0x3f; rest != 0 {
		names = append(names, fmt.Sprintf("0x%x", rest))
	}
	return strings.Join(names, ",")
}

// statusName names an SSH_FX_* status code.
func statusName(code uint32) string {
	names := [...]string{"ok", "eof", "no_such_file", "permission_denied", "failure", "bad_message", "no_connection", "connection_lost", "op_unsupported"}
	if int(code) < len(names) {
		return names[code]
	}
	return fmt.Sprintf("status_%d", code)
}
