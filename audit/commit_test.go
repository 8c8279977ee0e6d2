package audit

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// TestCommitterBatchFailure checks DB.Batch semantics: a failing or
// panicking function in a batch gets its own error, and the rest of the
// batch commits without it.
func TestCommitterBatchFailure(t *testing.T) {
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "c.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c := startCommitter(db)
	ctx := context.Background()

	// Hold the committer in a commit so the next functions queue up and
	// share one batch.
	inTx, release := make(chan struct{}), make(chan struct{})
	first, err := c.submit(ctx, func(*bbolt.Tx) error { close(inTx); <-release; return nil })
	if err != nil {
		t.Fatal(err)
	}
	<-inTx
	errBad := errors.New("bad")
	const n = 20
	runs := make([]int, n)
	reqs := make([]*writeReq, n)
	for i := range n {
		reqs[i], err = c.submit(ctx, func(tx *bbolt.Tx) error {
			runs[i]++
			switch i {
			case 5:
				return errBad
			case 11:
				panic("boom")
			}
			b, err := tx.CreateBucketIfNotExists([]byte("b"))
			if err != nil {
				return err
			}
			return b.Put([]byte(fmt.Sprint(i)), []byte("x"))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	if err := <-first.done; err != nil {
		t.Fatal(err)
	}
	for i, r := range reqs {
		err := <-r.done
		switch {
		case i == 5 && !errors.Is(err, errBad):
			t.Errorf("fn 5: %v, want %v", err, errBad)
		case i == 11 && (err == nil || !strings.Contains(err.Error(), "panicked: boom")):
			t.Errorf("fn 11: %v, want the panic as an error", err)
		case i != 5 && i != 11 && err != nil:
			t.Errorf("fn %d: %v", i, err)
		}
	}
	_ = db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("b"))
		for i := range n {
			if got := b.Get([]byte(fmt.Sprint(i))) != nil; got != (i != 5 && i != 11) {
				t.Errorf("key %d present = %v", i, got)
			}
		}
		return nil
	})
	if runs[0] < 2 || runs[5] < 2 {
		t.Errorf("the batch was not re-run after a failure (runs %v)", runs)
	}

	c.stop()
	if _, err := c.submit(ctx, func(*bbolt.Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("submit after stop = %v, want ErrClosed", err)
	}
	c.stop() // idempotent
}

// TestCloseCommitsQueued checks that Close lets queued appends finish and
// refuses later ones, with no append left hanging.
func TestCloseCommitsQueued(t *testing.T) {
	s, path := newStore(t, Options{})
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		accepted int
	)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, err := s.Append(context.Background(), Event{Type: TypeAuthOK})
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				accepted++
				mu.Unlock()
			}
		}()
	}
	for {
		if h, _ := s.Head(); h.Count >= 100 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	s, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	n, err := s.Verify(context.Background())
	if err != nil || n != accepted {
		t.Errorf("Verify = %d, %v; %d appends were acknowledged", n, err, accepted)
	}
}
