package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ptySession is a terminal session whose output splits UTF-8 runes and
// escape sequences across writes, with an exec channel beside it.
func ptySession() ([]written, string) {
	out := []string{
		"\x1b[?1049h\x1b[H\x1b[2J", "top - 12:00:01 up 3 days\r\n", "caf\xc3", "\xa9 \xe2\x82", "\xac 5\r\n",
		"\x1b[1;3", "2mPID USER\x1b[0m\r\n", "  1 root\r\n", "\x1b]0;title\x07done\r\n",
	}
	ws := []written{
		{0, KindExec, 0, "shell"},
		{0, KindResize, 0, "132x43"},
		{2, KindExec, 0, "exec: uptime"},
		{2, KindOutput, 0, "NOT ON THE TERMINAL\n"},
	}
	for i, o := range out {
		ws = append(ws, written{0, KindOutput, time.Duration(i) * 700 * time.Millisecond, o})
		if i == 3 {
			ws = append(ws, written{0, KindInput, time.Duration(i)*700*time.Millisecond + time.Millisecond, "q"})
			ws = append(ws, written{0, KindResize, time.Duration(i) * 700 * time.Millisecond, "100x30"})
		}
	}
	ws = append(ws, written{0, KindOutput, 30 * time.Second, "after a long pause\r\n"})
	return ws, strings.Join(out, "") + "after a long pause\r\n"
}

