package fixsim

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// trackingListener hands quickfixgo connections the simulator can drop (with a TCP reset) and write
// raw bytes to (malformed messages), and cuts slow consumers. It sits above TLS, so raw writes are
// encrypted like any other.
type trackingListener struct {
	net.Listener
	log     *zap.Logger
	written chan<- struct{}

	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

func newTrackingListener(l net.Listener, log *zap.Logger, written chan<- struct{}) *trackingListener {
	return &trackingListener{Listener: l, log: log, written: written, conns: map[*trackedConn]struct{}{}}
}

// Accept tracks every accepted connection.
func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := newTrackedConn(c, l)
	l.mu.Lock()
	l.conns[tc] = struct{}{}
	l.mu.Unlock()
	return tc, nil
}

// signalWritten tells a waiting sender that quickfixgo handed a message to a connection (or failed to).
func (l *trackingListener) signalWritten() {
	select {
	case l.written <- struct{}{}:
	default:
	}
}

func (l *trackingListener) snapshot() []*trackedConn {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*trackedConn, 0, len(l.conns))
	for c := range l.conns {
		out = append(out, c)
	}
	return out
}

func (l *trackingListener) forget(c *trackedConn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// trackedConn buffers writes and flushes them from its own goroutine, so quickfixgo's writer never
// waits on the socket (its session loop spins while the writer is busy) and a burst of messages leaves
// in few system calls. Whole messages are appended under one lock, so raw injections never split a
// message; Close still sends what was written last (a Logout). A peer that does not drain a write
// within slowConsumerTimeoutMs, or lets writeBufferBytesMax pile up, is dropped.
type trackedConn struct {
	net.Conn
	owner *trackingListener
	once  sync.Once
	wmu   sync.Mutex // one socket write at a time, in order

	mu      sync.Mutex
	pending []byte
	spare   []byte
	err     error
	kick    chan struct{}
	closed  chan struct{}
}

func newTrackedConn(c net.Conn, owner *trackingListener) *trackedConn {
	tc := &trackedConn{Conn: c, owner: owner, kick: make(chan struct{}, 1), closed: make(chan struct{})}
	go tc.flush()
	return tc
}

// Write queues one message for the flusher.
func (c *trackedConn) Write(b []byte) (int, error) {
	defer c.owner.signalWritten()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if len(c.pending)+len(b) > writeBufferBytesMax {
		c.err = errSlowConsumer
		go c.dropSlow()
		return 0, c.err
	}
	c.pending = append(c.pending, b...)
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return len(b), nil
}

// flush writes whatever is pending, until the connection closes.
func (c *trackedConn) flush() {
	for {
		select {
		case <-c.closed:
			return
		case <-c.kick:
		}
		if err := c.writePending(); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.dropSlow()
			}
			return
		}
	}
}

// writePending writes everything queued in one system call.
func (c *trackedConn) writePending() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	buf := c.pending
	c.pending, c.spare = c.spare[:0], nil
	c.mu.Unlock()
	if len(buf) == 0 {
		return nil
	}
	_ = c.Conn.SetWriteDeadline(time.Now().Add(slowConsumerTimeoutMs * time.Millisecond))
	_, err := c.Conn.Write(buf)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil && c.err == nil {
		c.err = err
	}
	c.spare = buf[:0]
	return err
}

func (c *trackedConn) dropSlow() {
	c.owner.log.Warn("fix peer is not reading: dropping slow consumer",
		zap.String("remote", c.RemoteAddr().String()), zap.Int("timeout_ms", slowConsumerTimeoutMs))
	c.reset()
}

// Close sends what is still queued, then closes the connection and stops tracking it.
func (c *trackedConn) Close() error {
	c.owner.forget(c)
	_ = c.writePending()
	c.stopFlusher()
	return c.Conn.Close()
}

func (c *trackedConn) stopFlusher() {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.closed:
	default:
		close(c.closed)
	}
}

// reset drops the connection abruptly: the peer sees a TCP reset, not an orderly close (nor a TLS
// close_notify).
func (c *trackedConn) reset() {
	c.once.Do(func() {
		c.owner.forget(c)
		c.stopFlusher()
		conn := c.Conn
		if t, ok := conn.(*tls.Conn); ok {
			conn = t.NetConn()
		}
		if tcp, ok := conn.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0)
		}
		_ = conn.Close()
	})
}

// inject writes raw bytes between two messages.
func (c *trackedConn) inject(b []byte) error {
	_, err := c.Write(b)
	return err
}

// errSlowConsumer fails writes to a peer that stopped reading.
var errSlowConsumer = errors.New("fixsim: peer is not reading")
