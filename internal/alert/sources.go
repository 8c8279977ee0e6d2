package alert

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"go.etcd.io/bbolt"

	"github.com/bastion-ssh/bastion/audit"
)

// The new_source rule remembers which networks each user has logged in
// from. The set lives in memory and is persisted in the audit file's
// "alert_sources" bucket (key user NUL network, value the first login's
// time), each addition written with AppendWith together with an
// alert.source_seen audit event, so the set and the log agree and a
// restart neither forgets a network nor alerts on it twice. Entries do not
// expire: a user's networks are few.

// sourcesBucket holds the networks seen per user.
var sourcesBucket = []byte("alert_sources")

// Store is what the engine needs of the audit log; *audit.Store is one.
type Store interface {
	Append(ctx context.Context, ev audit.Event) (audit.Event, error)
	AppendWith(ctx context.Context, ev audit.Event, fn func(tx *bbolt.Tx) error) (audit.Event, error)
	View(fn func(tx *bbolt.Tx) error) error
}

// sourceSet is the networks seen per user. It is used by one goroutine.
type sourceSet struct {
	store Store
	log   *slog.Logger
	users map[string]map[netip.Prefix]bool
}

// loadSources reads the persisted set.
func loadSources(store Store, log *slog.Logger) (*sourceSet, error) {
	s := &sourceSet{store: store, log: log, users: map[string]map[netip.Prefix]bool{}}
	err := store.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(sourcesBucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, _ []byte) error {
			if user, network, ok := splitSourceKey(string(k)); ok {
				s.add(user, network)
			}
			return nil
		})
	})
	return s, err
}

func (s *sourceSet) add(user string, network netip.Prefix) {
	if s.users[user] == nil {
		s.users[user] = map[netip.Prefix]bool{}
	}
	s.users[user][network] = true
}

// see records a successful login of user from network and reports
// whether the network is new for the user, and whether it is the user's
// first network at all (the baseline, which alerts nobody).
func (s *sourceSet) see(user string, network netip.Prefix, ev audit.Event) (isNew, baseline bool) {
	known := s.users[user]
	if known[network] {
		return false, false
	}
	baseline = len(known) == 0
	s.add(user, network)
	first := ev.Time.UTC().Format(time.RFC3339)
	rec := audit.Event{Type: audit.TypeSourceSeen, Actor: user, Session: ev.Session, Fields: map[string]string{
		"network": network.String(), "remote": ev.Fields["remote"], "baseline": boolString(baseline), "auth_id": ev.ID,
	}}
	_, err := s.store.AppendWith(context.Background(), rec, func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(sourcesBucket)
		if err != nil {
			return err
		}
		return b.Put([]byte(sourceKey(user, network)), []byte(first))
	})
	if err != nil {
		// Kept in memory regardless; after a restart the network is
		// merely new once more.
		s.log.Error("alert: cannot persist a user's new network", "user", user, "network", network.String(), "err", err)
	}
	return true, baseline
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}
