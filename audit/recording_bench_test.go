package audit

import (
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// topScreen renders second sec of a top-like full-screen redraw: 132x43,
// a header whose clock and load change every second and 36 process rows
// whose CPU, memory and time columns change.
func topScreen(sec int, rng *mrand.Rand) []byte {
	var b strings.Builder
	b.WriteString("\x1b[H\x1b[2J")
	fmt.Fprintf(&b, "top - %02d:%02d:%02d up 12 days,  3:04,  2 users,  load average: %.2f, %.2f, %.2f\x1b[K\r\n", 12+sec/3600, sec/60%60, sec%60, rng.Float64()*4, rng.Float64()*3, rng.Float64()*2)
	fmt.Fprintf(&b, "Tasks: %3d total,   %d running, %3d sleeping,   0 stopped,   0 zombie\x1b[K\r\n", 180+rng.IntN(10), 1+rng.IntN(3), 170+rng.IntN(10))
	fmt.Fprintf(&b, "%%Cpu(s): %4.1f us, %4.1f sy,  0.0 ni, %4.1f id,  0.1 wa,  0.0 hi,  0.1 si,  0.0 st\x1b[K\r\n", rng.Float64()*20, rng.Float64()*5, 75+rng.Float64()*20)
	fmt.Fprintf(&b, "MiB Mem :  24034.1 total,  %7.1f free,   %7.1f used,  %7.1f buff/cache\x1b[K\r\n", 9000+rng.Float64()*100, 4000+rng.Float64()*100, 11000+rng.Float64()*10)
	b.WriteString("MiB Swap:      0.0 total,      0.0 free,      0.0 used.  19500.3 avail Mem\x1b[K\r\n\x1b[K\r\n")
	b.WriteString("\x1b[7m    PID USER      PR  NI    VIRT    RES    SHR S  %CPU  %MEM     TIME+ COMMAND                                    \x1b[m\x1b[K\r\n")
	names := []string{"postgres", "nginx", "java", "python3", "sshd", "systemd", "node", "redis-server", "containerd", "kubelet", "bash", "top"}
	for i := 0; i < 36; i++ {
		fmt.Fprintf(&b, "%7d %-9s %3d %3d %7d %6d %6d %c %5.1f %5.1f %6d:%02d.%02d %-40s\x1b[K\r\n",
			1000+i*37, []string{"root", "www-data", "postgres", "alice"}[i%4], 20, 0, 100000+i*9000, 20000+rng.IntN(5000), 8000+i*10,
			"SR"[min(i, 1)], rng.Float64()*10*float64(36-i)/36, float64(i%7)+rng.Float64(), (sec+i*100)/60, (sec+i)%60, rng.IntN(100), names[i%len(names)])
	}
	return []byte(b.String())
}

// TestRecordingStorageFigures measures what recordings cost on disk and
// in time, and holds them to budgets:
//
//   - an hour of a top-like full-screen redraw every second, committed a
//     chunk per second as a live session would be;
//   - a 1 GiB scp-like transfer, whose contents the proxy does not record
//     (only its command and the file operations), and the same 1 GiB if
//     the proxy did write it (capped by max_bytes_per_session);
//   - the time a keystroke Write takes (no fsync) and the commit of many
//     sessions' chunks at once (group commit).
func TestRecordingStorageFigures(t *testing.T) {
	if testing.Short() {
		t.Skip("measures an hour of virtual session and 1 GiB: not in -short")
	}
	ctx := context.Background()
	s, path := newStore(t, Options{})
	rng := mrand.New(mrand.NewPCG(1, 2))

	// top, one hour.
	rec, err := s.StartRecording(ctx, "top")
	if err != nil {
		t.Fatal(err)
	}
	_ = rec.Write(0, KindResize, 0, []byte("132x43"))
	var raw int64
	start := time.Now()
	for sec := 0; sec < 3600; sec++ {
		screen := topScreen(sec, rng)
		raw += int64(len(screen))
		if err := rec.Write(0, KindOutput, time.Duration(sec)*time.Second, screen); err != nil {
			t.Fatal(err)
		}
		if err := rec.flush(); err != nil { // the one-second flush of a live session
			t.Fatal(err)
		}
	}
	_, stored, err := rec.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	st, _ := os.Stat(path)
	var used int64 // pages in use, not the file's preallocated size
	_ = s.View(func(tx *bbolt.Tx) error { used = tx.Size(); return nil })
	t.Logf("top-like, 1 h (3600 redraws of 132x43, one chunk a second): %.1f MiB of output -> %.2f MiB stored (ratio %.1fx, %.0f bytes/chunk); audit.db %.2f MiB in use (file %.0f MiB preallocated); 3600 commits took %s (%.1f ms each)",
		float64(raw)/(1<<20), float64(stored)/(1<<20), float64(raw)/float64(stored), float64(stored)/3600, float64(used)/(1<<20), float64(st.Size())/(1<<20), elapsed.Round(time.Millisecond), float64(elapsed.Milliseconds())/3600)
	if stored > 8<<20 {
		t.Errorf("an hour of top stores %d bytes; the budget is 8 MiB", stored)
	}

	// scp-like: 1 GiB of incompressible data. The proxy records the
	// command and the file operations, not the contents.
	rec, err = s.StartRecording(ctx, "scp")
	if err != nil {
		t.Fatal(err)
	}
	_ = rec.Write(0, KindExec, 0, []byte("exec: scp -t /srv/backup/"))
	_ = rec.Write(0, KindExec, time.Second, []byte(`scp upload "db.dump" mode=0644 size=1073741824`))
	_ = rec.Write(0, KindExec, 10*time.Second, []byte("exit-status 0"))
	_, scpStored, err := rec.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("scp-like, 1 GiB, contents not recorded: %d bytes stored", scpStored)
	if scpStored > 4<<10 {
		t.Errorf("a 1 GiB transfer stores %d bytes; want only metadata", scpStored)
	}
	// The same GiB written into a recording: stored up to the limit.
	rec, err = s.StartRecording(ctx, "scp-contents")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 32<<10)
	start = time.Now()
	for i := 0; i < (1<<30)/len(buf); i++ {
		rand.Read(buf)
		if err := rec.Write(0, KindOutput, time.Duration(i)*time.Millisecond, buf); err != nil {
			t.Fatal(err)
		}
	}
	_, gibStored, err := rec.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("1 GiB of incompressible data written into a recording: %.1f MiB stored (max_bytes_per_session 64 MiB), in %s", float64(gibStored)/(1<<20), time.Since(start).Round(time.Millisecond))
	if gibStored > DefaultRecordingMaxBytes+DefaultRecordingMaxBytes/50 {
		t.Errorf("stored %d bytes past the 64 MiB limit", gibStored)
	}

	// A keystroke: buffered, no fsync.
	rec, err = s.StartRecording(ctx, "keys")
	if err != nil {
		t.Fatal(err)
	}
	const keys = 20000
	start = time.Now()
	for i := 0; i < keys; i++ {
		if err := rec.Write(0, KindInput, time.Duration(i)*time.Millisecond, []byte{'a' + byte(i%26)}); err != nil {
			t.Fatal(err)
		}
	}
	perKey := time.Since(start) / keys
	_, _, _ = rec.Close(ctx)
	t.Logf("a keystroke Write: %s (buffered; a chunk commit about once a second)", perKey)
	if perKey > 100*time.Microsecond {
		t.Errorf("a keystroke Write takes %s; it must not wait for the disk", perKey)
	}

	// 1000 sessions flushing their second's chunk at once share commits.
	const sessions = 1000
	recs := make([]*Recording, sessions)
	for i := range recs {
		if recs[i], err = s.StartRecording(ctx, fmt.Sprintf("many-%d", i)); err != nil {
			t.Fatal(err)
		}
		_ = recs[i].Write(0, KindOutput, 0, []byte("a line of output from one of many sessions\r\n"))
	}
	start = time.Now()
	var wg sync.WaitGroup
	for _, r := range recs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.flush(); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d sessions' one-second chunks committed in %s (group commit)", sessions, time.Since(start).Round(time.Millisecond))
	for _, r := range recs {
		_, _, _ = r.Close(ctx)
	}
}

