package rates

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
)

// timeLayout is RFC 3339 with milliseconds, in UTC.
const timeLayout = "2006-01-02T15:04:05.000Z07:00"

// entry is one pair's current rate, immutable once published, with every encoding a request needs
// made once when it changes.
type entry struct {
	index     int
	spec      fx.PairSpec
	rate      eventing.RateV1
	fresh     time.Time // when the rate was read off the provider's session (or, lacking that, applied)
	tradeable bool
	// version is the book's change counter when this entry was made; it only rises.
	version uint64
	bid     string
	ask     string
	spread  string
	time    string
	// json is the rate as the REST API returns it; frame is the SSE frame of an update.
	json  []byte
	frame []byte
	// hash is the FNV-64a of json; ETags combine the hashes of the entries a response holds.
	hash uint64
	// headers of GET /v1/rates/{pair}: its ETag and Content-Length, ready to assign.
	etagHeader, lengthHeader []string
}

// rateJSON is the REST representation of a rate.
type rateJSON struct {
	Pair      fx.Pair `json:"pair"`
	Bid       string  `json:"bid"`
	Ask       string  `json:"ask"`
	Spread    string  `json:"spread"`
	Time      string  `json:"time"`
	Tradeable bool    `json:"tradeable"`
}

func newEntry(index int, spec fx.PairSpec, r eventing.RateV1, fresh time.Time, tradeable bool, version uint64) *entry {
	e := &entry{index: index, spec: spec, rate: r, fresh: fresh, tradeable: tradeable, version: version,
		bid: spec.FormatPrice(r.Bid), ask: spec.FormatPrice(r.Ask), spread: spec.FormatPrice(r.Ask.Sub(r.Bid)),
		time: r.ProviderTime.UTC().Format(timeLayout)}
	js, err := json.Marshal(rateJSON{Pair: spec.Pair, Bid: e.bid, Ask: e.ask, Spread: e.spread, Time: e.time, Tradeable: tradeable})
	if err != nil {
		panic(fmt.Sprintf("rates: encode a rate: %v", err)) // plain strings and a bool always encode
	}
	e.json = js
	e.frame = append(append([]byte("event: rate\ndata: "), js...), '\n', '\n')
	h := fnv.New64a()
	h.Write(js)
	e.hash = h.Sum64()
	e.etagHeader = []string{etagOf([]*entry{e})}
	e.lengthHeader = []string{strconv.Itoa(len(js))}
	return e
}

// snapshot is the book at one moment: immutable, shared by every request that loads it.
type snapshot struct {
	entries []*entry // by pair index; nil where the pair has no rate yet
	present int
	// all is the GET /v1/rates body of every pair with a rate, and etag its validator; the headers
	// are ready to assign.
	all                      []byte
	etag                     string
	etagHeader, lengthHeader []string
	// gzEtag names the gzipped representation of all (see gzip.go), known before it is made so that
	// a revalidation is answered 304 without compressing; gz is all gzipped, made by the first
	// request that needs its bytes.
	gzEtag       string
	gzEtagHeader []string
	gz           lazyGzip
}

// etagOf is a strong validator of the entries' content (not of this replica's history), so replicas
// holding the same rates answer a revalidation behind a load balancer with 304 alike.
func etagOf(entries []*entry) string {
	h := fnv.New64a()
	var b [8]byte
	for _, e := range entries {
		binary.LittleEndian.PutUint64(b[:], e.hash)
		h.Write(b[:])
	}
	out := make([]byte, 0, 18)
	out = append(out, '"')
	out = strconv.AppendUint(out, h.Sum64(), 36)
	return string(append(out, '"'))
}

// appendList appends {"rates":[...]} of entries to dst.
func appendList(dst []byte, entries []*entry) []byte {
	dst = append(dst, `{"rates":[`...)
	for i, e := range entries {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, e.json...)
	}
	return append(dst, "]}"...)
}

// applied is what the book did with a rate.
type applied int

const (
	appliedAccepted applied = iota
	appliedDuplicate
	appliedStaleEpoch
	appliedIgnored // a pair this service does not serve
)

// book is the in-memory snapshot of every served pair. Writers (the partition tailers and the
// staleness sweep) serialize on mu and publish a new snapshot; readers only load the pointer.
type book struct {
	specs      []fx.PairSpec
	index      map[fx.Pair]int
	staleAfter time.Duration
	now        func() time.Time

	mu      sync.Mutex
	epochs  []int64
	version uint64
	cur     atomic.Pointer[snapshot]
}

