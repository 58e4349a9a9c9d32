package rates

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// streamWriteDeadlineRefreshMs is how close to its write deadline a stream's connection may get
// before the deadline is pushed out again: refreshing on every write costs a timer update per client
// per batch, so a write gets between streamWriteTimeoutMs-streamWriteDeadlineRefreshMs and
// streamWriteTimeoutMs to finish.
const streamWriteDeadlineRefreshMs = streamWriteTimeoutMs / 2

// streamWatchReadBytes is the read size of the goroutine that watches a taken-over stream's
// connection for the client closing it; a client has nothing to send, so anything read is dropped.
const streamWatchReadBytes = 64

// errStreamAborted fails writes to a stream that was dropped or shut down.
var errStreamAborted = errors.New("stream aborted")

// streamOut is where a stream's bytes go: each write reaches the client in one piece or fails.
type streamOut interface {
	write(b []byte) error
	// abort makes a blocked write fail now and every later one fail at once; it may run
	// concurrently with write.
	abort()
	close()
}

// openStream starts the 200 response of a stream whose headers are set on w. On an HTTP/1.x
// connection it takes the connection over (Hijack) and writes the head itself, with the body
// delimited by closing the connection: each update batch is then one write system call, instead of
// net/http's chunk header, chunk and flush, which is most of the cost of fanning a batch out to
// thousands of clients. Elsewhere (HTTP/2, or a ResponseWriter that cannot be hijacked) it streams
// through w. The returned context ends when the client goes away.
func openStream(ctx context.Context, w http.ResponseWriter, r *http.Request) (context.Context, streamOut, error) {
	rc := http.NewResponseController(w)
	if r.ProtoMajor == 1 {
		conn, brw, err := rc.Hijack()
		if err == nil {
			return startRawStream(ctx, conn, brw, w.Header())
		}
		if !errors.Is(err, http.ErrNotSupported) {
			return ctx, nil, fmt.Errorf("take over stream connection: %w", err)
		}
	}
	w.WriteHeader(http.StatusOK)
	out := &responseOut{w: w, rc: rc}
	return ctx, out, out.write(nil)
}

// startRawStream writes the response head on a hijacked connection and watches it for the client
// closing it (the request has no body, so anything read is ignored until the connection ends).
func startRawStream(ctx context.Context, conn net.Conn, brw interface{ Flush() error }, header http.Header) (context.Context, streamOut, error) {
	_ = brw.Flush() // nothing is buffered before the head, but leave nothing behind
	// The server's read deadline (header timeout) no longer applies: the watcher below reads until
	// the client closes.
	_ = conn.SetReadDeadline(time.Time{})
	out := &rawOut{conn: conn}
	header.Set("Connection", "close")
	header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	var head bytes.Buffer
	head.WriteString("HTTP/1.1 200 OK\r\n")
	_ = header.Write(&head) // a bytes.Buffer does not fail
	head.WriteString("\r\n")
	if err := out.write(head.Bytes()); err != nil {
		out.close()
		return ctx, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		defer cancel()
		// A small buffer of its own (it escapes to the heap through Read): io.Copy to io.Discard
		// would hold a pooled 8 KiB buffer per idle stream (40 MiB for 5,000 streams) while it waits.
		var discard [streamWatchReadBytes]byte
		for {
			if _, err := conn.Read(discard[:]); err != nil {
				return
			}
		}
	}()
	return ctx, out, nil
}

// deadlineKeeper sets a write deadline only when the current one is near.
type deadlineKeeper struct {
	until   time.Time
	aborted atomic.Bool
}

// extend reports whether a write may go ahead, calling set when the deadline must move. It runs on
// the writing goroutine only; abort may run concurrently, so aborted is checked again after set.
// set's error is ignored: a connection that cannot take a deadline fails the write itself.
func (d *deadlineKeeper) extend(set func(time.Time) error) error {
	if d.aborted.Load() {
		return errStreamAborted
	}
	now := time.Now()
	if d.until.Sub(now) >= streamWriteDeadlineRefreshMs*time.Millisecond {
		return nil
	}
	d.until = now.Add(streamWriteTimeoutMs * time.Millisecond)
	_ = set(d.until)
	if d.aborted.Load() {
		return errStreamAborted
	}
	return nil
}

// rawOut writes a stream straight to its hijacked connection.
type rawOut struct {
	conn net.Conn
	dl   deadlineKeeper
}

func (o *rawOut) write(b []byte) error {
	if err := o.dl.extend(o.conn.SetWriteDeadline); err != nil {
		return err
	}
	_, err := o.conn.Write(b)
	return err
}

func (o *rawOut) abort() {
	o.dl.aborted.Store(true)
	_ = o.conn.SetWriteDeadline(time.Now())
}

func (o *rawOut) close() { _ = o.conn.Close() }

// responseOut writes a stream through net/http (HTTP/2), flushing each write.
type responseOut struct {
	w  http.ResponseWriter
	rc *http.ResponseController
	dl deadlineKeeper
}

func (o *responseOut) write(b []byte) error {
	if err := o.dl.extend(o.rc.SetWriteDeadline); err != nil {
		return err
	}
	if len(b) > 0 {
		if _, err := o.w.Write(b); err != nil {
			return err
		}
	}
	return o.rc.Flush()
}

func (o *responseOut) abort() {
	o.dl.aborted.Store(true)
	_ = o.rc.SetWriteDeadline(time.Now())
}

func (o *responseOut) close() {}
