package sftpinspect

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// teeEnv makes the test binary an sftp server for `sftp -D`: it runs
// OpenSSH's sftp-server and logs both streams, in order, to the file its
// value names (frames of direction byte, length, bytes).
const teeEnv = "SFTPINSPECT_TEE"

const sftpServer = "/usr/lib/openssh/sftp-server"

func TestMain(m *testing.M) {
	if path := os.Getenv(teeEnv); path != "" {
		os.Exit(tee(path))
	}
	os.Exit(m.Run())
}

func tee(logPath string) int {
	logf, err := os.Create(logPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer logf.Close()
	srv := exec.Command(sftpServer)
	srv.Stderr = os.Stderr
	in, _ := srv.StdinPipe()
	out, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var mu sync.Mutex
	logFrame := func(dir byte, b []byte) {
		mu.Lock()
		defer mu.Unlock()
		var hdr [5]byte
		hdr[0] = dir
		binary.BigEndian.PutUint32(hdr[1:], uint32(len(b)))
		logf.Write(hdr[:])
		logf.Write(b)
	}
	pump := func(dst io.Writer, src io.Reader, dir byte, done func()) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				logFrame(dir, buf[:n])
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		done()
	}
	go pump(in, os.Stdin, 'c', func() { in.Close() })
	pump(os.Stdout, out, 's', func() {})
	_ = srv.Wait()
	return 0
}

// frame is one read of the session, as the proxy would relay it.
type frame struct {
	client bool
	data   []byte
}

