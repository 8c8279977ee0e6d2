package audit

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// TestSubscribeSeesCommitsInOrder: with room enough, a subscriber gets
// every committed event (batched appends and AppendWith alike), exactly
// as stored and in log order; a failed AppendWith publishes nothing.
func TestSubscribeSeesCommitsInOrder(t *testing.T) {
	s, _ := newStore(t, Options{})
	before := mustAppend(t, s, Event{Type: TypeGatewayStart})
	sub := s.Subscribe(10000)
	defer sub.Close()
	const writers, each = 16, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				ev := Event{Type: TypeAuthFailed, Actor: fmt.Sprintf("w%d-%d", w, i)}
				var err error
				if i%10 == 0 {
					_, err = s.AppendWith(context.Background(), Event{Type: TypeUserLocked, Actor: ev.Actor}, func(tx *bbolt.Tx) error {
						_, err := tx.CreateBucketIfNotExists([]byte("state"))
						return err
					})
				} else {
					_, err = s.Append(context.Background(), ev)
				}
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if _, err := s.AppendWith(context.Background(), Event{Type: TypeUserLocked}, func(*bbolt.Tx) error { return errors.New("refused") }); err == nil {
		t.Fatal("a failing AppendWith succeeded")
	}
	var got []Event
	for len(got) < writers*each {
		select {
		case ev := <-sub.C:
			got = append(got, ev)
		case <-time.After(10 * time.Second):
			t.Fatalf("got %d of %d events", len(got), writers*each)
		}
	}
	select {
	case ev := <-sub.C:
		t.Fatalf("unexpected extra event %+v", ev)
	default:
	}
	stored := all(t, s, Filter{})
	if stored[0].ID != before.ID {
		t.Fatal("log does not start with the event appended before Subscribe")
	}
	if !reflect.DeepEqual(got, stored[1:]) {
		t.Errorf("the feed differs from the log (or its order)")
	}
	if sub.Dropped() != 0 {
		t.Errorf("dropped %d with room to spare", sub.Dropped())
	}
}

// TestSubscribeNeverBlocksAppends: a subscriber that never reads costs
// appends nothing; what it missed is counted.
func TestSubscribeNeverBlocksAppends(t *testing.T) {
	s, _ := newStore(t, Options{})
	stalled := s.Subscribe(3)
	defer stalled.Close()
	const n = 200
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range n {
			mustAppend(t, s, Event{Type: TypeAuthOK})
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("appends stalled behind a subscriber that does not read")
	}
	if got := stalled.Dropped(); got != n-3 {
		t.Errorf("Dropped = %d, want %d", got, n-3)
	}
	if len(stalled.C) != 3 {
		t.Errorf("buffer holds %d, want the first 3", len(stalled.C))
	}
}

func TestSubscriptionClose(t *testing.T) {
	s, _ := newStore(t, Options{})
	a, b := s.Subscribe(1), s.Subscribe(1)
	a.Close()
	a.Close() // twice is fine
	if _, ok := <-a.C; ok {
		t.Fatal("C still open after Close")
	}
	mustAppend(t, s, Event{Type: TypeAuthOK})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-b.C; !ok {
		t.Fatal("the event committed before Close was lost")
	}
	if _, ok := <-b.C; ok {
		t.Fatal("C still open after the store closed")
	}
	if _, ok := <-s.Subscribe(1).C; ok {
		t.Fatal("a subscription to a closed store is open")
	}
	b.Close()
}

