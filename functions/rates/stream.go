package rates

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/kawase-fx/kawase/eventing/observe"
)

// Limits of a stream client: a client whose backlog exceeds streamBacklogMax batches (two seconds
// at the default interval) or whose write blocks for streamWriteTimeoutMs is dropped, so a slow
// client never holds more than a few pointers and one write buffer.
const (
	streamBacklogMax = 8
	// streamPublishGroups is how many phases of the conflation interval the subscribers are spread
	// over (see hub).
	streamPublishGroups  = 10
	streamWriteTimeoutMs = 5_000
	// streamRetryMs is the reconnection delay an EventSource is told to use.
	streamRetryMs = 1_000
)

// ErrTooManyStreams is returned when a replica already serves as many streams of a kind as it may:
// StreamClientsMax SSE streams, or WatchClientsMax gRPC WatchRates streams.
var ErrTooManyStreams = errors.New("too many stream clients")

// streamKind is what a stream client is; each kind has its own limit, so one kind cannot crowd the
// other out (20,000 anonymous SSE viewers must not lock the ledger's WatchRates feed out).
type streamKind int

const (
	streamSSE streamKind = iota
	streamWatch
	streamKinds
)

// errDropped ends a stream whose client fell behind.
var errDropped = errors.New("stream client fell behind and was dropped")

// batch is one conflation interval's changed entries, shared read-only by every subscriber, with
// the SSE bytes of all of them made once for the clients that watch every pair.
type batch struct {
	emitted time.Time
	entries []*entry
	payload []byte
}

func newBatch(emitted time.Time, entries []*entry) *batch {
	n := 32
	for _, e := range entries {
		n += len(e.frame)
	}
	return &batch{emitted: emitted, entries: entries, payload: appendUpdates(make([]byte, 0, n), emitted, entries)}
}

// appendUpdates appends the SSE bytes of one update write: the emitted comment, then a frame per entry.
func appendUpdates(dst []byte, emitted time.Time, entries []*entry) []byte {
	dst = append(dst, ": emitted "...)
	dst = strconv.AppendInt(dst, emitted.UnixMicro(), 10)
	dst = append(dst, '\n')
	for _, e := range entries {
		dst = append(dst, e.frame...)
	}
	return dst
}

// subscriber is one stream client as the hub sees it.
type subscriber struct {
	filter  []bool // by pair index; nil means every pair
	group   int    // the hub group it is published with
	kind    streamKind
	ch      chan *batch
	gone    chan struct{} // closed when dropped or when the hub stops
	goneErr error
	once    sync.Once
}

func (s *subscriber) end(err error) {
	s.once.Do(func() {
		s.goneErr = err
		close(s.gone)
	})
}

func (s *subscriber) wants(i int) bool { return s.filter == nil || s.filter[i] }

// takesWhole reports whether b can be sent as it is — the common case of a client watching every
// pair and keeping up: no filter, nothing queued behind b, and every entry newer than what was sent
// — and if so records it as sent.
func (s *subscriber) takesWhole(b *batch, sent []uint64) bool {
	if s.filter != nil || len(s.ch) > 0 {
		return false
	}
	for _, e := range b.entries {
		if e.version <= sent[e.index] {
			return false
		}
	}
	for _, e := range b.entries {
		sent[e.index] = e.version
	}
	return true
}

// conflate merges first and every batch already queued behind it into the newest entry per wanted
// pair not yet sent (sent holds the versions sent, by pair index), in pair order.
func (s *subscriber) conflate(first *batch, sent []uint64, latest []*entry) []*entry {
	merge := func(b *batch) {
		for _, e := range b.entries {
			if s.wants(e.index) && e.version > sent[e.index] && (latest[e.index] == nil || e.version > latest[e.index].version) {
				latest[e.index] = e
			}
		}
	}
	merge(first)
	for more := true; more; {
		select {
		case b := <-s.ch:
			merge(b)
		default:
			more = false
		}
	}
	var out []*entry
	for i, e := range latest {
		if e != nil {
			out = append(out, e)
			sent[i] = e.version
			latest[i] = nil
		}
	}
	return out
}