func newBook(pairs []fx.Pair, staleAfter time.Duration, now func() time.Time) (*book, error) {
	b := &book{index: make(map[fx.Pair]int, len(pairs)), staleAfter: staleAfter, now: now,
		epochs: make([]int64, len(pairs))}
	for i, p := range pairs {
		spec, err := fx.Lookup(p)
		if err != nil {
			return nil, err
		}
		if _, dup := b.index[p]; dup {
			return nil, fmt.Errorf("pair %s listed twice", p)
		}
		b.specs = append(b.specs, spec)
		b.index[p] = i
	}
	b.publish(make([]*entry, len(pairs)))
	return b, nil
}

func (b *book) load() *snapshot { return b.cur.Load() }

// publish makes entries the current snapshot; the caller holds mu (or owns b exclusively).
func (b *book) publish(entries []*entry) {
	present := make([]*entry, 0, len(entries))
	for _, e := range entries {
		if e != nil {
			present = append(present, e)
		}
	}
	all, etag := appendList(make([]byte, 0, 160*len(present)+16), present), etagOf(present)
	gzEtag := gzipETag(etag)
	b.cur.Store(&snapshot{entries: entries, present: len(present), all: all, etag: etag,
		etagHeader: []string{etag}, lengthHeader: []string{strconv.Itoa(len(all))},
		gzEtag: gzEtag, gzEtagHeader: []string{gzEtag}})
}

// apply records r if it is strictly newer than the pair's current rate (provider time, then quote
// id) and its epoch is not older than the highest seen for the pair — the ratekeeper's rule. Its
// freshness is its receipt by the feeder (now, when unknown or ahead).
func (b *book) apply(r *eventing.RateV1) (applied, *entry) {
	return b.record(r, 0, true)
}

// seed records r, a rate the ratekeeper processed, by the same rule, after raising the pair's epoch
// fence to epochSeen, the highest the ratekeeper has seen. A rate whose receipt is unknown is never
// fresh: it is served, not tradeable.
func (b *book) seed(r *eventing.RateV1, epochSeen int64) (applied, *entry) {
	return b.record(r, epochSeen, false)
}

func (b *book) record(r *eventing.RateV1, epochSeen int64, unknownIsNow bool) (applied, *entry) {
	i, ok := b.index[r.Pair]
	if !ok {
		return appliedIgnored, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	// The fence rises to epochSeen only after r is judged: the ratekeeper accepted r under its epoch.
	defer func() { b.epochs[i] = max(b.epochs[i], epochSeen) }()
	b.epochs[i] = max(b.epochs[i], r.Epoch)
	cur := b.load()
	if old := cur.entries[i]; old != nil && !r.NewerThan(&old.rate) {
		return appliedDuplicate, nil
	}
	if r.Epoch < b.epochs[i] {
		return appliedStaleEpoch, nil
	}
	now := b.now()
	fresh := r.ReceivedAt
	if (fresh.IsZero() && unknownIsNow) || fresh.After(now) {
		fresh = now
	}
	b.version++
	e := newEntry(i, b.specs[i], *r, fresh, now.Sub(fresh) <= b.staleAfter, b.version)
	entries := append([]*entry(nil), cur.entries...)
	entries[i] = e
	b.publish(entries)
	return appliedAccepted, e
}

// sweep re-evaluates every pair's tradeable flag against the staleness limit and publishes a new
// snapshot if any flipped; it returns how many did. It runs often, so it takes the writers' lock only
// when a flag is due to flip.
func (b *book) sweep() int {
	if !b.flipDue(b.load(), b.now()) {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	cur, now := b.load(), b.now()
	var entries []*entry
	flipped := 0
	for i, e := range cur.entries {
		if e == nil {
			continue
		}
		tradeable := now.Sub(e.fresh) <= b.staleAfter
		if tradeable == e.tradeable {
			continue
		}
		if entries == nil {
			entries = append([]*entry(nil), cur.entries...)
		}
		b.version++
		entries[i] = newEntry(i, e.spec, e.rate, e.fresh, tradeable, b.version)
		flipped++
	}
	if entries != nil {
		b.publish(entries)
	}
	return flipped
}

// flipDue reports whether any entry of snap has a tradeable flag that is wrong at now.
func (b *book) flipDue(snap *snapshot, now time.Time) bool {
	for _, e := range snap.entries {
		if e != nil && (now.Sub(e.fresh) <= b.staleAfter) != e.tradeable {
			return true
		}
	}
	return false
}

// missing lists the served pairs that have no rate yet.
func (b *book) missing() []fx.Pair {
	var out []fx.Pair
	for i, e := range b.load().entries {
		if e == nil {
			out = append(out, b.specs[i].Pair)
		}
	}
	return out
}
