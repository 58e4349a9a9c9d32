package rates

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/eventing/observe"
)

// Limits of a REST request.
const (
	queryBytesMax = 1024
	// retryAfterSeconds is what a client is told to wait when a pair has no rate yet.
	retryAfterSeconds = "1"
)

// cacheControl: rates change every 50 ms, far below HTTP's one-second max-age resolution, so no cache
// may serve a stored copy without asking; revalidating with If-None-Match costs a 304 with no body.
// "public" lets shared caches (a CDN in front of 20,000 viewers) store the body and revalidate.
var (
	cacheControl    = []string{"public, max-age=0, must-revalidate"}
	contentTypeJSON = []string{"application/json"}
	// The whole board's body depends on Accept-Encoding.
	varyAcceptEncoding  = []string{"Accept-Encoding"}
	contentEncodingGzip = []string{"gzip"}
)

var errUnknownPair = errors.New("pair not served")

func (s *Service) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/rates", s.getRates)
	mux.HandleFunc("GET /v1/rates/stream", s.stream)
	mux.HandleFunc("GET /v1/rates/{pair}", s.getRate)
	mux.HandleFunc("GET /v1/rates/{pair}/candles", s.getCandles)
	mux.HandleFunc("GET /{$}", serveBoard)
	// Everything else this Service is sent (on its own, it is sent every path; in kawase dev, the
	// paths of Routes) is answered as problem+json.
	mux.HandleFunc("/", observe.Unrouted(mux))
	return mux
}

// getRates serves GET /v1/rates[?pairs=A,B]: the whole pre-serialized snapshot, or the requested
// pairs' pre-serialized rates joined, each with an ETag of its content.
func (s *Service) getRates(w http.ResponseWriter, r *http.Request) {
	snap := s.book.load()
	if r.URL.RawQuery == "" {
		s.writeBoard(w, r, snap)
		return
	}
	indexes, ok := s.parseQueryPairs(w, r)
	if !ok {
		return
	}
	if indexes == nil {
		s.writeBoard(w, r, snap)
		return
	}
	entries := make([]*entry, 0, len(indexes))
	for _, i := range indexes {
		if e := snap.entries[i]; e != nil {
			entries = append(entries, e)
		}
	}
	s.writeJSON(w, r, etagOf(entries), func(b []byte) []byte { return appendList(b, entries) }, 160*len(entries)+16)
}

// getRate serves GET /v1/rates/{pair}.
func (s *Service) getRate(w http.ResponseWriter, r *http.Request) {
	if !s.queryWithinLimit(w, r) {
		return
	}
	i, err := s.pairIndex(r.PathValue("pair"))
	if err != nil {
		s.badRequest(w, observe.Problem{Status: http.StatusNotFound, Code: "unknown_pair", Title: "unknown pair",
			Detail: err.Error()})
		return
	}
	e := s.book.load().entries[i]
	if e == nil {
		w.Header().Set("Retry-After", retryAfterSeconds)
		observe.WriteProblem(w, observe.Problem{Status: http.StatusServiceUnavailable, Code: "rate_unavailable",
			Title: "no rate yet", Detail: fmt.Sprintf("no rate for %s has arrived yet", s.book.specs[i].Pair)})
		return
	}
	s.writeReady(w, r, e.etagHeader[0], e.etagHeader, e.lengthHeader, e.json)
}

// writeBoard answers with every pair's rates, gzipped when the client accepts it.
func (s *Service) writeBoard(w http.ResponseWriter, r *http.Request, snap *snapshot) {
	h := w.Header()
	h["Vary"] = varyAcceptEncoding
	if !acceptsGzip(r.Header["Accept-Encoding"]) {
		s.writeReady(w, r, snap.etag, snap.etagHeader, snap.lengthHeader, snap.all)
		return
	}
	h["Content-Encoding"] = contentEncodingGzip
	if s.notModified(w, r, snap.gzEtag, snap.gzEtagHeader) {
		return // answered without compressing
	}
	gz := snap.gz.get(snap.all)
	s.writeBody(w, gz.lengthHeader, gz.body)
}

// writeReady answers with a body serialized before the request: 304 when If-None-Match holds etag.
// The header values are shared, read-only slices (net/http only reads them).
func (s *Service) writeReady(w http.ResponseWriter, r *http.Request, etag string, etagHeader, lengthHeader []string, body []byte) {
	if !s.notModified(w, r, etag, etagHeader) {
		s.writeBody(w, lengthHeader, body)
	}
}

// notModified sets the validator headers and answers 304 when If-None-Match holds etag.
func (s *Service) notModified(w http.ResponseWriter, r *http.Request, etag string, etagHeader []string) bool {
	h := w.Header()
	h["Etag"] = etagHeader
	h["Cache-Control"] = cacheControl
	if ifNoneMatch(r, etag) {
		s.metrics.notModified.Inc()
		w.WriteHeader(http.StatusNotModified)
		return true
	}
	return false
}