// hub publishes, once per conflation interval, the entries that changed since the last interval to
// every subscriber: one shared batch per group, so fan-out costs one channel send per client per
// interval however many rates arrived. The subscribers are spread over streamPublishGroups groups,
// each published at its own phase of the interval, so a tick wakes a tenth of the clients rather than
// all of them at once: with 5,000 streams one burst delayed the last client by the whole fan-out and
// stalled everything else the process serves meanwhile. Each client still gets at most one update
// per pair per interval.
type hub struct {
	book *book
	cfg  Config
	m    *metrics

	// limits is the most subscribers of each kind (StreamClientsMax, WatchClientsMax).
	limits [streamKinds]int

	mu      sync.Mutex
	groups  [streamPublishGroups]hubGroup
	count   [streamKinds]int
	stopped bool
}

// hubGroup is the subscribers published at one phase of the interval and what was last published
// to them.
type hubGroup struct {
	subs map[*subscriber]struct{}
	sent []uint64
}

func newHub(b *book, cfg Config, m *metrics) *hub {
	h := &hub{book: b, cfg: cfg, m: m, limits: [streamKinds]int{streamSSE: cfg.StreamClientsMax, streamWatch: cfg.WatchClientsMax}}
	for i := range h.groups {
		h.groups[i] = hubGroup{subs: map[*subscriber]struct{}{}, sent: make([]uint64, len(b.specs))}
	}
	return h
}

// subscribe adds a subscriber of kind to the smallest group, unless the kind's limit is reached.
func (h *hub) subscribe(kind streamKind, filter []bool) (*subscriber, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return nil, context.Canceled
	}
	if h.count[kind] >= h.limits[kind] {
		return nil, ErrTooManyStreams
	}
	g := 0
	for i := range h.groups {
		if len(h.groups[i].subs) < len(h.groups[g].subs) {
			g = i
		}
	}
	s := &subscriber{filter: filter, group: g, kind: kind, ch: make(chan *batch, streamBacklogMax), gone: make(chan struct{})}
	h.groups[g].subs[s] = struct{}{}
	h.count[kind]++
	h.m.streamClients.Inc()
	return s, nil
}

func (h *hub) unsubscribe(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.remove(s)
}

// remove takes s out of its group; h.mu must be held.
func (h *hub) remove(s *subscriber) bool {
	subs := h.groups[s.group].subs
	if _, ok := subs[s]; !ok {
		return false
	}
	delete(subs, s)
	h.count[s.kind]--
	h.m.streamClients.Dec()
	return true
}

// run publishes one group per tick, every group once per conflation interval.
func (h *hub) run(ctx context.Context) error {
	t := time.NewTicker(max(h.cfg.ConflateInterval/streamPublishGroups, time.Microsecond))
	defer t.Stop()
	defer h.stop()
	for g := 0; ; g = (g + 1) % streamPublishGroups {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			h.publish(g, time.Now())
		}
	}
}

// publish sends the entries changed since group g's last publication to its subscribers, dropping
// those whose backlog is full.
func (h *hub) publish(g int, now time.Time) {
	snap := h.book.load()
	h.mu.Lock()
	defer h.mu.Unlock()
	grp := &h.groups[g]
	if len(grp.subs) == 0 {
		return
	}
	var changed []*entry
	for i, e := range snap.entries {
		if e != nil && e.version > grp.sent[i] {
			changed = append(changed, e)
			grp.sent[i] = e.version
		}
	}
	if len(changed) == 0 {
		return
	}
	b := newBatch(now, changed)
	h.m.streamBatches.Inc()
	for s := range grp.subs {
		select {
		case s.ch <- b:
		default:
			h.remove(s)
			h.m.streamDropped.Inc()
			s.end(errDropped)
		}
	}
}

// stop ends every stream (the server is shutting down) and refuses new ones.
func (h *hub) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	for g := range h.groups {
		for s := range h.groups[g].subs {
			h.remove(s)
			s.end(context.Canceled)
		}
	}
}

// filterOf turns pair indexes into a subscriber filter (nil indexes: every pair).
func filterOf(indexes []int, n int) []bool {
	if indexes == nil {
		return nil
	}
	f := make([]bool, n)
	for _, i := range indexes {
		f[i] = true
	}
	return f
}