// captureSFTP runs OpenSSH's sftp client against sftp-server with batch
// commands and returns the two streams in the order they flowed.
func captureSFTP(t *testing.T, batch string) []frame {
	t.Helper()
	for _, p := range []string{sftpServer, "/usr/bin/sftp"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("OpenSSH's %s is needed (apt-get install openssh-client openssh-sftp-server): %v", p, err)
		}
	}
	dir := t.TempDir()
	logPath := filepath.Join(dir, "streams")
	batchPath := filepath.Join(dir, "batch")
	if err := os.WriteFile(batchPath, []byte(batch), 0o600); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sftp", "-D", self, "-b", batchPath)
	cmd.Env = append(os.Environ(), teeEnv+"="+logPath)
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
		}
	}()
	out, err := cmd.CombinedOutput()
	close(done)
	if err != nil {
		t.Fatalf("sftp -b: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	var frames []frame
	for len(raw) >= 5 {
		n := binary.BigEndian.Uint32(raw[1:5])
		frames = append(frames, frame{client: raw[0] == 'c', data: raw[5 : 5+n]})
		raw = raw[5+n:]
	}
	return frames
}

// inspect feeds frames, each cut into random pieces, and returns the ops.
func inspect(frames []frame, rng *rand.Rand) []Op {
	var ops []Op
	in := New(func(op Op) { ops = append(ops, op) })
	cw, sw := in.ClientWriter(), in.ServerWriter()
	for _, f := range frames {
		w := sw
		if f.client {
			w = cw
		}
		b := f.data
		for len(b) > 0 {
			n := len(b)
			if rng != nil {
				n = 1 + rng.IntN(min(len(b), 70))
			}
			w.Write(b[:n])
			b = b[n:]
		}
	}
	in.Close()
	return ops
}

func TestInspectOpenSSHSession(t *testing.T) {
	dir := t.TempDir()
	local := filepath.Join(dir, "local.bin")
	payload := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320000 bytes, several packets
	if err := os.WriteFile(local, payload, 0o600); err != nil {
		t.Fatal(err)
	}
	remote := filepath.Join(dir, "remote")
	if err := os.Mkdir(remote, 0o700); err != nil {
		t.Fatal(err)
	}
	r := func(name string) string { return filepath.Join(remote, name) }
	batch := strings.Join([]string{
		"put " + local + " " + r("up.bin"),
		"get " + r("up.bin") + " " + filepath.Join(dir, "down.bin"),
		"rename " + r("up.bin") + " " + r("moved.bin"),
		"chmod 600 " + r("moved.bin"),
		"mkdir " + r("sub"),
		"symlink " + r("moved.bin") + " " + r("link"),
		"rmdir " + r("sub"),
		"rm " + r("link"),
		"rm " + r("moved.bin"),
		"-rm " + r("never-there"),
	}, "\n") + "\n"
	frames := captureSFTP(t, batch)
	whole := inspect(frames, nil)
	var lines []string
	for _, op := range whole {
		lines = append(lines, op.String())
	}
	t.Logf("ops:\n%s", strings.Join(lines, "\n"))

	find := func(op, path string) []Op {
		var out []Op
		for _, o := range whole {
			if o.Op == op && o.Path == path {
				out = append(out, o)
			}
		}
		return out
	}
	n := int64(len(payload))
	opens := find("open", r("up.bin"))
	if len(opens) != 2 || !strings.Contains(opens[0].Flags, "write") || !strings.Contains(opens[0].Flags, "creat") || opens[1].Flags != "read" {
		t.Errorf("opens of up.bin = %+v; want one for writing (put) and one for reading (get)", opens)
	}
	closes := find("close", r("up.bin"))
	if len(closes) != 2 || closes[0].Written != n || closes[0].Read != 0 || closes[1].Read != n || closes[1].Written != 0 {
		t.Errorf("closes of up.bin = %+v; want %d bytes written by put and %d read by get", closes, n, n)
	}
	// Contents are hashed as they stream past, not stored.
	if sum := sha256.Sum256(payload); len(closes) == 2 && (closes[0].WrittenSHA256 != hex.EncodeToString(sum[:]) || closes[1].ReadSHA256 != hex.EncodeToString(sum[:]) ||
		closes[0].ReadSHA256 != "" || closes[1].WrittenSHA256 != "") {
		t.Errorf("digests of up.bin: put %q/%q, get %q/%q; want %x for the data put and got", closes[0].WrittenSHA256, closes[0].ReadSHA256, closes[1].ReadSHA256, closes[1].WrittenSHA256, sum)
	}
	for _, want := range []Op{
		{Op: "rename", Path: r("up.bin"), Target: r("moved.bin"), Status: "ok"},
		{Op: "mkdir", Path: r("sub"), Status: "ok"},
		{Op: "symlink", Path: r("link"), Target: r("moved.bin"), Status: "ok"},
		{Op: "rmdir", Path: r("sub"), Status: "ok"},
		{Op: "remove", Path: r("link"), Status: "ok"},
		{Op: "remove", Path: r("moved.bin"), Status: "ok"},
		{Op: "remove", Path: r("never-there"), Status: "no_such_file"},
	} {
		if got := find(want.Op, want.Path); len(got) != 1 || got[0] != want {
			t.Errorf("%s %s: got %+v, want %+v", want.Op, want.Path, got, want)
		}
	}
	if got := find("setstat", r("moved.bin")); len(got) != 1 || got[0].Status != "ok" {
		t.Errorf("chmod: setstat ops %+v", got)
	}
	// The same ops however the streams are cut.
	for seed := range uint64(5) {
		if got := inspect(frames, rand.New(rand.NewPCG(seed, 1))); !reflect.DeepEqual(got, whole) {
			t.Fatalf("cut at random (seed %d) the streams give other ops:\n%v\nwant\n%v", seed, got, whole)
		}
	}
}

// packet builds an SFTP packet.
func packet(typ byte, fields ...any) []byte {
	var b []byte
	b = append(b, typ)
	for _, f := range fields {
		switch v := f.(type) {
		case uint32:
			b = binary.BigEndian.AppendUint32(b, v)
		case uint64:
			b = binary.BigEndian.AppendUint64(b, v)
		case string:
			b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
			b = append(b, v...)
		}
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)
}

func TestInspectRejectsHugePacketWithoutBuffering(t *testing.T) {
	var ops []Op
	in := New(func(op Op) { ops = append(ops, op) })
	cw := in.ClientWriter()
	cw.Write(packet(fxpOpen, uint32(1), "/etc/shadow", uint32(1), uint32(0)))
	cw.Write([]byte{0x7f, 0xff, 0xff, 0xff}) // 2 GiB announced
	cw.Write(bytes.Repeat([]byte{'A'}, 1<<20))
	if len(ops) != 1 || ops[0].Op != "malformed" || !strings.Contains(ops[0].Status, "outside") {
		t.Fatalf("ops = %+v; want one malformed", ops)
	}
	if cap(in.client.keep) > keepMax {
		t.Errorf("the framer kept %d bytes; at most %d", cap(in.client.keep), keepMax)
	}
	in.Close()
	if len(ops) != 2 || ops[1].Op != "open" || ops[1].Status != "no_reply" {
		t.Errorf("after close: %+v; want the open without reply reported", ops)
	}
}

func TestInspectBoundsPendingAndStrings(t *testing.T) {
	var ops []Op
	in := New(func(op Op) { ops = append(ops, op) })
	cw := in.ClientWriter()
	for i := range uint32(maxPending + 100) {
		cw.Write(packet(fxpRemove, i, "/x"))
	}
	if len(in.pending) != maxPending || in.overflow != 100 {
		t.Errorf("pending %d, overflow %d; want %d and 100", len(in.pending), in.overflow, maxPending)
	}
	long := strings.Repeat("\x1b[2J", 2000)
	cw.Write(packet(fxpMkdir, uint32(1<<30), long, uint32(0)))
	if len(ops) != 101 || ops[0].Status != "reply_not_tracked" {
		t.Fatalf("%d ops; the 100 requests past the pending bound and the mkdir must still be reported", len(ops))
	}
	last := ops[100]
	if last.Op != "mkdir" || last.Status != "reply_not_tracked" {
		t.Errorf("last op %s %s, want mkdir reply_not_tracked", last.Op, last.Status)
	}
	if len(last.Path) > maxString+10 || strings.ContainsAny(last.Path, "\x1b") {
		t.Errorf("a hostile path reached the op unbounded: %d bytes %q...", len(last.Path), last.Path[:20])
	}
}

func FuzzInspect(f *testing.F) {
	var c, s []byte
	c = append(c, packet(fxpInit, uint32(3))...)
	c = append(c, packet(fxpOpen, uint32(1), "/tmp/a", uint32(0x1a), uint32(0))...)
	c = append(c, packet(fxpWrite, uint32(2), "h1", uint64(0), "hello")...)
	c = append(c, packet(fxpRead, uint32(3), "h1", uint64(0), uint32(100))...)
	c = append(c, packet(fxpClose, uint32(4), "h1")...)
	c = append(c, packet(fxpRename, uint32(5), "/tmp/a", "/tmp/b")...)
	c = append(c, packet(fxpExtended, uint32(6), "posix-rename@openssh.com", "/tmp/b", "/tmp/c")...)
	s = append(s, packet(fxpVersion, uint32(3))...)
	s = append(s, packet(fxpHandle, uint32(1), "h1")...)
	s = append(s, packet(fxpStatus, uint32(2), uint32(0), "", "")...)
	s = append(s, packet(fxpData, uint32(3), "hello")...)
	s = append(s, packet(fxpStatus, uint32(5), uint32(3), "denied", "")...)
	f.Add(c, s, uint8(7))
	f.Add([]byte{0, 0, 0, 1, 200}, []byte{0, 4, 0, 1}, uint8(1))
	f.Fuzz(func(t *testing.T, c, s []byte, cut uint8) {
		run := func(step int) []Op {
			var ops []Op
			in := New(func(op Op) { ops = append(ops, op) })
			for _, x := range []struct {
				w *StreamWriter
				b []byte
			}{{in.ClientWriter(), c}, {in.ServerWriter(), s}} {
				b := x.b
				for len(b) > 0 {
					n := min(step, len(b))
					x.w.Write(b[:n])
					b = b[n:]
				}
			}
			in.Close()
			for _, op := range ops {
				if len(op.Path) > maxString+20 || len(op.Target) > maxString+20 {
					t.Fatalf("unbounded path in %+v", op)
				}
			}
			sort.Slice(ops, func(i, j int) bool { return ops[i].String() < ops[j].String() })
			return ops
		}
		whole := run(1 << 30)
		if got := run(int(cut%64) + 1); !reflect.DeepEqual(got, whole) {
			t.Fatalf("cutting the streams every %d bytes changed the ops:\n%v\nwant\n%v", cut%64+1, got, whole)
		}
	})
}

// TestInspectLongPathKeepsItsEndAndCleanPath: a path padded to past the
// bound keeps the file it names, and the cleaned path is reported.
func TestInspectLongPathKeepsItsEndAndCleanPath(t *testing.T) {
	var ops []Op
	in := New(func(op Op) { ops = append(ops, op) })
	cw := in.ClientWriter()
	long := "/" + strings.Repeat("./", 600) + "etc/passwd"
	cw.Write(packet(fxpRemove, uint32(7), long))
	cw.Write(packet(fxpRename, uint32(8), "/tmp/../etc/shadow", "/tmp/x"))
	in.Close()
	if len(ops) != 2 {
		t.Fatalf("ops = %+v; want two", ops)
	}
	if p := ops[0].Path; len(p) > maxString || !strings.HasSuffix(p, "/etc/passwd") || !strings.Contains(p, "bytes cut") {
		t.Errorf("path recorded as %q (%d bytes); want head, cut note and /etc/passwd", p, len(p))
	}
	if ops[0].PathClean != "/etc/passwd" {
		t.Errorf("path_clean %q; want /etc/passwd", ops[0].PathClean)
	}
	if ops[1].PathClean != "/etc/shadow" || ops[1].TargetClean != "" {
		t.Errorf("rename clean paths %q, %q; want /etc/shadow and none", ops[1].PathClean, ops[1].TargetClean)
	}
}

// TestInspectHashesOnlyInOrderData: writes that skip about give
// "non-sequential" rather than a digest of something that is not the file.
func TestInspectHashesOnlyInOrderData(t *testing.T) {
	run := func(offsets ...uint64) Op {
		var ops []Op
		in := New(func(op Op) { ops = append(ops, op) })
		cw, sw := in.ClientWriter(), in.ServerWriter()
		cw.Write(packet(fxpOpen, uint32(1), "/f", uint32(0x1a), uint32(0)))
		sw.Write(packet(fxpHandle, uint32(1), "H"))
		for i, off := range offsets {
			cw.Write(packet(fxpWrite, uint32(10+i), "H", off, "abcd"))
		}
		cw.Write(packet(fxpClose, uint32(99), "H"))
		in.Close()
		for _, op := range ops {
			if op.Op == "close" {
				return op
			}
		}
		t.Fatalf("no close in %+v", ops)
		return Op{}
	}
	sum := sha256.Sum256([]byte("abcdabcdabcd"))
	if got := run(0, 4, 8); got.WrittenSHA256 != hex.EncodeToString(sum[:]) || got.Written != 12 {
		t.Errorf("in-order writes: %+v; want sha256 %x", got, sum)
	}
	for _, offs := range [][]uint64{{4, 0, 8}, {0, 4, 4}, {8}} {
		if got := run(offs...); got.WrittenSHA256 != NonSequential {
			t.Errorf("writes at %v: sha256 %q, want %q", offs, got.WrittenSHA256, NonSequential)
		}
	}
}