// TestFollow: Follow delivers the matching history, then every new
// matching event in order, never skipping one however slow its consumer,
// and a stalled consumer delays no append.
func TestFollow(t *testing.T) {
	s, _ := newStore(t, Options{})
	for i := range 5 {
		mustAppend(t, s, Event{Type: TypeAuthFailed, Actor: fmt.Sprint("old", i)})
		mustAppend(t, s, Event{Type: TypeAuthOK})
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu   sync.Mutex
		got  []Event
		gate = make(chan struct{})
	)
	errc := make(chan error, 1)
	go func() {
		errc <- s.Follow(ctx, Filter{Types: []string{TypeAuthFailed}}, func(ev Event) error {
			mu.Lock()
			got = append(got, ev)
			n := len(got)
			mu.Unlock()
			if n == 6 {
				<-gate // stall on the first live event
			}
			return nil
		})
	}()
	waitFor := func(n int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			mu.Lock()
			have := len(got)
			mu.Unlock()
			if have >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("followed %d events, want %d", have, n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor(5)
	// 3*scanPage new events while the follower is stalled on the first:
	// the appends finish, and the follower later reads all of them back
	// across several pages.
	const live = 3 * scanPage
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < live; i += 8 {
				mustAppend(t, s, Event{Type: TypeAuthFailed, Actor: fmt.Sprint("new", i)})
				mustAppend(t, s, Event{Type: TypeSessionStart})
			}
		}()
	}
	wg.Wait()
	close(gate)
	waitFor(5 + live)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("Follow returned %v after cancel, want context.Canceled", err)
	}
	want := all(t, s, Filter{Types: []string{TypeAuthFailed}})
	if !reflect.DeepEqual(got, want) {
		t.Errorf("followed %d events; they differ from the log's %d", len(got), len(want))
	}
}

func TestFollowEndsWhenTheStoreCloses(t *testing.T) {
	s, _ := newStore(t, Options{})
	errc := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		errc <- s.Follow(context.Background(), Filter{}, func(Event) error { close(started); return nil })
	}()
	mustAppend(t, s, Event{Type: TypeAuthOK})
	<-started
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Follow returned %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Follow did not end when the store closed")
	}
	stop := errors.New("stop")
	s2, _ := newStore(t, Options{})
	mustAppend(t, s2, Event{Type: TypeAuthOK})
	if err := s2.Follow(context.Background(), Filter{}, func(Event) error { return stop }); err != stop {
		t.Errorf("Follow did not return fn's error: %v", err)
	}
	if err := s2.Follow(context.Background(), Filter{Types: []string{"Bad"}}, nil); err == nil {
		t.Error("Follow accepted a malformed filter")
	}
}

// TestFollowNewStartsAtTheEnd: FollowNew, like tail -f, skips what is
// already in the log and sees every matching event committed after it.
func TestFollowNewStartsAtTheEnd(t *testing.T) {
	s, _ := newStore(t, Options{})
	for i := range 3 {
		mustAppend(t, s, Event{Type: TypeAuthFailed, Actor: fmt.Sprint("old", i)})
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan Event, 100)
	errc := make(chan error, 1)
	go func() {
		errc <- s.FollowNew(ctx, Filter{Types: []string{TypeAuthFailed}}, func(ev Event) error {
			got <- ev
			return nil
		})
	}()
	// FollowNew has begun at some point during these appends; whatever it
	// prints first must be new, and after that nothing is skipped.
	deadline := time.After(20 * time.Second)
	var first Event
	for i := 0; first.Actor == ""; i++ {
		mustAppend(t, s, Event{Type: TypeAuthFailed, Actor: fmt.Sprint("new", i)})
		select {
		case first = <-got:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatal("FollowNew printed nothing")
		}
	}
	if !strings.HasPrefix(first.Actor, "new") {
		t.Fatalf("FollowNew printed %q first, from before it began", first.Actor)
	}
	var n int
	fmt.Sscan(strings.TrimPrefix(first.Actor, "new"), &n)
	mustAppend(t, s, Event{Type: TypeAuthOK})
	mustAppend(t, s, Event{Type: TypeAuthFailed, Actor: "last"})
	for {
		select {
		case ev := <-got:
			if ev.Actor == "last" {
				cancel()
				<-errc
				return
			}
			n++
			if ev.Actor != fmt.Sprint("new", n) {
				t.Fatalf("after new%d FollowNew printed %q", n-1, ev.Actor)
			}
		case <-deadline:
			t.Fatal("FollowNew missed the last event")
		}
	}
}

