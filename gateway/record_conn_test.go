package gateway

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"io"
	"testing"

	gossh "golang.org/x/crypto/ssh"
)

// backlogChannel is a gossh.Channel whose Read returns up to len(p) of
// what is queued (as x/crypto's channel buffer does under a backlog) and
// counts the reads, each of which would make x/crypto send a window
// adjustment.
type backlogChannel struct {
	gossh.Channel
	data  []byte
	reads int
}

func (c *backlogChannel) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	c.reads++
	n := copy(p, c.data)
	c.data = c.data[n:]
	return n, nil
}

// TestChannelConnReadAhead: the inner transport reads a backlogged
// channel through bufio's 4 KiB fills and packet-sized reads; channelConn
// must hand over every byte in order, count them, read the channel in
// bulkReadSize pieces while it is backlogged, and hold no read-ahead
// buffer once the data has been handed over.
func TestChannelConnReadAhead(t *testing.T) {
	want := make([]byte, 4<<20+123)
	if _, err := rand.Read(want); err != nil {
		t.Fatal(err)
	}
	ch := &backlogChannel{data: bytes.Clone(want)}
	c := &channelConn{Channel: ch}
	r := bufio.NewReaderSize(c, 4096) // as x/crypto's transport reads
	var got []byte
	for sizes := []int{4, 32 * 1024, 4, 700, 32*1024 + 37}; ; {
		buf := make([]byte, sizes[len(got)%len(sizes)])
		n, err := io.ReadFull(r, buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, not the %d sent in order", len(got), len(want))
	}
	if c.up.Load() != int64(len(want)) {
		t.Errorf("counted %d bytes up, want %d", c.up.Load(), len(want))
	}
	// Without the read-ahead there are two reads per 32 KiB packet.
	if max := len(want)/bulkReadSize + 8; ch.reads > max {
		t.Errorf("%d channel reads for %d bytes, want at most %d (each read costs a window adjustment)", ch.reads, len(want), max)
	}
	if c.ahead != nil || len(c.pending) != 0 {
		t.Errorf("the drained connection still holds a read-ahead buffer (%d bytes pending)", len(c.pending))
	}
}
