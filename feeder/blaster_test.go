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
	var b bytes.Buffer
	b.WriteString("35=" + msgType + "\x0134=" + strconv.Itoa(bl.seq) + "\x0149=" + fixspec.DefaultProviderCompID +
		"\x0152=" + now.UTC().Format(blastSendingTimeLayout) + "\x0156=" + fixspec.DefaultFeederCompID + "\x01" + body)
	bl.seq++
	head := "8=" + fixspec.BeginString + "\x019=" + strconv.Itoa(b.Len()) + "\x01"
	sum := 0
	for _, c := range []byte(head) {
		sum += int(c)
	}
	for _, c := range b.Bytes() {
		sum += int(c)
	}
	_, _ = bl.w.WriteString(head)
	_, _ = bl.w.Write(b.Bytes())
	_, _ = bl.w.WriteString("10=" + leftPad3(sum%256) + "\x01")
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
	date, clock := now.Format("20060102"), now.Format("15:04:05.000")
	for range n {
		p := &bl.pairs[bl.next%len(bl.pairs)]
		bl.next++
		p.quoteID++
		id := strconv.Itoa(p.quoteID)
		side := "\x01271=1000000\x01272=" + date + "\x01273=" + clock + "\x01299=" + id + "\x01"
		bl.write("W", "262=blast\x0155="+p.symbol+"\x01268=2\x01269=0\x01270="+p.bid+side+"269=1\x01270="+p.ask+side, now)
	}
	_ = bl.w.Flush()
}