func TestPlayAsciicastAcceptedByAsciinema(t *testing.T) {
	if _, err := exec.LookPath("asciinema"); err != nil {
		t.Fatalf("asciinema is needed (apt-get install asciinema): %v", err)
	}
	s, _ := newStore(t, Options{})
	ws, screen := ptySession()
	record(t, s, "pty", ws)
	var cast bytes.Buffer
	if err := s.Play(context.Background(), &cast, "pty", PlayOptions{Format: PlayAsciicast, Channel: AutoChannel, IdleLimit: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(cast.Bytes()))
	sc.Scan()
	var hdr castHeader
	if err := json.Unmarshal(sc.Bytes(), &hdr); err != nil || hdr.Version != 2 || hdr.Width != 132 || hdr.Height != 43 || hdr.Timestamp == 0 || hdr.IdleTimeLimit != 2 {
		t.Fatalf("header %s (%v); want version 2, 132x43, a timestamp and idle_time_limit 2", sc.Bytes(), err)
	}
	var last float64
	codes := map[string]int{}
	for sc.Scan() {
		var ev []any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil || len(ev) != 3 {
			t.Fatalf("event line %s: %v", sc.Bytes(), err)
		}
		at := ev[0].(float64)
		if at < last || at-last > 2.000001 {
			t.Errorf("event at %.6f after %.6f: times must increase by at most the idle limit", at, last)
		}
		last = at
		codes[ev[1].(string)]++
	}
	if codes["i"] != 1 || codes["r"] != 2 || codes["m"] != 1 {
		t.Errorf("event codes %v; want 1 input, 2 resizes and the shell marker (the exec channel's is not played)", codes)
	}
	path := filepath.Join(t.TempDir(), "pty.cast")
	if err := os.WriteFile(path, cast.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	// asciinema cat opens /dev/tty, so it runs under script(1)'s pty with
	// its output sent to a file.
	outPath := filepath.Join(t.TempDir(), "out")
	if out, err := exec.Command("script", "-q", "-e", "-c", "asciinema cat '"+path+"' > '"+outPath+"'", "/dev/null").CombinedOutput(); err != nil {
		t.Fatalf("asciinema cat: %v: %s", err, out)
	}
	got, err := os.ReadFile(outPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != screen {
		t.Errorf("asciinema cat printed\n%q\nwant the session's output\n%q", got, screen)
	}
	// And asciinema play replays it to the end.
	playOut := filepath.Join(t.TempDir(), "played")
	if out, err := exec.Command("script", "-q", "-e", "-c", "asciinema play -s 20 -i 0.05 '"+path+"' > '"+playOut+"'", "/dev/null").CombinedOutput(); err != nil {
		t.Fatalf("asciinema play: %v: %s", err, out)
	}
	if played, _ := os.ReadFile(playOut); !bytes.Contains(played, []byte("after a long pause")) {
		t.Errorf("asciinema play did not reach the end: %q", played)
	}
}

func TestPlayText(t *testing.T) {
	s, _ := newStore(t, Options{})
	ws, _ := ptySession()
	ws = append(ws, written{2, KindStderr, time.Second, "uptime: \x1b[31mwarning\x1b[0m\n"})
	record(t, s, "pty", ws)
	var out, errOut bytes.Buffer
	if err := s.Play(context.Background(), &out, "pty", PlayOptions{Format: PlayText, Channel: AutoChannel, Stderr: &errOut}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"top - 12:00:01 up 3 days\n", "café € 5\n", "PID USER\n", "  1 root\n", "done\n", "# exec (channel 2): exec: uptime", "NOT ON THE TERMINAL\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("transcript lacks %q:\n%s", want, out.String())
		}
	}
	if strings.ContainsAny(out.String(), "\x1b\r\a") || strings.Contains(out.String(), "title") {
		t.Errorf("transcript keeps control sequences: %q", out.String())
	}
	if errOut.String() != "uptime: warning\n" || strings.Contains(out.String(), "warning") {
		t.Errorf("stderr = %q, stdout has it: %v; want stderr apart from stdout", errOut.String(), strings.Contains(out.String(), "warning"))
	}
}

func TestPlayTerminalTiming(t *testing.T) {
	s, _ := newStore(t, Options{})
	ws, screen := ptySession()
	record(t, s, "pty", ws)
	var slept []time.Duration
	var out bytes.Buffer
	err := s.Play(context.Background(), &out, "pty", PlayOptions{Channel: AutoChannel, Speed: 2, IdleLimit: time.Second, Sleep: func(_ context.Context, d time.Duration) error {
		slept = append(slept, d)
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != screen {
		t.Errorf("terminal play wrote %q, want %q", out.String(), screen)
	}
	var total time.Duration
	for _, d := range slept {
		if d > 500*time.Millisecond {
			t.Errorf("paused %s; the idle limit 1s at speed 2 caps pauses at 500ms", d)
		}
		total += d
	}
	// 8 gaps of 700ms and one of 30s capped at 1s, all halved.
	if want := (8*700*time.Millisecond + time.Second) / 2; total != want {
		t.Errorf("paused %s in all, want %s", total, want)
	}
}

func TestStripperSplitsAnywhere(t *testing.T) {
	in := "a\x1b[1;31mb\x1b]0;t\x1b\\c\r\nd\re\x1b(Bf\x08\n"
	want := "abc\nd\nef\n"
	for cut := 0; cut <= len(in); cut++ {
		var st stripper
		got := string(st.strip([]byte(in[:cut]))) + string(st.strip([]byte(in[cut:])))
		if got != want {
			t.Errorf("cut at %d: %q, want %q", cut, got, want)
		}
	}
}

func FuzzStrip(f *testing.F) {
	f.Add([]byte("a\x1b[1;31mb\x1b]0;t\x07c\r\nd\re\x1b(Bf\x08\n"), uint8(3))
	f.Add([]byte("\x1bP1;2|data\x1b\\tail\x1b"), uint8(1))
	f.Fuzz(func(t *testing.T, b []byte, cut uint8) {
		var whole stripper
		want := whole.strip(b)
		if bytes.IndexByte(want, 0x1b) >= 0 || bytes.IndexByte(want, '\r') >= 0 {
			t.Fatalf("control bytes survive: %q", want)
		}
		var split stripper
		n := min(int(cut), len(b))
		got := append(split.strip(b[:n]), split.strip(b[n:])...)
		if !bytes.Equal(got, want) {
			t.Fatalf("cut at %d: %q, whole: %q", n, got, want)
		}
	})
}

// TestTextTranscriptLinesAndEscapes: a tty's CR CR LF is one line break,
// and marker lines lose whole escape sequences, not just their ESC.
func TestTextTranscriptLinesAndEscapes(t *testing.T) {
	var st stripper
	if got := string(st.strip([]byte("$ ls\r\r\nfile\r\n$ "))); got != "$ ls\nfile\n$ " {
		t.Errorf("strip(CR CR LF) = %q, want no blank line", got)
	}
	if got := printable([]byte("exec: ls \x1b[31mred\x1b[0m\x1b]0;title\x07!")); got != "exec: ls red!" {
		t.Errorf("printable = %q, want the escape sequences gone", got)
	}
}

// TestPlayAsciicastKeepsClampedSize: the largest size sshd allows (what
// the gateway records an absurd pty request as) is the cast's size.
func TestPlayAsciicastKeepsClampedSize(t *testing.T) {
	s, _ := newStore(t, Options{})
	record(t, s, "big", []written{{0, KindResize, 0, "65520x65520"}, {0, KindOutput, time.Millisecond, "x"}})
	var cast bytes.Buffer
	if err := s.Play(context.Background(), &cast, "big", PlayOptions{Format: PlayAsciicast, Channel: AutoChannel}); err != nil {
		t.Fatal(err)
	}
	var hdr castHeader
	line, _, _ := bytes.Cut(cast.Bytes(), []byte("\n"))
	if err := json.Unmarshal(line, &hdr); err != nil || hdr.Width != MaxTermSize || hdr.Height != MaxTermSize {
		t.Errorf("header %s (%v); want %dx%d", line, err, MaxTermSize, MaxTermSize)
	}
}
