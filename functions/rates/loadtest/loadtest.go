// Package loadtest measures the rates API from the outside: Run drives GET requests at a URL with a
// number of concurrent keep-alive clients and reports requests/s and latency percentiles; Stream
// holds many SSE clients open and reports how late updates reach them. The package benchmarks and
// the bench program (with `kawase dev` running) both use it.
package loadtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of a load run.
const (
	concurrencyMax = 10_000
	// offeredMinPerSec and offeredMaxPerSec bound an open-loop rate: at least one request a second,
	// at most far beyond what one machine can answer.
	offeredMinPerSec   = 1
	offeredMaxPerSec   = 1_000_000
	latencySamplesMax  = 2_000_000
	requestTimeoutMs   = 10_000
	streamClientsMax   = 20_000
	connectTimeoutMs   = 30_000
	streamDialBatchMax = 200
	// streamReadBufferBytes holds a whole update batch of 50 pairs.
	streamReadBufferBytes = 16 << 10
)

// Options describes a GET load.
type Options struct {
	// URL is requested with GET, e.g. http://127.0.0.1:8080/v1/rates.
	URL string
	// Concurrency is the number of clients, each with its own keep-alive connection.
	Concurrency int
	// Duration of the run; ignored when Requests is set.
	Duration time.Duration
	// Requests, when positive, ends the run after this many requests in all.
	Requests int
	// Revalidate sends If-None-Match with the last ETag seen, as a browser cache would; answers
	// are then mostly 304.
	Revalidate bool
	// Client is the HTTP client to use; nil builds one with a connection per worker.
	Client *http.Client
	// Wire sends each request as fixed HTTP/1.1 bytes on the worker's own keep-alive connection and
	// reads only the status and headers it needs, as wrk does, instead of using net/http's client;
	// the generator then takes far less of the CPU it shares with the server under test. Client is
	// ignored. The server must answer with Content-Length (not chunked).
	Wire bool
	// AcceptEncoding, when set, is sent as the Accept-Encoding header (e.g. "gzip", as browsers
	// ask); the answer is counted as it arrives, not decompressed. Wire mode only.
	AcceptEncoding string
	// OfferedPerSec, when positive, offers this many requests a second in all, an open loop as
	// wrk2 drives, instead of each client sending its next request as soon as the last is answered.
	// Request i is due at start + i/OfferedPerSec and goes out on the first free client; its latency
	// counts from when it was due, so a server that falls behind is charged for the wait too, not
	// only for the requests it got to. This is how "sustains N requests/s with p99 under T" is
	// measured: a closed loop only reports the latency at whatever rate the server saturates. The
	// generator's own lateness in waking up for a request counts too, so on a shared machine the
	// figure is an upper bound.
	OfferedPerSec float64
}

// schedule hands out the run's requests: in a closed loop each is due when claimed; in an open
// loop request i is due at start + i·interval, and none is due at or after end.
type schedule struct {
	start, end time.Time
	interval   time.Duration
	requests   int64
	claimed    atomic.Int64
}

// next claims the next request and says when it is due (the zero time in a closed loop, where it
// is due at once); false once the run has no more.
func (s *schedule) next() (time.Time, bool) {
	i := s.claimed.Add(1) - 1
	if s.requests > 0 && i >= s.requests {
		return time.Time{}, false
	}
	if s.interval == 0 {
		return time.Time{}, true
	}
	due := s.start.Add(time.Duration(i) * s.interval)
	if s.requests <= 0 && !due.Before(s.end) {
		return time.Time{}, false
	}
	return due, true
}

// due is how many requests an open loop has due in all: o.Requests, or those due before the end.
func (s *schedule) due() int64 {
	if s.requests > 0 {
		return s.requests
	}
	return int64((s.end.Sub(s.start) + s.interval - 1) / s.interval)
}

// pacer sleeps a worker until its next request is due, with one timer for the whole run.
type pacer struct{ timer *time.Timer }

// until waits until t (at once for the zero time); false when ctx ends first.
func (p *pacer) until(ctx context.Context, t time.Time) bool {
	if t.IsZero() {
		return ctx.Err() == nil
	}
	wait := time.Until(t)
	if wait <= 0 {
		return ctx.Err() == nil
	}
	if p.timer == nil {
		p.timer = time.NewTimer(wait)
	} else {
		p.timer.Reset(wait)
	}
	select {
	case <-ctx.Done():
		p.timer.Stop()
		return false
	case <-p.timer.C:
		return true
	}
}

// getter makes one request and returns its latency, status and body bytes.
type getter interface {
	get(ctx context.Context) (time.Duration, int, int64, error)
	// close releases what the getter holds alone when the run ends.
	close()
}

