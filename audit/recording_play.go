package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// PlayFormat is how Play renders a recording.
type PlayFormat string

// Play formats.
const (
	// PlayTerminal writes the output of one channel as it was shown, with
	// its timing (scaled by Speed, pauses capped by IdleLimit).
	PlayTerminal PlayFormat = "terminal"
	// PlayAsciicast writes an asciicast v2 file of one channel, which
	// `asciinema play` replays.
	PlayAsciicast PlayFormat = "asciicast"
	// PlayText writes the transcript of every channel with control
	// sequences stripped, for grep: output to the writer, stderr of exec
	// sessions to PlayOptions.Stderr, commands as "# exec:" lines and
	// recorded input as "# input:" lines.
	PlayText PlayFormat = "text"
)

// ParsePlayFormat parses a --format value.
func ParsePlayFormat(s string) (PlayFormat, error) {
	switch f := PlayFormat(s); f {
	case PlayTerminal, PlayAsciicast, PlayText:
		return f, nil
	case "cast":
		return PlayAsciicast, nil
	}
	return "", fmt.Errorf("audit: unknown replay format %q: use terminal, asciicast or text", s)
}

// AutoChannel makes Play pick the channel: the first with a terminal
// (a resize entry), else the first with output.
const AutoChannel = -1

// PlayOptions configure Play.
type PlayOptions struct {
	// Format is the rendering (default PlayTerminal).
	Format PlayFormat
	// Channel is the SSH channel to play, or AutoChannel. PlayText
	// renders every channel unless one is named.
	Channel int
	// Speed divides the pauses of PlayTerminal (default 1).
	Speed float64
	// IdleLimit, when positive, caps each pause (PlayTerminal and
	// PlayAsciicast, whose header also carries it).
	IdleLimit time.Duration
	// Stderr receives the stderr entries of PlayText; nil writes them
	// with the output.
	Stderr io.Writer
	// Follow keeps reading an open recording until it is closed (audit
	// watch); the stored part is written without pauses.
	Follow bool
	// Sleep waits for d or until ctx ends; nil uses a timer. Tests
	// replace it.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Play renders session's recording to w.
func (s *Store) Play(ctx context.Context, w io.Writer, session string, opts PlayOptions) error {
	if opts.Format == "" {
		opts.Format = PlayTerminal
	}
	if opts.Speed <= 0 {
		opts.Speed = 1
	}
	if opts.Sleep == nil {
		opts.Sleep = sleepCtx
	}
	info, err := s.RecordingInfo(session)
	if err != nil {
		return err
	}
	read := s.ReadRecording
	if opts.Follow {
		read = s.FollowRecording
	}
	ch := opts.Channel
	width, height := 80, 24
	if opts.Format != PlayText || ch != AutoChannel {
		// A first pass finds the channel and its first terminal size,
		// which the asciicast header needs. A followed recording may not
		// have them yet: the first channel to show output is taken.
		if !opts.Follow {
			c, wd, ht, err := s.pickChannel(ctx, session, ch)
			if err != nil {
				return err
			}
			ch, width, height = c, wd, ht
		}
	}
	switch opts.Format {
	case PlayAsciicast:
		return s.playCast(ctx, w, info, read, ch, width, height, opts)
	case PlayText:
		return playText(ctx, w, session, read, ch, opts)
	case PlayTerminal:
		return playTerminal(ctx, w, session, read, ch, opts)
	}
	return fmt.Errorf("audit: unknown replay format %q: use terminal, asciicast or text", opts.Format)
}

// pickChannel returns the channel to play (want, unless AutoChannel) and
// its first terminal size (80x24 when it never had one).
func (s *Store) pickChannel(ctx context.Context, session string, want int) (int, int, int, error) {
	firstOut, firstPty := -1, -1
	width, height := 0, 0
	sizes := map[uint32][2]int{}
	err := s.ReadRecording(ctx, session, func(e RecordingEntry) error {
		switch e.Kind {
		case KindResize:
			if _, ok := sizes[e.Channel]; !ok {
				if c, r, ok := parseSize(string(e.Data)); ok {
					sizes[e.Channel] = [2]int{c, r}
				}
			}
			if firstPty < 0 {
				firstPty = int(e.Channel)
			}
		case KindOutput, KindStderr:
			if firstOut < 0 {
				firstOut = int(e.Channel)
			}
		}
		return nil
	})
	if err != nil {
		return 0, 0, 0, err
	}
	ch := want
	switch {
	case ch != AutoChannel:
	case firstPty >= 0:
		ch = firstPty
	case firstOut >= 0:
		ch = firstOut
	default:
		ch = 0
	}
	width, height = 80, 24
	if sz, ok := sizes[uint32(ch)]; ok {
		width, height = sz[0], sz[1]
	}
	return ch, width, height, nil
}

// MaxTermSize is the largest terminal width or height kept: what sshd
// clamps a pty size to. The gateway records larger requests as this.
const MaxTermSize = 65520

// parseSize parses "COLSxROWS".
func parseSize(s string) (int, int, bool) {
	c, r, ok := strings.Cut(s, "x")
	if !ok {
		return 0, 0, false
	}
	cols, err1 := strconv.Atoi(c)
	rows, err2 := strconv.Atoi(r)
	if err1 != nil || err2 != nil || cols <= 0 || rows <= 0 || cols > MaxTermSize || rows > MaxTermSize {
		return 0, 0, false
	}
	return cols, rows, true
}

// castHeader is the first line of an asciicast v2 file.
type castHeader struct {
	Version       int     `json:"version"`
	Width         int     `json:"width"`
	Height        int     `json:"height"`
	Timestamp     int64   `json:"timestamp,omitempty"`
	IdleTimeLimit float64 `json:"idle_time_limit,omitempty"`
	Title         string  `json:"title,omitempty"`
}

// clock turns entry times into replay times with pauses capped.
type clock struct {
	limit     time.Duration
	last, out time.Duration
}

func (c *clock) at(t time.Duration) time.Duration {
	gap := t - c.last
	if gap < 0 {
		gap = 0
	}
	if c.limit > 0 && gap > c.limit {
		gap = c.limit
	}
	c.last = t
	c.out += gap
	return c.out
}

type readFunc func(ctx context.Context, session string, fn func(RecordingEntry) error) error

func (s *Store) playCast(ctx context.Context, w io.Writer, info RecordingInfo, read readFunc, ch, width, height int, opts PlayOptions) error {
	bw := bufio.NewWriter(w)
	hdr := castHeader{Version: 2, Width: width, Height: height, Timestamp: info.Start.Unix(), Title: "bastion session " + info.Session}
	if opts.IdleLimit > 0 {
		hdr.IdleTimeLimit = opts.IdleLimit.Seconds()
	}
	b, err := json.Marshal(hdr)
	if err != nil {
		return err
	}
	bw.Write(b)
	bw.WriteByte('\n')
	clk := clock{limit: opts.IdleLimit}
	var out utf8Stream
	emit := func(t time.Duration, code, data string) error {
		line, err := json.Marshal([]any{json.Number(strconv.FormatFloat(t.Seconds(), 'f', 6, 64)), code, data})
		if err != nil {
			return err
		}
		bw.Write(line)
		return bw.WriteByte('\n')
	}
	err = read(ctx, info.Session, func(e RecordingEntry) error {
		if ch == AutoChannel && (e.Kind == KindOutput || e.Kind == KindStderr || e.Kind == KindResize) {
			ch = int(e.Channel) // a followed recording: the first to show anything
		}
		if e.Kind != KindMarker && int(e.Channel) != ch {
			return nil
		}
		t := clk.at(e.At)
		var err error
		switch e.Kind {
		case KindOutput, KindStderr:
			if s := out.text(e.Data); s != "" {
				err = emit(t, "o", s)
			}
		case KindInput:
			err = emit(t, "i", strings.ToValidUTF8(string(e.Data), "\uFFFD"))
		case KindResize:
			if c, r, ok := parseSize(string(e.Data)); ok {
				err = emit(t, "r", fmt.Sprintf("%dx%d", c, r))
			}
		case KindExec, KindMarker:
			err = emit(t, "m", strings.ToValidUTF8(string(e.Data), "\uFFFD"))
		}
		if err != nil {
			return err
		}
		if opts.Follow {
			return bw.Flush()
		}
		return nil
	})
	if rest := out.flush(); rest != "" && err == nil {
		err = emit(clk.out, "o", rest)
	}
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	return err
}

func playTerminal(ctx context.Context, w io.Writer, session string, read readFunc, ch int, opts PlayOptions) error {
	clk := clock{limit: opts.IdleLimit}
	var last time.Duration
	return read(ctx, session, func(e RecordingEntry) error {
		if e.Kind != KindOutput && e.Kind != KindStderr {
			return nil
		}
		if ch == AutoChannel {
			ch = int(e.Channel)
		}
		if int(e.Channel) != ch {
			return nil
		}
		t := clk.at(e.At)
		if !opts.Follow {
			if d := time.Duration(float64(t-last) / opts.Speed); d > 0 {
				if err := opts.Sleep(ctx, d); err != nil {
					return err
				}
			}
		}
		last = t
		_, err := w.Write(e.Data)
		return err
	})
}

func playText(ctx context.Context, w io.Writer, session string, read readFunc, ch int, opts PlayOptions) error {
	bw := bufio.NewWriter(w)
	ew := bw
	if opts.Stderr != nil {
		ew = bufio.NewWriter(opts.Stderr)
	}
	strip := map[uint64]*stripper{}
	stripOf := func(c uint32, kind string) *stripper {
		key := uint64(c) << 1
		if kind == KindStderr {
			key |= 1
		}
		if strip[key] == nil {
			strip[key] = &stripper{}
		}
		return strip[key]
	}
	in := map[uint32]*inputLines{}
	err := read(ctx, session, func(e RecordingEntry) error {
		if ch != AutoChannel && int(e.Channel) != ch && e.Kind != KindMarker {
			return nil
		}
		switch e.Kind {
		case KindInput:
			l := in[e.Channel]
			if l == nil {
				l = &inputLines{ch: e.Channel}
				in[e.Channel] = l
			}
			l.add(bw, e.Data)
		case KindOutput:
			bw.Write(stripOf(e.Channel, e.Kind).strip(e.Data))
		case KindStderr:
			ew.Write(stripOf(e.Channel, e.Kind).strip(e.Data))
		case KindExec:
			fmt.Fprintf(bw, "\n# exec (channel %d): %s\n", e.Channel, printable(e.Data))
		case KindMarker:
			fmt.Fprintf(bw, "\n# bastion: %s\n", printable(e.Data))
		}
		if opts.Follow {
			if err := ew.Flush(); err != nil {
				return err
			}
			return bw.Flush()
		}
		return nil
	})
	for _, l := range in {
		l.flush(bw)
	}
	if ferr := ew.Flush(); err == nil {
		err = ferr
	}
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	return err
}

// maxInputLine bounds a line of input held back for its end.
const maxInputLine = 4096

// inputLines renders one channel's recorded input as lines
// "# input (channel N): ..." so that grep finds the commands sent: a
// script piped to a shell arrives in pieces cut anywhere, keystrokes one
// at a time.
type inputLines struct {
	ch  uint32
	buf []byte
}

func (l *inputLines) add(w io.Writer, b []byte) {
	for len(b) > 0 {
		i := strings.IndexAny(string(b), "\r\n")
		if i < 0 {
			l.buf = append(l.buf, b...)
			if len(l.buf) >= maxInputLine {
				l.flush(w)
			}
			return
		}
		l.buf = append(l.buf, b[:i]...)
		l.flush(w)
		b = b[i+1:]
	}
}

func (l *inputLines) flush(w io.Writer) {
	if len(l.buf) == 0 {
		return
	}
	fmt.Fprintf(w, "\n# input (channel %d): %s\n", l.ch, printable(l.buf))
	l.buf = l.buf[:0]
}

// printable makes marker text one safe line: whole escape sequences
// removed (not just their ESC), then any other control a space.
func printable(b []byte) string {
	if bytes.IndexByte(b, 0x1b) >= 0 {
		var st stripper
		b = st.strip(b)
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(string(b), "\uFFFD"))
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// utf8Stream turns a byte stream split at arbitrary points into UTF-8
// text, carrying a rune cut at a boundary over to the next piece, as
// asciicast's string events need.
type utf8Stream struct{ pending []byte }

func (u *utf8Stream) text(b []byte) string {
	buf := append(u.pending, b...)
	u.pending = nil
	// Keep back at most 3 trailing bytes that start an incomplete rune.
	for i := 1; i <= 3 && i <= len(buf); i++ {
		c := buf[len(buf)-i]
		if c < 0x80 {
			break
		}
		if utf8.RuneStart(c) {
			if !utf8.FullRune(buf[len(buf)-i:]) {
				u.pending = append([]byte(nil), buf[len(buf)-i:]...)
				buf = buf[:len(buf)-i]
			}
			break
		}
	}
	return strings.ToValidUTF8(string(buf), "\uFFFD")
}

func (u *utf8Stream) flush() string {
	s := strings.ToValidUTF8(string(u.pending), "\uFFFD")
	u.pending = nil
	return s
}

// stripper removes terminal control sequences from a byte stream split at
// arbitrary points: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST),
// DCS/SOS/PM/APC strings, two-byte ESC sequences, and C0 controls other
// than newline and tab. CR LF becomes LF; a lone CR, which redraws a line,
// becomes LF too, so every version of the line stays greppable. There is
// no terminal emulator here: the transcript is what was sent, not the
// final screen. No well-kept Go library strips a stream incrementally (the
// ones in reach work on whole strings), hence this small state machine.
type stripper struct {
	state byte // 0 text, 1 after ESC, 2 CSI, 3 string (OSC etc.), 4 ESC in string, 5 after CR, 6 ESC intermediate
}

func (s *stripper) strip(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		switch s.state {
		case 0, 5:
			wasCR := s.state == 5
			s.state = 0
			switch {
			case c == 0x1b:
				if wasCR {
					out = append(out, '\n')
				}
				s.state = 1
			case c == '\r':
				// A run of CRs is one (a tty's ONLCR turns a program's
				// CR LF into CR CR LF): one line break, not a blank line.
				s.state = 5
			case c == '\n':
				out = append(out, '\n')
			case c == '\t':
				if wasCR {
					out = append(out, '\n')
				}
				out = append(out, c)
			case c < 0x20 || c == 0x7f:
				if wasCR {
					out = append(out, '\n')
				}
			default:
				if wasCR {
					out = append(out, '\n')
				}
				out = append(out, c)
			}
		case 1:
			switch c {
			case '[':
				s.state = 2
			case ']', 'P', 'X', '^', '_':
				s.state = 3
			default:
				if c >= 0x20 && c <= 0x2f {
					s.state = 6 // ESC ( B and the like
				} else {
					s.state = 0
				}
			}
		case 2:
			if c >= 0x40 && c <= 0x7e {
				s.state = 0
			}
		case 3:
			switch c {
			case 0x07:
				s.state = 0
			case 0x1b:
				s.state = 4
			}
		case 4:
			if c == '\\' {
				s.state = 0
			} else {
				s.state = 3
			}
		case 6:
			if c >= 0x30 && c <= 0x7e {
				s.state = 0
			}
		}
	}
	return out
}