// BenchmarkRecordingWrite is one terminal-sized Write (no fsync).
func BenchmarkRecordingWrite(b *testing.B) {
	s, _ := newStore(b, Options{})
	rec, err := s.StartRecording(context.Background(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	data := []byte("some output of a command line, 64 bytes long, more or less...\r\n")
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := rec.Write(0, KindOutput, time.Duration(i)*time.Microsecond, data); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	_, _, _ = rec.Close(context.Background())
}

// TestRecordingCheckpointCost measures a bulk (incompressible, 64 MiB)
// recording on a real, fsynced bbolt file with the checkpoints into the
// chain and without them, and checks the checkpoints stay bounded.
func TestRecordingCheckpointCost(t *testing.T) {
	const total = 64 << 20
	data := make([]byte, total)
	rand.Read(data)
	run := func(name string, checkpoints bool) time.Duration {
		s, _ := newStore(t, Options{})
		if !checkpoints {
			s.recs.cpChunks, s.recs.cpEvery = 1<<62, time.Duration(1<<62)
		}
		ctx := context.Background()
		start := time.Now()
		rec, err := s.StartRecording(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < total; off += 32 << 10 {
			if err := rec.Write(0, KindOutput, time.Since(start), data[off:off+32<<10]); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := rec.Close(ctx); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		n := 0
		if err := s.Iterate(ctx, Filter{}, func(ev Event) error {
			if ev.Type == TypeSessionCheckpoint {
				n++
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		_, chunks, _ := rec.Committed()
		if max := int(chunks/checkpointChunks) + int(took/checkpointEvery) + 1; checkpoints && (n == 0 || n > max) {
			t.Errorf("%d checkpoints for %d chunks in %s; want 1 to %d", n, chunks, took, max)
		}
		t.Logf("%s: 64 MiB in %d chunks, %d checkpoint events, %s (%.0f MiB/s)", name, chunks, n, took, float64(total>>20)/took.Seconds())
		return took
	}
	without := run("without-checkpoints", false)
	with := run("with-checkpoints", true)
	t.Logf("checkpoint cost: %+.1f%%", 100*(with.Seconds()-without.Seconds())/without.Seconds())
}