// Result is what a GET load measured.
type Result struct {
	Requests    int64
	NotModified int64
	// Errors counts transport errors and answers other than 200 and 304.
	Errors int64
	// OfferedPerSec is the open loop's rate (0 for a closed loop): a server that keeps up answers
	// RequestsPerSec close to it.
	OfferedPerSec float64
	// Missed counts the open loop's requests that fell due but were not answered by the end: not
	// sent because every client was still waiting, or still in flight. They are the latest of the
	// run and have no latency to count, so a run with many is not sustaining its rate whatever its
	// percentiles say.
	Missed         int64
	Bytes          int64
	Elapsed        time.Duration
	RequestsPerSec float64
	P50, P99, Max  time.Duration
}

// String summarizes the run on one line.
func (r Result) String() string {
	offered := ""
	if r.OfferedPerSec > 0 {
		offered = fmt.Sprintf(" (offered %.0f, %d missed)", r.OfferedPerSec, r.Missed)
	}
	return fmt.Sprintf("%d requests in %v: %.0f req/s%s, p50 %v, p99 %v, max %v, %d not modified, %d errors",
		r.Requests, r.Elapsed.Round(time.Millisecond), r.RequestsPerSec, offered, r.P50, r.P99, r.Max, r.NotModified, r.Errors)
}

// NewClient returns an HTTP client that keeps one idle connection per worker.
func NewClient(concurrency int) *http.Client {
	return &http.Client{Timeout: requestTimeoutMs * time.Millisecond, Transport: &http.Transport{
		MaxIdleConns: concurrency, MaxIdleConnsPerHost: concurrency, MaxConnsPerHost: concurrency,
		DisableCompression: true, IdleConnTimeout: time.Minute, ReadBufferSize: 64 << 10}}
}

// Run drives the load and returns its figures; it fails only on bad options or when every request
// failed.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.URL == "" || o.Concurrency < 1 || o.Concurrency > concurrencyMax || (o.Requests <= 0 && o.Duration <= 0) {
		return Result{}, fmt.Errorf("loadtest: need a URL, 1 to %d clients and a duration or request count", concurrencyMax)
	}
	if r := o.OfferedPerSec; r != 0 && !(r >= offeredMinPerSec && r <= offeredMaxPerSec) {
		return Result{}, fmt.Errorf("loadtest: an offered rate is 0 (closed loop) or %d to %d requests/s, not %v",
			offeredMinPerSec, offeredMaxPerSec, r)
	}
	if o.AcceptEncoding != "" && !o.Wire {
		return Result{}, fmt.Errorf("loadtest: AcceptEncoding needs Wire")
	}
	var newGetter func() getter
	if o.Wire {
		proto, err := newWireWorker(o.URL, o.Revalidate, o.AcceptEncoding)
		if err != nil {
			return Result{}, err
		}
		newGetter = func() getter { ww := *proto; return &ww }
	} else {
		hc := o.Client
		if hc == nil {
			hc = NewClient(o.Concurrency)
		}
		newGetter = func() getter { return &worker{hc: hc, url: o.URL, revalidate: o.Revalidate} }
	}
	sched := &schedule{start: time.Now(), requests: int64(o.Requests)}
	sched.end = sched.start.Add(o.Duration)
	if o.OfferedPerSec > 0 {
		sched.interval = time.Duration(float64(time.Second) / o.OfferedPerSec)
	}
	if o.Requests <= 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, sched.end)
		defer cancel()
	}
	var (
		requests, nm, errs, nbs atomic.Int64
		mu                      sync.Mutex
		all                     []time.Duration
		wg                      sync.WaitGroup
	)
	perWorkerMax := latencySamplesMax / o.Concurrency
	for range o.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := newGetter()
			defer w.close()
			lat := make([]time.Duration, 0, min(perWorkerMax, 1<<14))
			var p pacer
			for ctx.Err() == nil {
				due, ok := sched.next()
				if !ok || !p.until(ctx, due) {
					break
				}
				var late time.Duration // waiting for a free client, in an open loop
				if !due.IsZero() {
					late = time.Since(due)
				}
				d, status, n, err := w.get(ctx)
				if ctx.Err() != nil && o.Requests <= 0 {
					break // the run ended mid-request: not a measurement
				}
				requests.Add(1)
				nbs.Add(n)
				switch {
				case err != nil || (status != http.StatusOK && status != http.StatusNotModified):
					errs.Add(1)
				case status == http.StatusNotModified:
					nm.Add(1)
				}
				if len(lat) < perWorkerMax {
					lat = append(lat, late+d)
				}
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(sched.start)
	res := Result{Requests: requests.Load(), NotModified: nm.Load(), Errors: errs.Load(), Bytes: nbs.Load(), Elapsed: elapsed,
		OfferedPerSec: o.OfferedPerSec}
	res.RequestsPerSec = float64(res.Requests) / elapsed.Seconds()
	if sched.interval > 0 {
		res.Missed = max(0, sched.due()-res.Requests)
	}
	res.P50, res.P99, res.Max = percentiles(all)
	if res.Requests > 0 && res.Errors == res.Requests {
		return res, fmt.Errorf("loadtest: all %d requests to %s failed", res.Requests, o.URL)
	}
	return res, nil
}