// ifNoneMatch reports whether the request's If-None-Match headers, all of them (a list may be split
// over several), hold etag or *.
func ifNoneMatch(r *http.Request, etag string) bool {
	inm := r.Header["If-None-Match"]
	return len(inm) > 0 && etagMatches(strings.Join(inm, ","), etag) // Join of one value does not copy
}

// writeBody sends a JSON body serialized before the request.
func (s *Service) writeBody(w http.ResponseWriter, lengthHeader []string, body []byte) {
	h := w.Header()
	h["Content-Type"] = contentTypeJSON
	h["Content-Length"] = lengthHeader
	s.metrics.served.Inc()
	_, _ = w.Write(body)
}

// bodyPool recycles the buffers of assembled bodies.
var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 8<<10); return &b }}

// writeJSON answers 304 when If-None-Match holds etag, else the body build appends; the body is only
// assembled when it is sent.
func (s *Service) writeJSON(w http.ResponseWriter, r *http.Request, etag string, build func([]byte) []byte, sizeHint int) {
	h := w.Header()
	h["Etag"] = []string{etag}
	h["Cache-Control"] = cacheControl
	if ifNoneMatch(r, etag) {
		s.metrics.notModified.Inc()
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h["Content-Type"] = contentTypeJSON
	bp := bodyPool.Get().(*[]byte)
	body := build(slices.Grow((*bp)[:0], sizeHint))
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	s.metrics.served.Inc()
	_, _ = w.Write(body)
	*bp = body
	bodyPool.Put(bp)
}

// etagMatches applies If-None-Match's weak comparison: any listed tag (or *) equal to etag.
func etagMatches(header, etag string) bool {
	if header == etag {
		return true
	}
	for part := range strings.SplitSeq(header, ",") {
		part = strings.TrimPrefix(strings.TrimSpace(part), "W/")
		if part == etag || part == "*" {
			return true
		}
	}
	return false
}

// queryWithinLimit answers 414 and returns false when the query string is over queryBytesMax.
func (s *Service) queryWithinLimit(w http.ResponseWriter, r *http.Request) bool {
	if len(r.URL.RawQuery) <= queryBytesMax {
		return true
	}
	s.badRequest(w, observe.Problem{Status: http.StatusRequestURITooLong, Code: "query_too_long",
		Title: "query too long", Detail: fmt.Sprintf("the query string is at most %d bytes", queryBytesMax)})
	return false
}

// parseQueryPairs reads ?pairs=; it returns nil indexes for "every pair" (no pairs parameter) and
// false once it has answered a bad request. Other parameters are left alone (cache-busters).
func (s *Service) parseQueryPairs(w http.ResponseWriter, r *http.Request) ([]int, bool) {
	if !s.queryWithinLimit(w, r) {
		return nil, false
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		s.badRequest(w, observe.Problem{Status: http.StatusBadRequest, Code: "invalid_query", Title: "invalid query",
			Detail: err.Error()})
		return nil, false
	}
	values := q["pairs"]
	if len(values) > 1 {
		s.badRequest(w, observe.Problem{Status: http.StatusBadRequest, Code: "invalid_pairs", Title: "invalid pairs",
			Detail: "give pairs once, comma-separated"})
		return nil, false
	}
	if len(values) == 0 {
		return nil, true
	}
	if strings.TrimSpace(values[0]) == "" {
		// Not "every pair": a client that meant a list and sent none must not get the whole board.
		s.badRequest(w, observe.Problem{Status: http.StatusBadRequest, Code: "invalid_pairs", Title: "invalid pairs",
			Detail: "pairs is empty: name at least one pair, or leave pairs out for every pair"})
		return nil, false
	}
	indexes, err := s.pairIndexes(values[0])
	if err != nil {
		s.badRequest(w, observe.Problem{Status: http.StatusBadRequest, Code: "invalid_pairs", Title: "invalid pairs",
			Detail: err.Error()})
		return nil, false
	}
	return indexes, true
}

// pairIndexes parses a comma-separated pair list into book indexes; empty means every pair (nil).
func (s *Service) pairIndexes(list string) ([]int, error) {
	pairs, err := fx.ParsePairList(list)
	if err != nil {
		return nil, err
	}
	if len(pairs) == 0 {
		return nil, nil
	}
	out := make([]int, len(pairs))
	for n, p := range pairs {
		i, ok := s.book.index[p]
		if !ok {
			return nil, fmt.Errorf("%w: %s", errUnknownPair, p)
		}
		out[n] = i
	}
	return out, nil
}

func (s *Service) pairIndex(name string) (int, error) {
	p := fx.Pair(strings.ToUpper(name))
	if _, err := fx.Lookup(p); err != nil {
		return 0, err
	}
	i, ok := s.book.index[p]
	if !ok {
		return 0, fmt.Errorf("%w: %s", errUnknownPair, p)
	}
	return i, nil
}

func (s *Service) badRequest(w http.ResponseWriter, p observe.Problem) {
	s.metrics.badRequests.Inc()
	observe.WriteProblem(w, p)
}
