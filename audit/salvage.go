package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/oklog/ulid/v2"
	"go.etcd.io/bbolt"
)

// SalvageReport says what Salvage recovered and what it could not.
type SalvageReport struct {
	// Recovered is how many events were copied to the new file.
	Recovered int
	// Unreadable is how many records that looked like events (a 16-byte
	// key in a leaf page) could not be decoded or failed their own hash.
	Unreadable int
	// Breaks lists, for each place the recovered chain does not link
	// (events lost there), the id of the first event after the gap; the
	// new file's verify stops at the first. At most maxBreaks are listed.
	Breaks []string
	// BreakCount is how many breaks there are in all.
	BreakCount int
	// First and Last are the ids of the first and last recovered event.
	First, Last string
}

const maxBreaks = 20

// Salvage reads the damaged log at src without bbolt (page by page, so
// neither a cut file nor broken pages can crash it), keeps every record
// that decodes as an event whose own hash is right, and writes those
// events, unchanged and in id order, to a new log at dst (which must not
// exist). It then appends an audit.salvaged event saying where they came
// from and what was lost. Events on pages bbolt had freed (pruned or
// superseded copies) may be recovered too; an event is immutable, so a
// copy is the event.
//
// Where the recovered events do not link (an event was lost), the new
// file's verify reports the break: salvage never reseals the chain, so it
// cannot hide a loss.
func Salvage(ctx context.Context, src, dst string, now func() time.Time) (SalvageReport, error) {
	var rep SalvageReport
	if now == nil {
		now = time.Now
	}
	if _, err := os.Stat(dst); err == nil {
		return rep, fmt.Errorf("audit: salvage: %s exists; name a new file", dst)
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return rep, fmt.Errorf("audit: salvage: %w", err)
	}
	pageSize := os.Getpagesize()
	for _, off := range []int64{0, int64(pageSize)} {
		if m, err := readBoltMeta(bytes.NewReader(data), off); err == nil {
			pageSize = int(m.pageSize)
			break
		}
	}
	found := map[string][]byte{}
	for off := 0; off+boltPageHeader <= len(data); off += pageSize {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		scanLeaf(data[off:min(len(data), off+pageSize*maxOverflow)], pageSize, found, &rep.Unreadable, 0)
	}
	ids := make([]string, 0, len(found))
	for id := range found {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	rep.Recovered = len(ids)
	if len(ids) == 0 {
		return rep, fmt.Errorf("audit: salvage: no readable event in %s", src)
	}
	rep.First, rep.Last = ids[0], ids[len(ids)-1]

	db, err := bbolt.Open(dst, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return rep, fmt.Errorf("audit: salvage: create %s: %w", dst, err)
	}
	var prev Event // the zero Event: a first event chains to ""
	err = db.Update(func(tx *bbolt.Tx) error {
		if _, err := initBuckets(tx); err != nil {
			return err
		}
		events, meta := tx.Bucket([]byte(bucketEvents)), tx.Bucket([]byte(bucketMeta))
		for _, id := range ids {
			rec := found[id]
			ev, _ := DecodeEvent(rec)     // scanLeaf kept only decodable records
			if ev.PrevHash != prev.Hash { // for the first event: events before it were lost
				rep.BreakCount++
				if len(rep.Breaks) < maxBreaks {
					rep.Breaks = append(rep.Breaks, ev.ID)
				}
			}
			k, _ := parseKey(ev.ID)
			if err := events.Put(k, rec); err != nil {
				return err
			}
			prev = ev
		}
		k, _ := parseKey(prev.ID)
		count := make([]byte, 8)
		binary.BigEndian.PutUint64(count, uint64(len(ids)))
		if err := meta.Put([]byte(metaLastID), k); err != nil {
			return err
		}
		if err := meta.Put([]byte(metaLastHash), []byte(prev.Hash)); err != nil {
			return err
		}
		return meta.Put([]byte(metaCount), count)
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(dst)
		return rep, fmt.Errorf("audit: salvage: write %s: %w", dst, err)
	}
	s, err := Open(dst, Options{Now: now, MustExist: true})
	if err != nil {
		return rep, err
	}
	_, err = s.Append(ctx, Event{Type: TypeAuditSalvaged, Actor: "operator", Fields: map[string]string{
		"source": src, "recovered": strconv.Itoa(rep.Recovered), "unreadable": strconv.Itoa(rep.Unreadable),
		"breaks": strconv.Itoa(rep.BreakCount), "first_id": rep.First, "last_id": rep.Last,
	}})
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return rep, err
}

// maxOverflow bounds how many pages one leaf page (with its overflow) may
// span, so a damaged header cannot make the scan read the whole file as
// one page.
const maxOverflow = 1024

// scanLeaf reads p as a bbolt leaf page and adds each element that is an
// event record to found; it descends into inline buckets. Anything that
// does not parse is skipped.
func scanLeaf(p []byte, pageSize int, found map[string][]byte, unreadable *int, depth int) {
	const leafFlag, bucketFlag, elemSize = 0x02, 0x01, 16
	if len(p) < boltPageHeader || depth > 4 {
		return
	}
	le := binary.LittleEndian
	if le.Uint16(p[8:]) != leafFlag {
		return
	}
	count := int(le.Uint16(p[10:]))
	span := len(p)
	if ov := int(le.Uint32(p[12:])); ov < maxOverflow {
		span = min(span, pageSize*(ov+1))
	}
	for i := 0; i < count; i++ {
		e := boltPageHeader + i*elemSize
		if e+elemSize > span {
			return
		}
		flags, pos := le.Uint32(p[e:]), int(le.Uint32(p[e+4:]))
		ks, vs := int(le.Uint32(p[e+8:])), int(le.Uint32(p[e+12:]))
		ko := e + pos
		if pos < 0 || ks < 0 || vs < 0 || ko < 0 || ko+ks+vs > span || ko+ks+vs < ko {
			continue
		}
		k, v := p[ko:ko+ks], p[ko+ks:ko+ks+vs]
		if flags&bucketFlag != 0 {
			// An inline bucket: a 16-byte header with root page 0, then a page.
			if len(v) > 16 && le.Uint64(v) == 0 {
				scanLeaf(v[16:], pageSize, found, unreadable, depth+1)
			}
			continue
		}
		if ks != 16 {
			continue
		}
		ev, err := DecodeEvent(v)
		if err != nil || keyString(k) != ev.ID {
			if len(v) > 0 && v[0] == '{' {
				*unreadable++
			}
			continue
		}
		if h, err := computeHash(ev); err != nil || h != ev.Hash {
			*unreadable++
			continue
		}
		if _, ok := found[ev.ID]; !ok {
			found[ev.ID] = bytes.Clone(v)
		}
	}
}

// parseKey is the 16-byte key of an event id.
func parseKey(id string) ([]byte, error) {
	u, err := ulid.ParseStrict(id)
	if err != nil {
		return nil, errors.New("audit: bad id")
	}
	return u[:], nil
}
