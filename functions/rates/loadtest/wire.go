package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// wireReadBufferBytes holds a response's headers and most of a 7 KB board in one read.
const wireReadBufferBytes = 64 << 10

// wireHeaderLinesMax bounds how many header lines a response may have before it is refused.
const wireHeaderLinesMax = 100

// errWireResponse is a response the wire client cannot read (no Content-Length, chunked, garbled).
var errWireResponse = errors.New("unreadable HTTP/1.1 response")

// wireWorker is one keep-alive connection that writes GET requests as fixed bytes and reads only
// the status, Content-Length and ETag of each answer. It does what wrk does, so the load generator
// spends little of the CPU it shares with the server under test.
type wireWorker struct {
	addr string
	// head is the request's lines without the blank line that ends them; plain is the request as
	// sent, and conditional the same with If-None-Match: etag, made again only when etag changes.
	head, plain, conditional []byte
	revalidate               bool
	etag                     string
	conn                     net.Conn
	br                       *bufio.Reader
	// closeAfter is set when the answer being read said Connection: close.
	closeAfter bool
}

func newWireWorker(rawURL string, revalidate bool, acceptEncoding string) (*wireWorker, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("loadtest: wire mode needs an http:// URL, got %q", rawURL)
	}
	target := u.RequestURI()
	if strings.ContainsAny(acceptEncoding, "\r\n") {
		return nil, fmt.Errorf("loadtest: Accept-Encoding %q holds a line break", acceptEncoding)
	}
	req := "GET " + target + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUser-Agent: kawase-loadtest\r\nAccept: */*\r\n"
	if acceptEncoding != "" {
		req += "Accept-Encoding: " + acceptEncoding + "\r\n"
	}
	return &wireWorker{addr: u.Host, head: []byte(req), plain: []byte(req + "\r\n"), revalidate: revalidate}, nil
}

// get makes one request, dialling first when the connection is not open. A connection the server
// closed while idle fails before any answer arrives; the request is then sent once more on a new
// connection, as net/http's client does. A failed connection is closed and redialled next time.
func (w *wireWorker) get(ctx context.Context) (time.Duration, int, int64, error) {
	start := time.Now()
	reused := w.conn != nil
	status, n, err := w.attempt(ctx)
	if err != nil && reused && status == 0 && errors.Is(err, io.EOF) {
		status, n, err = w.attempt(ctx)
	}
	return time.Since(start), status, n, err
}

func (w *wireWorker) attempt(ctx context.Context) (int, int64, error) {
	if w.conn == nil {
		d := net.Dialer{Timeout: requestTimeoutMs * time.Millisecond}
		c, err := d.DialContext(ctx, "tcp", w.addr)
		if err != nil {
			return 0, 0, fmt.Errorf("dial %s: %w", w.addr, err)
		}
		w.conn, w.br = c, bufio.NewReaderSize(c, wireReadBufferBytes)
	}
	w.closeAfter = false
	status, n, err := w.roundTrip()
	if err != nil || w.closeAfter {
		w.close()
	}
	return status, n, err
}

// close closes the connection, if open.
func (w *wireWorker) close() {
	if w.conn != nil {
		_ = w.conn.Close()
		w.conn = nil
	}
}

func (w *wireWorker) roundTrip() (int, int64, error) {
	_ = w.conn.SetDeadline(time.Now().Add(requestTimeoutMs * time.Millisecond))
	req := w.plain
	if w.revalidate && w.etag != "" {
		if w.conditional == nil {
			w.conditional = append(append(append(append([]byte(nil), w.head...), "If-None-Match: "...), w.etag...), "\r\n\r\n"...)
		}
		req = w.conditional
	}
	if _, err := w.conn.Write(req); err != nil {
		return 0, 0, fmt.Errorf("write request: %w", err)
	}
	status, length, err := w.readHead()
	if err != nil {
		return status, 0, err
	}
	n, err := w.br.Discard(int(length))
	if err != nil {
		return status, int64(n), fmt.Errorf("read body: %w", err)
	}
	return status, int64(n), nil
}

var (
	headerContentLength    = []byte("content-length")
	headerETag             = []byte("etag")
	headerTransferEncoding = []byte("transfer-encoding")
	headerConnection       = []byte("connection")
)

// readHead reads the status line and headers, returning the status and the body's length.
func (w *wireWorker) readHead() (int, int64, error) {
	line, err := w.br.ReadSlice('\n')
	if err != nil {
		return 0, 0, fmt.Errorf("read status line: %w", err)
	}
	// "HTTP/1.1 200 OK\r\n"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, 0, fmt.Errorf("%w: status line %q", errWireResponse, line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, 0, fmt.Errorf("%w: status line %q", errWireResponse, line)
	}
	length := int64(-1)
	for range wireHeaderLinesMax {
		line, err = w.br.ReadSlice('\n')
		if err != nil {
			return status, 0, fmt.Errorf("read header: %w", err)
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			n, err := bodyLength(status, length)
			return status, n, err
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return status, 0, fmt.Errorf("%w: header %q", errWireResponse, line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, headerContentLength):
			if length, err = strconv.ParseInt(string(value), 10, 64); err != nil || length < 0 {
				return status, 0, fmt.Errorf("%w: Content-Length %q", errWireResponse, value)
			}
		case bytes.EqualFold(name, headerETag):
			if string(value) != w.etag { // the comparison does not allocate
				w.etag, w.conditional = string(value), nil
			}
		case bytes.EqualFold(name, headerConnection):
			w.closeAfter = bytes.EqualFold(value, []byte("close"))
		case bytes.EqualFold(name, headerTransferEncoding):
			return status, 0, fmt.Errorf("%w: Transfer-Encoding %q is not supported", errWireResponse, value)
		}
	}
	return status, 0, fmt.Errorf("%w: more than %d header lines", errWireResponse, wireHeaderLinesMax)
}

// bodyLength is the body's length: a 304 has none, anything else must say.
func bodyLength(status int, length int64) (int64, error) {
	switch {
	case status == 304 || status == 204:
		return 0, nil
	case length < 0:
		return 0, fmt.Errorf("%w: no Content-Length", errWireResponse)
	}
	return length, nil
}
