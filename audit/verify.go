package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	"go.etcd.io/bbolt"
)

// Verify walks the whole chain, from a consistent snapshot (see Iterate),
// and returns how many events it checked. At the first broken link it stops
// with a *ChainError naming the event and what is wrong with it: edited
// (ReasonHashMismatch), deleted or reordered (ReasonPrevHashMismatch), moved
// (ReasonIDMismatch), out of order (ReasonIDOrder, ReasonTimeOrder), cut
// short (ReasonTruncated), unreadable (ReasonUndecodable), or starting from
// a retention checkpoint no audit.pruned event vouches for
// (ReasonCheckpoint).
//
// When retention has pruned the oldest events, the walk starts at the
// retention checkpoint: the oldest event held must chain to the hash of
// the last one pruned, and the newest audit.pruned event held must name
// that checkpoint. VerifyChain says which checkpoint it started from.
func (s *Store) Verify(ctx context.Context) (int, error) {
	v, err := s.VerifyChain(ctx)
	return v.Checked, err
}

// Verification is what VerifyChain found.
type Verification struct {
	// Checked is how many events were verified.
	Checked int
	// From is the retention checkpoint the walk started from (zero: the
	// log's first event, nothing pruned).
	From Checkpoint
	// Head is the end of the verified chain, to publish as an anchor.
	Head Anchor
	// AnchorPruned is set when the anchor given to VerifyAnchored names an
	// event retention has since pruned: the log is at least as long as the
	// anchor says, but the anchored hash could not be compared.
	AnchorPruned bool
	// Recordings is how many session recordings matched the newest
	// digest the chain holds for them (session.end or session.checkpoint).
	Recordings int
	// Unverified lists the recordings, or recording tails, no digest in
	// the chain covers, by session id. They are not failures, but
	// nothing vouches for them. Recordings that fail come back as a
	// *RecordingsError.
	Unverified []RecordingProblem
}

// VerifyChain is Verify, also reporting the checkpoint it started from.
func (s *Store) VerifyChain(ctx context.Context) (Verification, error) {
	return s.VerifyAnchored(ctx, nil)
}

// VerifyAnchored is VerifyChain that also checks the chain against an
// anchor published earlier (see [Store.Anchor]): the anchored event must
// still be in the chain, at the same position, with the same hash. This
// catches what the chain alone cannot: events deleted from the end, or a
// whole log rewritten from scratch. A nil anchor checks nothing more.
func (s *Store) VerifyAnchored(ctx context.Context, anchor *Anchor) (Verification, error) {
	var (
		res       Verification
		prev      Event
		last      []byte
		meta      chainMeta
		vouched   bool // the newest audit.pruned seen names the checkpoint
		anchorHit bool
		claims    = map[string]recordingClaim{} // newest recording digest per session
	)
	// The meta bucket and checkpoint are read in the transaction of the
	// scan's first page: appends that land after it only add records past
	// its last id, which the check below ignores, and the scan keeps
	// retention from pruning what it has yet to read.
	first := func(tx *bbolt.Tx) error {
		var err error
		if meta, err = readMeta(tx); err != nil {
			return err
		}
		res.From, err = readCheckpoint(tx.Bucket([]byte(bucketMeta)))
		prev = Event{ID: res.From.ID, Hash: res.From.Hash}
		return err
	}
	err := s.scan(ctx, nil, first, func(k, v []byte) error {
		if meta.hasLast && bytes.Compare(k, meta.lastID[:]) > 0 {
			return errStopScan // appended after the meta snapshot
		}
		ev, err := checkLink(res.Checked, k, v, prev)
		if err != nil {
			return err
		}
		if ev.Type == TypeAuditPruned {
			vouched = vouches(ev, res.From)
		}
		if anchor != nil && ev.ID == anchor.ID {
			anchorHit = true
			seq := res.From.Pruned + uint64(res.Checked) + 1
			if ev.Hash != anchor.Hash || seq != anchor.Seq {
				return &ChainError{Index: res.Checked, ID: ev.ID, Reason: ReasonAnchor,
					Expected: fmt.Sprintf("event %d with hash %s", anchor.Seq, anchor.Hash), Got: fmt.Sprintf("event %d with hash %s", seq, ev.Hash)}
			}
		}
		prev, last = ev, k
		noteRecordingClaim(claims, ev)
		res.Checked++
		return nil
	})
	if errors.Is(err, errStopScan) {
		err = nil
	}
	if err != nil {
		return res, err
	}
	if meta.hasLast && !bytes.Equal(last, meta.lastID[:]) {
		got := "the start"
		if last != nil {
			got = keyString(last)
		}
		return res, &ChainError{Index: res.Checked, ID: meta.lastID.String(), Reason: ReasonTruncated, Expected: meta.lastID.String(), Got: got}
	}
	if res.From != (Checkpoint{}) && !vouched {
		return res, &ChainError{Index: 0, ID: res.From.ID, Reason: ReasonCheckpoint,
			Expected: fmt.Sprintf("an audit.pruned event naming %d events through %s (%s)", res.From.Pruned, res.From.ID, res.From.Hash), Got: "none"}
	}
	if uint64(res.Checked) != meta.count {
		return res, &ChainError{Index: res.Checked, ID: prev.ID, Reason: ReasonCount,
			Expected: strconv.FormatUint(meta.count, 10), Got: strconv.Itoa(res.Checked)}
	}
	res.Head = Anchor{Seq: res.From.Pruned + uint64(res.Checked), ID: prev.ID, Hash: prev.Hash}
	if anchor != nil && !anchorHit {
		switch {
		case anchor.Seq > res.Head.Seq || anchor.ID > res.Head.ID:
			return res, &ChainError{Index: res.Checked, ID: anchor.ID, Reason: ReasonTruncated,
				Expected: fmt.Sprintf("event %d (%s) from the anchor", anchor.Seq, anchor.ID), Got: fmt.Sprintf("event %d (%s)", res.Head.Seq, res.Head.ID)}
		case anchor.Seq <= res.From.Pruned && anchor.ID <= res.From.ID:
			res.AnchorPruned = true
		default:
			return res, &ChainError{Index: res.Checked, ID: anchor.ID, Reason: ReasonAnchor,
				Expected: fmt.Sprintf("event %d with hash %s", anchor.Seq, anchor.Hash), Got: "no such event"}
		}
	}
	var failed []RecordingProblem
	if res.Recordings, failed, res.Unverified, err = s.verifyRecordings(ctx, claims); err != nil {
		return res, err
	}
	if len(failed) > 0 {
		return res, &RecordingsError{Failed: failed}
	}
	return res, nil
}