type worker struct {
	hc         *http.Client
	url        string
	revalidate bool
	etag       string
	req        *http.Request
}

// get makes one request; the worker's request is reused, as requests run one after another.
// close does nothing: the workers share the client and its idle connections.
func (w *worker) close() {}

func (w *worker) get(ctx context.Context) (time.Duration, int, int64, error) {
	if w.req == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.url, nil)
		if err != nil {
			return 0, 0, 0, err
		}
		w.req = req
	}
	req := w.req
	if w.revalidate && w.etag != "" {
		req.Header["If-None-Match"] = []string{w.etag}
	}
	start := time.Now()
	resp, err := w.hc.Do(req)
	if err != nil {
		return time.Since(start), 0, 0, err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	if e := resp.Header.Get("Etag"); e != "" {
		w.etag = e
	}
	return d, resp.StatusCode, n, err
}

// percentiles returns p50, p99 and the maximum of samples (sorted in place).
func percentiles(samples []time.Duration) (p50, p99, maxD time.Duration) {
	if len(samples) == 0 {
		return 0, 0, 0
	}
	slices.Sort(samples)
	at := func(q float64) time.Duration { return samples[min(len(samples)-1, int(q*float64(len(samples))))] }
	return at(0.50), at(0.99), samples[len(samples)-1]
}

// StreamOptions describes an SSE load.
type StreamOptions struct {
	// URL is the stream URL, e.g. http://127.0.0.1:8080/v1/rates/stream.
	URL string
	// Clients is the number of concurrent streams.
	Clients int
	// Duration is how long the streams are held open after they all connected.
	Duration time.Duration
}

// StreamResult is what an SSE load measured. Lag is from the server publishing an update batch (its
// ": emitted" comment) to a client having read it; Age is from the rate's provider time to then.
type StreamResult struct {
	Clients, Connected, Ended int
	Updates                   int64
	LagP50, LagP99, LagMax    time.Duration
	AgeP50, AgeP99            time.Duration
	ConnectTime               time.Duration
}

// String summarizes the run on one line.
func (r StreamResult) String() string {
	return fmt.Sprintf("%d/%d streams, %d updates: lag p50 %v p99 %v max %v; rate age p50 %v p99 %v; %d ended early",
		r.Connected, r.Clients, r.Updates, r.LagP50, r.LagP99, r.LagMax, r.AgeP50, r.AgeP99, r.Ended)
}

// Stream opens o.Clients streams, waits until every one has its snapshot, then records for
// o.Duration how late each update batch arrives in full. Its reader only scans for the batch
// markers, so thousands of clients can share a machine with the server.
func Stream(ctx context.Context, o StreamOptions) (StreamResult, error) {
	if o.URL == "" || o.Clients < 1 || o.Clients > streamClientsMax || o.Duration <= 0 {
		return StreamResult{}, fmt.Errorf("loadtest: need a stream URL, 1 to %d clients and a duration", streamClientsMax)
	}
	hc := NewClient(o.Clients)
	hc.Timeout = 0
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		connected, ended sync.WaitGroup
		measuring        atomic.Bool
		mu               sync.Mutex
		lags, ages       []time.Duration
		updates          atomic.Int64
		endedEarly       atomic.Int64
		ready            atomic.Int64
	)
	connected.Add(o.Clients)
	start := time.Now()
	for i := range o.Clients {
		if i%streamDialBatchMax == 0 && i > 0 {
			time.Sleep(10 * time.Millisecond) // pace the dialing so the listener's backlog keeps up
		}
		ended.Add(1)
		go func() {
			defer ended.Done()
			var once sync.Once
			markReady := func() { once.Do(func() { ready.Add(1); connected.Done() }) }
			defer markReady()
			sr := streamReader{onSnapshot: markReady, measuring: &measuring}
			err := sr.read(ctx, hc, o.URL)
			if ctx.Err() == nil && err != nil {
				endedEarly.Add(1)
			}
			updates.Add(int64(len(sr.lags)))
			mu.Lock()
			lags, ages = append(lags, sr.lags...), append(ages, sr.ages...)
			mu.Unlock()
		}()
	}
	if !waitGroup(ctx, &connected, connectTimeoutMs*time.Millisecond) {
		cancel()
		ended.Wait()
		return StreamResult{Clients: o.Clients}, fmt.Errorf("loadtest: streams not connected after %d ms", connectTimeoutMs)
	}
	connectTime := time.Since(start)
	measuring.Store(true)
	select {
	case <-ctx.Done():
	case <-time.After(o.Duration):
	}
	measuring.Store(false)
	cancel()
	ended.Wait()
	res := StreamResult{Clients: o.Clients, Connected: int(ready.Load()), Ended: int(endedEarly.Load()),
		Updates: updates.Load(), ConnectTime: connectTime}
	res.LagP50, res.LagP99, res.LagMax = percentiles(lags)
	res.AgeP50, res.AgeP99, _ = percentiles(ages)
	return res, nil
}

