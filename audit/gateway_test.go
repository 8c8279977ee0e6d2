package audit

import (
	"context"
	"testing"
)

// TestGatewayIDStampsEveryEvent: a store opened with a gateway id writes
// it as the "gateway" field of each event (the producer's own value
// wins), and a log begun without one still verifies after events with
// it are appended: the field is inside the hash like any other.
func TestGatewayIDStampsEveryEvent(t *testing.T) {
	s, path := newStore(t, Options{})
	old := mustAppend(t, s, Event{Type: TypeAuthOK, Actor: "alice"})
	if _, ok := old.Fields[FieldGateway]; ok {
		t.Fatalf("a store without a gateway id stamped %v", old.Fields)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path, Options{GatewayID: "gw-2", Now: stepClock(1)})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	plain := mustAppend(t, s2, Event{Type: TypeSessionStart, Actor: "alice", Session: "s1"})
	withFields := mustAppend(t, s2, Event{Type: TypeSessionEnd, Actor: "alice", Session: "s1", Fields: map[string]string{"reason": "eof"}})
	named := mustAppend(t, s2, Event{Type: TypeSessionEnd, Session: "s2", Fields: map[string]string{FieldGateway: "gw-1"}})
	for _, c := range []struct {
		ev   Event
		want string
	}{{plain, "gw-2"}, {withFields, "gw-2"}, {named, "gw-1"}} {
		if got := c.ev.Fields[FieldGateway]; got != c.want {
			t.Errorf("%s %s: gateway = %q, want %q", c.ev.Type, c.ev.Session, got, c.want)
		}
	}
	if withFields.Fields["reason"] != "eof" {
		t.Errorf("the producer's fields were lost: %v", withFields.Fields)
	}
	stored := all(t, s2, Filter{})
	if len(stored) != 4 || stored[1].Fields[FieldGateway] != "gw-2" {
		t.Fatalf("stored events = %+v", stored)
	}
	if v, err := s2.VerifyChain(context.Background()); err != nil || v.Checked != 4 {
		t.Fatalf("verify of a log with and without gateway fields: %+v, %v", v, err)
	}
}
