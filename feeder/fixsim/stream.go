package fixsim

import (
	"slices"
	"time"

	"github.com/quickfixgo/enum"
	"github.com/quickfixgo/fix44/marketdataincrementalrefresh"
	"github.com/quickfixgo/fix44/marketdatasnapshotfullrefresh"
	"github.com/quickfixgo/quickfix"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/feeder/fixspec"
)

// sizeScale is the number of decimals of MDEntrySize: sizes are whole units.
const sizeScale = 0

// stream quotes every subscribed pair once per interval, spreading the sends evenly over it (50 pairs
// every 50 ms is one quote a millisecond, not a burst of 50).
func (s *Sim) stream() {
	defer s.wg.Done()
	timer := time.NewTimer(0)
	defer timer.Stop()
	next, rr := time.Now(), 0
	for {
		subs, id, interval, active := s.streamState()
		now := time.Now()
		wait := idlePollMs * time.Millisecond
		if active {
			if now.Sub(next) > catchUpIntervalsMax*interval {
				next = now
			}
			step := interval / time.Duration(len(subs))
			for ; !now.Before(next); next = next.Add(step) {
				s.sendQuote(id, subs[rr%len(subs)], false)
				rr++
			}
			wait = time.Until(next)
		} else {
			next = now
		}
		timer.Reset(wait)
		select {
		case <-s.stop:
			return
		case <-timer.C:
		}
	}
}

func (s *Sim) streamState() (subs []*subscription, id quickfix.SessionID, interval time.Duration, active bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	active = s.loggedOn && !s.paused && len(s.subsOrder) > 0
	if !active {
		return nil, id, s.interval, false
	}
	return slices.Clone(s.subsOrder), s.session, s.interval, true
}

// sendQuote moves the pair's walk and sends the quote, if the subscription is still live and, unless
// this is a burst, the stream is not paused.
func (s *Sim) sendQuote(id quickfix.SessionID, sub *subscription, burst bool) bool {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	q, action, ok := s.nextQuote(sub, burst)
	if !ok {
		return false
	}
	var msg *quickfix.Message
	if sub.incremental {
		msg = incrementalRefresh(sub.reqID, q, action)
	} else {
		msg = fullRefresh(sub.reqID, q)
	}
	return s.send(msg, id)
}

func (s *Sim) nextQuote(sub *subscription, burst bool) (quote, enum.MDUpdateAction, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.loggedOn || s.subs[sub.pair] != sub || (s.paused && !burst) {
		return quote{}, "", false
	}
	action := enum.MDUpdateAction_CHANGE
	if !sub.started {
		sub.started, action = true, enum.MDUpdateAction_NEW
	}
	s.stats.Quotes[sub.pair]++
	return s.books[sub.pair].next(time.Now()), action, true
}

// snapshot sends one full refresh of each pair, for SubscriptionRequestType 0 and for the first
// answer to a subscription. It runs on its own goroutine: the session's goroutine must never wait
// for sendMu, which a sender holds while it waits for that very goroutine.
func (s *Sim) snapshot(id quickfix.SessionID, reqID string, pairs []fx.Pair) {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	for _, p := range pairs {
		s.mu.Lock()
		if !s.loggedOn || s.session != id {
			s.mu.Unlock()
			return
		}
		s.stats.Quotes[p]++
		q := s.books[p].next(time.Now())
		s.mu.Unlock()
		s.send(fullRefresh(reqID, q), id)
	}
}

// send queues msg on the session and waits (at most writeWaitMs) until quickfixgo handed it to the
// connection: quickfixgo's session loop passes messages to its writer one at a time over an
// unbuffered channel and busy-loops while the writer is not ready; keeping one message in flight
// lets it block instead, which on a busy machine is many times faster. Never call it on the session's
// own goroutine.
func (s *Sim) send(msg *quickfix.Message, id quickfix.SessionID) bool {
	select {
	case <-s.written:
	default:
	}
	if err := quickfix.SendToTarget(msg, id); err != nil {
		s.log.Debug("fix send", zap.Error(err))
		return false
	}
	t := time.NewTimer(writeWaitMs * time.Millisecond)
	defer t.Stop()
	select {
	case <-s.written:
	case <-t.C:
	}
	return true
}

// mdEntry is what both NoMDEntries group types (W and X) offer to set a quote side.
type mdEntry interface {
	SetMDEntryType(v enum.MDEntryType)
	SetMDEntryPx(value decimal.Decimal, scale int32)
	SetMDEntrySize(value decimal.Decimal, scale int32)
	SetMDEntryDate(v string)
	SetMDEntryTime(v string)
	SetQuoteEntryID(v string)
}

func setSide(e mdEntry, side enum.MDEntryType, px, size decimal.Decimal, q quote) {
	e.SetMDEntryType(side)
	e.SetMDEntryPx(px, q.precision)
	e.SetMDEntrySize(size, sizeScale)
	e.SetMDEntryDate(q.date)
	e.SetMDEntryTime(q.time)
	e.SetQuoteEntryID(q.id)
}

// fullRefresh builds a MarketDataSnapshotFullRefresh (35=W) with a bid and an offer entry.
func fullRefresh(reqID string, q quote) *quickfix.Message {
	m := marketdatasnapshotfullrefresh.New()
	m.SetMDReqID(reqID)
	m.SetSymbol(fixspec.Symbol(q.pair))
	g := marketdatasnapshotfullrefresh.NewNoMDEntriesRepeatingGroup()
	setSide(g.Add(), enum.MDEntryType_BID, q.bid, q.bidSize, q)
	setSide(g.Add(), enum.MDEntryType_OFFER, q.ask, q.askSize, q)
	m.SetNoMDEntries(g)
	return m.ToMessage()
}

// incrementalRefresh builds a MarketDataIncrementalRefresh (35=X) updating both sides of one pair.
func incrementalRefresh(reqID string, q quote, action enum.MDUpdateAction) *quickfix.Message {
	m := marketdataincrementalrefresh.New()
	m.SetMDReqID(reqID)
	g := marketdataincrementalrefresh.NewNoMDEntriesRepeatingGroup()
	for _, side := range []struct {
		t        enum.MDEntryType
		px, size decimal.Decimal
	}{{enum.MDEntryType_BID, q.bid, q.bidSize}, {enum.MDEntryType_OFFER, q.ask, q.askSize}} {
		e := g.Add()
		e.SetMDUpdateAction(action)
		e.SetSymbol(fixspec.Symbol(q.pair))
		setSide(e, side.t, side.px, side.size, q)
	}
	m.SetNoMDEntries(g)
	return m.ToMessage()
}
