package fixsim

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/quickfixgo/enum"
	"github.com/quickfixgo/fix44/marketdatasnapshotfullrefresh"
	"github.com/quickfixgo/quickfix"
	"github.com/quickfixgo/tag"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/feeder/fixspec"
)

// futureQuoteAheadMs is how far ahead a MalformedFuture quote's time is: well past the 60 s any
// reader tolerates.
const futureQuoteAheadMs = 10 * 60_000

// Malformed names a kind of broken message the simulator can send.
type Malformed string

// Kinds of malformed messages.
const (
	// MalformedGarbled is raw bytes whose BodyLength(9) is wrong: the receiver cannot parse it.
	MalformedGarbled Malformed = "garbled"
	// MalformedBadPrice is a 35=W whose MDEntryPx(270) is not a number: the data dictionary refuses it.
	MalformedBadPrice Malformed = "badprice"
	// MalformedCrossed is a well-formed 35=W whose bid is above its offer: only the application can tell.
	MalformedCrossed Malformed = "crossed"
	// MalformedFuture is a well-formed 35=W whose MDEntryDate/MDEntryTime is futureQuoteAheadMs
	// ahead, as from a provider whose clock runs fast: the receiver must refuse it as out of range.
	MalformedFuture Malformed = "future"
)

// Limits of the control surface.
const (
	burstPerPairQuotesMax = 100_000
	controlBodyBytesMax   = 4096
	badPriceText          = "1.2.3"
)

// ErrNoSession is returned by controls that need a logged-on, subscribed session.
var ErrNoSession = errors.New("fixsim: no logged-on session with subscriptions")

// DropSessions cuts every connection with a TCP reset, as a network failure would, and returns how
// many it cut.
func (s *Sim) DropSessions() int {
	conns := s.ln.snapshot()
	for _, c := range conns {
		c.reset()
	}
	s.mu.Lock()
	s.stats.Dropped += len(conns)
	s.mu.Unlock()
	if len(conns) > 0 {
		s.log.Info("fix connections dropped", zap.Int("count", len(conns)))
	}
	return len(conns)
}

// Pause stops the quote stream: once it returns no streamed quote is generated (bursts still are);
// subscriptions and sessions stay.
func (s *Sim) Pause() { s.setPaused(true) }

// Resume restarts the quote stream.
func (s *Sim) Resume() { s.setPaused(false) }

func (s *Sim) setPaused(p bool) {
	s.mu.Lock()
	s.paused = p
	s.mu.Unlock()
	s.log.Info("fix quote stream", zap.Bool("paused", p))
}

// SetInterval changes how often each pair is quoted.
func (s *Sim) SetInterval(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("fixsim: interval must be positive, not %s", d)
	}
	s.mu.Lock()
	s.interval = d
	s.mu.Unlock()
	return nil
}

// SetCredentials changes the Username(553) and Password(554) that logons must carry.
func (s *Sim) SetCredentials(user, pass string) {
	s.mu.Lock()
	s.username, s.password = user, pass
	s.mu.Unlock()
}

// Burst sends perPair extra quotes for every subscribed pair as fast as the session takes them,
// round-robin across pairs, and returns how many it sent.
func (s *Sim) Burst(perPair int) int {
	subs, id, _, _ := s.subscribed()
	sent := 0
	for range min(perPair, burstPerPairQuotesMax) {
		for _, sub := range subs {
			if s.sendQuote(id, sub, true) {
				sent++
			}
		}
	}
	return sent
}

func (s *Sim) subscribed() ([]*subscription, quickfix.SessionID, time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.loggedOn {
		return nil, s.session, s.interval, false
	}
	subs := append([]*subscription(nil), s.subsOrder...)
	return subs, s.session, s.interval, len(subs) > 0
}

// SendMalformed sends one broken message of the given kind on the logged-on session.
func (s *Sim) SendMalformed(kind Malformed) error {
	subs, id, _, ok := s.subscribed()
	if !ok {
		return ErrNoSession
	}
	var err error
	switch kind {
	case MalformedGarbled:
		err = s.injectGarbled(id)
	case MalformedBadPrice, MalformedCrossed, MalformedFuture:
		err = s.sendBroken(id, subs[0], kind)
	default:
		return fmt.Errorf("fixsim: unknown malformed kind %q", kind)
	}
	if err == nil {
		s.mu.Lock()
		s.stats.Malformed++
		s.mu.Unlock()
		s.log.Info("fix malformed message sent", zap.String("kind", string(kind)))
	}
	return err
}

