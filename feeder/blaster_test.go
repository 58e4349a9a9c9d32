package feeder

import (
	"bufio"
	"bytes"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/feeder/fixspec"
)

// blaster is a minimal FIX 4.4 provider for benchmarks: it answers the feeder's Logon and then writes
// pre-formatted MarketDataSnapshotFullRefresh messages as fast as asked, with correct BodyLength,
// CheckSum and MsgSeqNum, so the feeder — not a load generator — is what the benchmark measures.
type blaster struct {
	ln    net.Listener
	pairs []blastPair

	mu   sync.Mutex
	conn net.Conn
	w    *bufio.Writer
	seq  int
	next int
	// msg, head and body are reused message after message.
	msg, head, body []byte
}

// blastPair is the fixed part of one pair's quotes.
type blastPair struct {
	symbol, bid, ask string
	quoteID          int
}

// Formats of the blaster's timestamps.
const (
	blastSendingTimeLayout = "20060102-15:04:05.000000"
	blastWriteBufferBytes  = 256 << 10
)

func startBlaster(t testing.TB, pairs []fx.Pair) *blaster {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bl := &blaster{ln: ln}
	for _, p := range pairs {
		spec, _ := fx.Lookup(p)
		tick := decimal.New(1, -spec.Precision)
		bl.pairs = append(bl.pairs, blastPair{symbol: fixspec.Symbol(p),
			bid: spec.FormatPrice(spec.ReferenceMid), ask: spec.FormatPrice(spec.ReferenceMid.Add(tick))})
	}
	go bl.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		bl.mu.Lock()
		if bl.conn != nil {
			_ = bl.conn.Close()
		}
		bl.mu.Unlock()
	})
	return bl
}

func (bl *blaster) addr() string { return bl.ln.Addr().String() }

func (bl *blaster) accept() {
	for {
		c, err := bl.ln.Accept()
		if err != nil {
			return
		}
		go bl.serve(c)
	}
}

// serve answers the Logon, then discards whatever the feeder sends (MarketDataRequests, Heartbeats).
func (bl *blaster) serve(c net.Conn) {
	r := bufio.NewReader(c)
	if _, err := r.ReadBytes('\x01'); err != nil { // 8=FIX.4.4
		return
	}
	for {
		field, err := r.ReadBytes('\x01')
		if err != nil {
			return
		}
		if bytes.HasPrefix(field, []byte("10=")) {
			break
		}
	}
	bl.mu.Lock()
	bl.conn, bl.w, bl.seq = c, bufio.NewWriterSize(c, blastWriteBufferBytes), 1
	bl.write("A", "98=0\x01108=1\x01141=Y\x01", time.Now())
	_ = bl.w.Flush()
	bl.mu.Unlock()
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

func (bl *blaster) connected() bool {
	bl.mu.Lock()
	defer bl.mu.Unlock()
	return bl.conn != nil
}

// write frames one message: header, body, CheckSum.
func (bl *blaster) write(msgType, body string, now time.Time) {
	bl.writeBytes(msgType, []byte(body), now.UTC().AppendFormat(nil, blastSendingTimeLayout))
}

// writeBytes frames one message with a preformatted SendingTime, reusing the blaster's buffers so
// that the provider takes as little of the machine it shares with the feeder as it can.
func (bl *blaster) writeBytes(msgType string, body, sendingTime []byte) {
	b := append(bl.msg[:0], "35="...)
	b = append(b, msgType...)
	b = strconv.AppendInt(append(b, "\x0134="...), int64(bl.seq), 10)
	b = append(b, "\x0149="+fixspec.DefaultProviderCompID+"\x0152="...)
	b = append(b, sendingTime...)
	b = append(b, "\x0156="+fixspec.DefaultFeederCompID+"\x01"...)
	b = append(b, body...)
	bl.seq++
	head := strconv.AppendInt(append(bl.head[:0], "8="+fixspec.BeginString+"\x019="...), int64(len(b)), 10)
	head = append(head, '\x01')
	sum := 0
	for _, c := range head {
		sum += int(c)
	}
	for _, c := range b {
		sum += int(c)
	}
	_, _ = bl.w.Write(head)
	_, _ = bl.w.Write(b)
	_, _ = bl.w.WriteString("10=" + leftPad3(sum%256) + "\x01")
	bl.msg, bl.head = b, head
}

func leftPad3(n int) string {
	s := strconv.Itoa(n)
	for len(s) < 3 {
		s = "0" + s
	}
	return s
}

// send writes n quotes round-robin across the pairs and flushes them.
func (bl *blaster) send(n int) {
	bl.mu.Lock()
	defer bl.mu.Unlock()
	now := time.Now().UTC()
	sendingTime := now.AppendFormat(nil, blastSendingTimeLayout)
	side := "\x01271=1000000\x01272=" + now.Format("20060102") + "\x01273=" + now.Format("15:04:05.000") + "\x01299="
	for range n {
		p := &bl.pairs[bl.next%len(bl.pairs)]
		bl.next++
		p.quoteID++
		body := append(bl.body[:0], "262=blast\x0155="...)
		body = append(body, p.symbol...)
		body = append(body, "\x01268=2"...)
		for _, e := range [...]struct{ typ, px string }{{"0", p.bid}, {"1", p.ask}} {
			body = append(append(append(body, "\x01269="...), e.typ...), "\x01270="...)
			body = append(body, e.px...)
			body = append(body, side...)
			body = strconv.AppendInt(body, int64(p.quoteID), 10)
		}
		body = append(body, '\x01')
		bl.writeBytes("W", body, sendingTime)
		bl.body = body
	}
	_ = bl.w.Flush()
}