// Anchor names one event of the chain by its position in the log's whole
// history (1 for the first event ever appended, pruned or not), its id and
// its hash. Published somewhere the gateway's machine cannot write (a
// ticket, a chat message, another machine), it lets VerifyAnchored prove
// the log was neither cut back nor rewritten up to that event.
type Anchor struct {
	Seq      uint64
	ID, Hash string
}

// anchorPrefix starts an anchor's text form.
const anchorPrefix = "bastion-audit-anchor v1"

// String is the anchor's text form, one line:
// "bastion-audit-anchor v1 seq=N id=ULID hash=HEX".
func (a Anchor) String() string {
	return fmt.Sprintf("%s seq=%d id=%s hash=%s", anchorPrefix, a.Seq, a.ID, a.Hash)
}

// ParseAnchor reads an anchor's text form; blank lines and lines starting
// with # around it are ignored.
func ParseAnchor(text string) (Anchor, error) {
	var line string
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if line != "" {
			return Anchor{}, errors.New("audit: anchor: more than one anchor line")
		}
		line = l
	}
	rest, ok := strings.CutPrefix(line, anchorPrefix+" ")
	if !ok {
		return Anchor{}, fmt.Errorf("audit: anchor: want a line starting %q, as `bastion audit verify` prints", anchorPrefix)
	}
	var a Anchor
	parts := strings.Fields(rest)
	if len(parts) != 3 {
		return Anchor{}, errors.New("audit: anchor: want seq=N id=ULID hash=HEX")
	}
	for i, name := range []string{"seq", "id", "hash"} {
		v, ok := strings.CutPrefix(parts[i], name+"=")
		if !ok {
			return Anchor{}, fmt.Errorf("audit: anchor: field %d must be %s=", i+1, name)
		}
		switch name {
		case "seq":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil || n == 0 {
				return Anchor{}, errors.New("audit: anchor: seq must be a positive number")
			}
			a.Seq = n
		case "id":
			id, err := ulid.ParseStrict(v)
			if err != nil || id.String() != v {
				return Anchor{}, errors.New("audit: anchor: id is not a canonical ULID")
			}
			a.ID = v
		case "hash":
			if !isHash(v) {
				return Anchor{}, errors.New("audit: anchor: hash must be 64 lower-case hex digits")
			}
			a.Hash = v
		}
	}
	return a, nil
}

// Anchor returns the current end of the chain as an anchor to publish;
// the zero Anchor when the log is empty.
func (s *Store) Anchor() (Anchor, error) {
	h, err := s.Head()
	if err != nil || h.ID == "" {
		return Anchor{}, err
	}
	cp, err := s.Checkpoint()
	if err != nil {
		return Anchor{}, err
	}
	return Anchor{Seq: cp.Pruned + h.Count, ID: h.ID, Hash: h.Hash}, nil
}

// errStopScan ends a scan early without error.
var errStopScan = errors.New("audit: stop scan")

// checkLink checks record i (key k, value v) against the event before it
// and returns the record's event.
func checkLink(i int, k, v []byte, prev Event) (Event, error) {
	keyID := keyString(k)
	broken := func(reason, expected, got string) *ChainError {
		return &ChainError{Index: i, ID: keyID, Reason: reason, Expected: expected, Got: got}
	}
	ev, err := DecodeEvent(v)
	if err != nil {
		return Event{}, broken(ReasonUndecodable, "", err.Error())
	}
	if want, err := computeHash(ev); err != nil || want != ev.Hash {
		return Event{}, broken(ReasonHashMismatch, want, ev.Hash)
	}
	if ev.PrevHash != prev.Hash {
		return Event{}, broken(ReasonPrevHashMismatch, prev.Hash, ev.PrevHash)
	}
	if ev.ID != keyID {
		return Event{}, broken(ReasonIDMismatch, keyID, ev.ID)
	}
	if prev.ID != "" && ev.ID <= prev.ID {
		return Event{}, broken(ReasonIDOrder, prev.ID, ev.ID)
	}
	id := ulid.MustParseStrict(ev.ID) // DecodeEvent checked it
	if ev.Time.UnixMilli() > int64(id.Time()) {
		return Event{}, broken(ReasonTimeOrder, ulid.Time(id.Time()).UTC().Format(time.RFC3339Nano), ev.Time.Format(time.RFC3339Nano))
	}
	return ev, nil
}