func (s *Sim) injectGarbled(id quickfix.SessionID) error {
	now := time.Now().UTC().Format("20060102-15:04:05.000")
	raw := "8=" + fixspec.BeginString + "\x019=5\x0135=W\x0149=" + id.SenderCompID + "\x0156=" + id.TargetCompID +
		"\x0134=1\x0152=" + now + "\x0155=EUR/USD\x0110=000\x01"
	conns := s.ln.snapshot()
	if len(conns) == 0 {
		return ErrNoSession
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	for _, c := range conns {
		if err := c.inject([]byte(raw)); err != nil {
			return fmt.Errorf("fixsim: inject garbled message: %w", err)
		}
	}
	return nil
}

// sendBroken sends a 35=W for sub's pair with a non-numeric MDEntryPx, a crossed quote or a quote
// time far ahead.
func (s *Sim) sendBroken(id quickfix.SessionID, sub *subscription, kind Malformed) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	at := time.Now()
	if kind == MalformedFuture {
		at = at.Add(futureQuoteAheadMs * time.Millisecond)
	}
	s.mu.Lock()
	q := s.books[sub.pair].next(at)
	s.mu.Unlock()
	m := marketdatasnapshotfullrefresh.New()
	m.SetMDReqID(sub.reqID)
	m.SetSymbol(fixspec.Symbol(q.pair))
	g := marketdatasnapshotfullrefresh.NewNoMDEntriesRepeatingGroup()
	bid, offer := g.Add(), g.Add()
	if kind == MalformedCrossed {
		q.bid, q.ask = q.ask, q.bid
	}
	setSide(bid, enum.MDEntryType_BID, q.bid, q.bidSize, q)
	setSide(offer, enum.MDEntryType_OFFER, q.ask, q.askSize, q)
	if kind == MalformedBadPrice {
		bid.SetString(tag.MDEntryPx, badPriceText)
	}
	m.SetNoMDEntries(g)
	if err := quickfix.SendToTarget(m, id); err != nil {
		return fmt.Errorf("fixsim: send %s message: %w", kind, err)
	}
	return nil
}

// Handler serves the control surface over HTTP:
//
//	POST /drop                         cut every connection (TCP reset)
//	POST /pause, POST /resume          stop or restart the quote stream
//	POST /burst?n=100                  send n extra quotes per subscribed pair
//	POST /malformed?kind=garbled       send a garbled, badprice, crossed or future message
//	POST /interval?d=50ms              change the quote interval
//	POST /credentials?user=u&pass=p    change the accepted Username/Password
//	GET  /stats                        counters as JSON
func (s *Sim) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /drop", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, map[string]int{"dropped": s.DropSessions()})
	})
	mux.HandleFunc("POST /pause", func(w http.ResponseWriter, _ *http.Request) { s.Pause(); writeJSON(w, "paused") })
	mux.HandleFunc("POST /resume", func(w http.ResponseWriter, _ *http.Request) { s.Resume(); writeJSON(w, "resumed") })
	mux.HandleFunc("POST /burst", s.handleBurst)
	mux.HandleFunc("POST /malformed", func(w http.ResponseWriter, r *http.Request) {
		controlReply(w, s.SendMalformed(Malformed(r.URL.Query().Get("kind"))))
	})
	mux.HandleFunc("POST /interval", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.URL.Query().Get("d"))
		if err == nil {
			err = s.SetInterval(d)
		}
		controlReply(w, err)
	})
	mux.HandleFunc("POST /credentials", func(w http.ResponseWriter, r *http.Request) {
		s.SetCredentials(r.URL.Query().Get("user"), r.URL.Query().Get("pass"))
		writeJSON(w, "ok")
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, s.Stats()) })
	return http.MaxBytesHandler(mux, controlBodyBytesMax)
}

func (s *Sim) handleBurst(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.URL.Query().Get("n"))
	if err != nil || n <= 0 || n > burstPerPairQuotesMax {
		http.Error(w, fmt.Sprintf("n must be 1..%d", burstPerPairQuotesMax), http.StatusBadRequest)
		return
	}
	writeJSON(w, map[string]int{"sent": s.Burst(n)})
}

func controlReply(w http.ResponseWriter, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	writeJSON(w, "ok")
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Sim) countRefusedLogon() { s.mu.Lock(); s.stats.LogonsRefused++; s.mu.Unlock() }
func (s *Sim) countRequest()      { s.mu.Lock(); s.stats.Requests++; s.mu.Unlock() }
func (s *Sim) countReject()       { s.mu.Lock(); s.stats.Rejects++; s.mu.Unlock() }