// streamReader reads one SSE stream cheaply: it only looks at the ": emitted" comment opening each
// update batch, the first rate's time, and the snapshot event. A batch counts as delivered once
// everything the connection had delivered is consumed (the server writes a batch in one write).
type streamReader struct {
	onSnapshot   func()
	snapshotSeen bool
	measuring    *atomic.Bool
	lags, ages   []time.Duration
}

var (
	emittedMarker  = []byte(": emitted ")
	emittedLine    = []byte("\n: emitted ")
	snapshotMarker = []byte("event: snapshot")
	dataMarker     = []byte("\ndata: ")
	eventEnd       = []byte("\n\n")
)

// read holds one stream and, for each block of complete events it receives, records the lag of the
// (first) update batch in it once the block is read in full. A server writes a
// batch in one piece, so a read usually returns exactly one block; the reader searches it for the
// markers instead of reading it line by line.
func (s *streamReader) read(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("stream %s: %s", url, resp.Status)
	}
	buf := make([]byte, streamReadBufferBytes)
	filled := 0
	for {
		if filled == len(buf) {
			buf = append(buf, make([]byte, len(buf))...) // an event larger than the buffer
		}
		n, err := resp.Body.Read(buf[filled:])
		filled += n
		if bytes.HasSuffix(buf[:filled], eventEnd) { // the usual case: whole events
			s.block(buf[:filled])
			filled = 0
		} else if end := bytes.LastIndex(buf[:filled], eventEnd); end >= 0 {
			s.block(buf[:end+len(eventEnd)])
			filled = copy(buf, buf[end+len(eventEnd):filled])
		}
		if err != nil {
			return err
		}
	}
}

// block handles complete events: the snapshot, or an update batch whose lag is now known.
func (s *streamReader) block(b []byte) {
	if !s.snapshotSeen && bytes.Contains(b, snapshotMarker) {
		s.snapshotSeen = true
		s.onSnapshot()
	}
	if !s.measuring.Load() {
		return
	}
	// The block's first batch, the oldest if it holds several (a client behind): a batch is written
	// in one piece starting with its comment, so the block almost always starts with it.
	i := 0
	if !bytes.HasPrefix(b, emittedMarker) {
		if i = bytes.Index(b, emittedLine); i < 0 {
			return
		}
		i++
	}
	now := time.Now()
	rest := b[i+len(emittedMarker):]
	eol := bytes.IndexByte(rest, '\n')
	if eol < 0 {
		return
	}
	us, err := strconv.ParseInt(string(rest[:eol]), 10, 64)
	if err != nil {
		return
	}
	s.lags = append(s.lags, now.Sub(time.UnixMicro(us)))
	if d := bytes.Index(rest, dataMarker); d >= 0 {
		line := rest[d+len(dataMarker):]
		if e := bytes.IndexByte(line, '\n'); e >= 0 {
			line = line[:e]
		}
		if provider, ok := rateTime(string(line)); ok {
			s.ages = append(s.ages, now.Sub(provider))
		}
	}
}

func waitGroup(ctx context.Context, wg *sync.WaitGroup, timeout time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
	case <-ctx.Done():
	}
	return false
}

// rateTime extracts "time" from a rate's JSON without a full decode.
func rateTime(data string) (time.Time, bool) {
	const key = `"time":"`
	i := strings.Index(data, key)
	if i < 0 || len(data) < i+len(key)+24 {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, data[i+len(key):i+len(key)+24])
	return t, err == nil
}

// Fetch gets url once as the load will, asking for acceptEncoding and not decompressing the answer,
// and returns the body and its Content-Encoding: the bytes a bare server must serve to be compared.
func Fetch(ctx context.Context, url, acceptEncoding string) ([]byte, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, "", fmt.Errorf("loadtest: %w", err)
	}
	if acceptEncoding != "" {
		req.Header.Set("Accept-Encoding", acceptEncoding)
	}
	resp, err := (&http.Client{Transport: &http.Transport{DisableCompression: true}}).Do(req)
	if err != nil {
		return nil, "", fmt.Errorf("loadtest: GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("loadtest: GET %s: %s %v", url, resp.Status, err)
	}
	return body, resp.Header.Get("Content-Encoding"), nil
}