// stream serves GET /v1/rates/stream[?pairs=]: an SSE "snapshot" event with the requested pairs,
// then "rate" events conflated to one per pair per interval, and a "heartbeat" event every
// HeartbeatInterval. Each update write starts with a comment holding when the hub published it
// (": emitted <unix µs>"), for measuring delivery lag.
func (s *Service) stream(w http.ResponseWriter, r *http.Request) {
	indexes, ok := s.parseQueryPairs(w, r)
	if !ok {
		return
	}
	sub, err := s.hub.subscribe(streamSSE, filterOf(indexes, len(s.book.specs)))
	if err != nil {
		w.Header().Set("Retry-After", retryAfterSeconds)
		observe.WriteProblem(w, observe.Problem{Status: http.StatusServiceUnavailable, Code: "too_many_streams",
			Title: "too many streams", Detail: err.Error()})
		return
	}
	defer s.hub.unsubscribe(sub)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	// no-transform: a compressing proxy would buffer the stream to compress it.
	h.Set("Cache-Control", "no-store, no-transform")
	h.Set("X-Accel-Buffering", "no")
	if r.Method == http.MethodHead {
		return
	}
	ctx, out, err := openStream(r.Context(), w, r)
	if err != nil {
		return // the connection failed while the response head was written
	}
	defer out.close()
	sse := &sseWriter{out: out}
	defer abortWritesOnDrop(sub, out)()
	sent := make([]uint64, len(s.book.specs))
	if err := sse.snapshot(s.book.load(), sub, sent); err != nil {
		return
	}
	s.pump(ctx, sse, sub, sent)
}

// abortWritesOnDrop makes a write blocked on a dropped (or shut down) stream fail at once instead of
// at its deadline, so the connection is released immediately. The returned func must run before the
// handler returns: the connection may serve another request afterwards.
func abortWritesOnDrop(sub *subscriber, out streamOut) (stop func()) {
	var (
		mu       sync.Mutex
		finished bool
		done     = make(chan struct{})
	)
	go func() {
		select {
		case <-sub.gone:
			mu.Lock()
			if !finished {
				out.abort()
			}
			mu.Unlock()
		case <-done:
		}
	}()
	return func() {
		mu.Lock()
		finished = true
		mu.Unlock()
		close(done)
	}
}

func (s *Service) pump(ctx context.Context, sse *sseWriter, sub *subscriber, sent []uint64) {
	heartbeat := time.NewTicker(s.cfg.HeartbeatInterval)
	defer heartbeat.Stop()
	latest := make([]*entry, len(sent))
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.gone:
			return
		case now := <-heartbeat.C:
			if sse.heartbeat(now) != nil {
				return
			}
		case b := <-sub.ch:
			if sub.takesWhole(b, sent) {
				if sse.write(b.payload) != nil {
					return
				}
				continue
			}
			entries := sub.conflate(b, sent, latest)
			if len(entries) > 0 && sse.updates(b.emitted, entries) != nil {
				return
			}
		}
	}
}

// sseWriter writes Server-Sent Events, each write in one piece.
type sseWriter struct {
	out streamOut
	buf []byte
}

func (w *sseWriter) flush() error { return w.out.write(w.buf) }

func (w *sseWriter) write(b []byte) error { return w.out.write(b) }

func (w *sseWriter) snapshot(snap *snapshot, sub *subscriber, sent []uint64) error {
	var entries []*entry
	for i, e := range snap.entries {
		if e != nil && sub.wants(i) {
			entries = append(entries, e)
			sent[i] = e.version
		}
	}
	w.buf = append(w.buf[:0], "retry: "+strconv.Itoa(streamRetryMs)+"\nevent: snapshot\ndata: "...)
	w.buf = appendList(w.buf, entries)
	w.buf = append(w.buf, "\n\n"...)
	return w.flush()
}

func (w *sseWriter) updates(emitted time.Time, entries []*entry) error {
	w.buf = appendUpdates(w.buf[:0], emitted, entries)
	return w.flush()
}

func (w *sseWriter) heartbeat(now time.Time) error {
	w.buf = append(w.buf[:0], `event: heartbeat`+"\n"+`data: {"time":"`...)
	w.buf = now.UTC().AppendFormat(w.buf, timeLayout)
	w.buf = append(w.buf, "\"}\n\n"...)
	return w.flush()
}
