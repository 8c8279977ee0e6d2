package audit

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"

	"go.etcd.io/bbolt"
)

// Appends are group-committed: one goroutine owns the write path, and every
// append that queues while a commit is being fsync'd goes into the next
// commit. Batches size themselves to the load with no timer, so a lone
// append pays one commit and a crowd shares them.
//
// bbolt's DB.Batch was measured first (BenchmarkAuditAppend, 128 writers on
// a 2-core VM with a noisy disk): its batch closes on a timer
// (MaxBatchDelay, tried 0.5-5ms) rather than when the writer lock frees, so
// every commit waits out the delay, a lone append waits it too, and short
// delays split the writers into small batches queued on the lock. See the
// commit message for the numbers.
//
// The semantics are DB.Batch's: the functions of a batch run serially in one
// transaction, and when one fails the batch is rolled back, the others are
// re-run without it, and it is re-run alone so its own error reaches its
// caller. Functions must therefore be safe to run more than once.

// writeReq is one function waiting for the committer.
type writeReq struct {
	fn   func(*bbolt.Tx) error
	done chan error // buffered: the committer never blocks on a caller
}

// committer runs the group commit loop for one Store.
type committer struct {
	db *bbolt.DB
	// writeMu serializes every write transaction of the Store: the
	// batches, AppendWith's own transactions and retention's. bbolt
	// serializes writers anyway; holding writeMu across Update as well
	// makes a commit and its OnCommit handlers (the live feed) one step,
	// so subscribers see events in commit order.
	writeMu sync.Mutex
	reqs    chan *writeReq
	// mu is held for reading while sending on reqs and for writing to
	// close it, so no send races the close.
	mu     sync.RWMutex
	closed bool
	exited chan struct{}
}

func startCommitter(db *bbolt.DB) *committer {
	c := &committer{
		db:     db,
		reqs:   make(chan *writeReq, maxBatchSize),
		exited: make(chan struct{}),
	}
	go c.loop()
	return c
}

// submit queues fn for the next commit. It gives up if ctx ends while the
// queue is full.
func (c *committer) submit(ctx context.Context, fn func(*bbolt.Tx) error) (*writeReq, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, ErrClosed
	}
	r := &writeReq{fn: fn, done: make(chan error, 1)}
	select {
	case c.reqs <- r:
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// stop refuses new work, commits what is queued and waits for the loop.
func (c *committer) stop() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.reqs)
	}
	c.mu.Unlock()
	<-c.exited
}

func (c *committer) loop() {
	defer close(c.exited)
	// A log file cut short under a running gateway makes reads of its
	// mapped pages fault: with this, the fault is a panic that safeCall
	// and update turn into an error (the log is then reported down)
	// instead of a SIGBUS that kills the gateway.
	debug.SetPanicOnFault(true)
	batch := make([]*writeReq, 0, maxBatchSize)
	for r := range c.reqs {
		batch = append(batch[:0], r)
		batch = c.gather(batch)
		// Writers woken by the last commit are usually a scheduler pass
		// away from queueing again. Yielding while the batch still grows
		// lets them join this commit instead of waiting a whole commit for
		// the next one; a lone writer costs one yield, not a timer.
		for i := 0; i < maxGatherYields && len(batch) < maxBatchSize; i++ {
			n := len(batch)
			runtime.Gosched()
			if batch = c.gather(batch); len(batch) == n {
				break
			}
		}
		c.commit(batch)
	}
}

// maxGatherYields bounds the yields spent gathering one batch, so a busy
// scheduler cannot hold a commit back for long.
const maxGatherYields = 16

// gather adds to batch what is already queued, without waiting.
func (c *committer) gather(batch []*writeReq) []*writeReq {
	for len(batch) < maxBatchSize {
		select {
		case r, ok := <-c.reqs:
			if !ok {
				return batch
			}
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// commit runs batch in one transaction, as DB.Batch would.
func (c *committer) commit(batch []*writeReq) {
	for len(batch) > 0 {
		failed := -1
		err := c.update(func(tx *bbolt.Tx) error {
			for i, r := range batch {
				if err := safeCall(r.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed < 0 {
			for _, r := range batch {
				r.done <- err
			}
			return
		}
		r := batch[failed]
		batch = append(batch[:failed], batch[failed+1:]...)
		r.done <- c.update(func(tx *bbolt.Tx) error { return safeCall(r.fn, tx) })
	}
}

// update runs fn in a write transaction under writeMu; a fault or panic
// in bbolt itself (a damaged or shrunk file) is an ErrDamaged error.
func (c *committer) update(fn func(*bbolt.Tx) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: writing failed (%v); stop bastion and run `bastion audit verify` on the file", ErrDamaged, p)
		}
	}()
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	return c.db.Update(fn)
}

// safeCall turns a panic in fn into an error, so one bad append cannot take
// down the committer and every caller waiting on it.
func safeCall(fn func(*bbolt.Tx) error, tx *bbolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("audit: append panicked: %v", p)
		}
	}()
	return fn(tx)
}