// TestFollowLastStartsNBack: FollowLast, like tail -n N -f, prints the
// last N matching events (across pages of the backward read, with other
// types in between), then what is new; with fewer than N it prints all.
func TestFollowLastStartsNBack(t *testing.T) {
	s, _ := newStore(t, Options{})
	const old = scanPage + 300 // more than a page of matches, and of others
	for i := range old {
		mustAppend(t, s, Event{Type: TypeAuthFailed, Actor: fmt.Sprint("old", i)})
		mustAppend(t, s, Event{Type: TypeAuthOK})
	}
	follow := func(n int, f Filter, want int) []string {
		live := Event{Type: TypeAuthFailed, Actor: "live"}
		if len(f.Types) > 0 {
			live.Type = f.Types[0]
		}
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		got := make(chan Event, 4*old)
		errc := make(chan error, 1)
		go func() {
			errc <- s.FollowLast(ctx, f, n, func(ev Event) error { got <- ev; return nil })
		}()
		var actors []string
		deadline := time.After(20 * time.Second)
		for len(actors) < want {
			select {
			case ev := <-got:
				actors = append(actors, ev.Actor)
			case <-deadline:
				t.Fatalf("FollowLast(%d) printed %d events, want %d", n, len(actors), want)
			}
		}
		select {
		case ev := <-got:
			t.Fatalf("FollowLast(%d) printed more: %q", n, ev.Actor)
		case <-time.After(100 * time.Millisecond):
		}
		mustAppend(t, s, live)
		select {
		case ev := <-got:
			if ev.Actor != "live" {
				t.Fatalf("then %q, want the live event", ev.Actor)
			}
		case <-deadline:
			t.Fatal("FollowLast does not follow")
		}
		cancel()
		<-errc
		return actors
	}
	failed := Filter{Types: []string{TypeAuthFailed}}
	if got := follow(3, failed, 3); strings.Join(got, ",") != fmt.Sprintf("old%d,old%d,old%d", old-3, old-2, old-1) {
		t.Errorf("last 3: %v", got)
	}
	// The "live" event the call above appended is now the last one.
	got := follow(scanPage+10, failed, scanPage+10)
	if got[len(got)-1] != "live" || got[0] != fmt.Sprint("old", old+1-scanPage-10) {
		t.Errorf("last %d: from %q to %q", scanPage+10, got[0], got[len(got)-1])
	}
	// More than there are: all of them.
	if got := follow(10*old, failed, old+2); got[0] != "old0" {
		t.Errorf("all: starts at %q", got[0])
	}
	// None match: only new ones.
	if got := follow(5, Filter{Types: []string{TypeSessionStart}}, 0); len(got) != 0 {
		t.Errorf("no matches: %v", got)
	}
}

// TestLast: Last finds the newest matching event, reading from the end,
// and reports none in a log without one.
func TestLast(t *testing.T) {
	s, _ := newStore(t, Options{GatewayID: "gw-3"})
	ctx := context.Background()
	if _, found, err := s.Last(ctx, Filter{Types: []string{TypeGatewayStart}}); found || err != nil {
		t.Fatalf("empty log: found %v, %v", found, err)
	}
	var want Event
	for i := range 3 {
		ev, err := s.Append(ctx, Event{Type: TypeGatewayStart, Actor: fmt.Sprint("start-", i)})
		if err != nil {
			t.Fatal(err)
		}
		want = ev
		if _, err := s.Append(ctx, Event{Type: TypeCommand, Actor: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	got, found, err := s.Last(ctx, Filter{Types: []string{TypeGatewayStart}})
	if err != nil || !found || got.ID != want.ID || got.Fields[FieldGateway] != "gw-3" {
		t.Errorf("Last = %+v, %v, %v; want %s", got, found, err, want.ID)
	}
}
