package feeder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quickfixgo/enum"
	"github.com/quickfixgo/field"
	"github.com/quickfixgo/fix44/businessmessagereject"
	"github.com/quickfixgo/fix44/marketdatarequest"
	"github.com/quickfixgo/fix44/marketdatarequestreject"
	"github.com/quickfixgo/quickfix"
	"github.com/quickfixgo/tag"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/feeder/fixspec"
)

// marketDepthTopOfBook is MarketDepth(264) 1: best bid and offer only.
const marketDepthTopOfBook = 1

// quickfixgo event texts the feeder reacts to (quickfixgo reports these outcomes only in its log).
const (
	eventParseError    = "Msg Parse Error"
	eventDialFailed    = "Failed to connect"
	eventTLSFailed     = "Failed handshake"
	msgTypeMarker      = "\x0135="
	logoutMsgType      = "5\x01"
	textFieldMarker    = "\x0158="
	fieldSeparatorByte = '\x01'
)

// term is one leadership term: its lease, its publisher and the per-pair state that lives across
// the FIX sessions of the term.
type term struct {
	ctx   context.Context
	lease *Lease
	pub   *publisher
	pairs map[fx.Pair]*pairState
	// symbols are the subscribed pairs by FIX symbol.
	symbols map[string]fx.Pair
}

// pairState is a pair's sequence within the term and its book (for incremental refreshes).
type pairState struct {
	received prometheus.Counter
	seq      int64
	book     topOfBook
}

// sessionApp is the quickfixgo Application of one FIX session attempt.
type sessionApp struct {
	f      *Feeder
	t      *term
	router *quickfix.MessageRouter
	// session names the FIX session as rates and logs carry it: BeginString:Sender->Target, without
	// the attempt's local qualifier. Set by OnCreate, before any other callback.
	session string

	loggedOn   chan struct{}
	ended      chan struct{}
	logonOnce  sync.Once
	endOnce    sync.Once
	wasLogged  atomic.Bool
	stopping   atomic.Bool
	logoutText atomic.Pointer[string]

	reqMu  sync.Mutex
	reqIDs map[string]fx.Pair

	// fields is the storage the session's messages are split into, reused message after message:
	// quickfixgo calls FromAdmin and FromApp from the session's one goroutine.
	fields []fixspec.Field
}

func newSessionApp(f *Feeder, t *term) *sessionApp {
	a := &sessionApp{f: f, t: t, loggedOn: make(chan struct{}), ended: make(chan struct{}),
		router: quickfix.NewMessageRouter(), reqIDs: map[string]fx.Pair{}}
	a.router.AddRoute(marketdatarequestreject.Route(a.onRequestReject))
	a.router.AddRoute(businessmessagereject.Route(a.onBusinessReject))
	return a
}

// end marks the attempt over, once.
func (a *sessionApp) end() {
	a.endOnce.Do(func() { close(a.ended) })
}

// OnCreate names the session.
func (a *sessionApp) OnCreate(id quickfix.SessionID) {
	id.Qualifier = ""
	a.session = id.String()
}

// OnLogon subscribes to every configured pair.
func (a *sessionApp) OnLogon(id quickfix.SessionID) {
	a.wasLogged.Store(true)
	a.f.metrics.setSessionState(SessionLoggedOn)
	a.f.log.Info("fix session logged on", zap.String("session", a.session), zap.Int64("epoch", a.t.lease.Epoch()))
	for _, p := range a.f.cfg.Pairs {
		a.subscribe(id, p)
	}
	a.logonOnce.Do(func() { close(a.loggedOn) })
}

// OnLogout ends the attempt, saying why.
func (a *sessionApp) OnLogout(id quickfix.SessionID) {
	a.f.metrics.setSessionState(SessionDisconnected)
	text := ""
	if p := a.logoutText.Load(); p != nil {
		text = *p
	}
	switch {
	case !a.wasLogged.Load() && text != "":
		a.f.metrics.LogonFailures.WithLabelValues("refused").Inc()
		a.f.log.Error("fix logon refused by provider", zap.String("session", a.session), zap.String("Text", text))
		a.end()
	case !a.wasLogged.Load():
		a.f.metrics.LogonFailures.WithLabelValues("disconnected").Inc()
		a.f.log.Warn("fix connection closed before logon", zap.String("session", a.session))
		a.end()
	case a.stopping.Load():
		a.f.log.Info("fix session logged out", zap.String("session", a.session))
		a.end()
	default:
		a.f.metrics.Disconnects.Inc()
		a.f.log.Warn("fix session lost", zap.String("session", a.session), zap.String("Text", text))
		a.end()
	}
}

// ToAdmin adds Username(553) and Password(554) to the Logon and counts the session-level Rejects
// (35=3) quickfixgo sends for messages that fail the data dictionary.
func (a *sessionApp) ToAdmin(msg *quickfix.Message, id quickfix.SessionID) {
	switch {
	case msg.IsMsgTypeOf(string(enum.MsgType_LOGON)):
		msg.Body.Set(field.NewUsername(a.f.cfg.FIX.Username))
		msg.Body.Set(field.NewPassword(a.f.cfg.FIX.Password))
	case msg.IsMsgTypeOf(string(enum.MsgType_REJECT)):
		text, _ := msg.Body.GetString(tag.Text)
		refTag, _ := msg.Body.GetString(tag.RefTagID)
		reason, _ := msg.Body.GetString(tag.SessionRejectReason)
		a.f.metrics.Malformed.WithLabelValues("rejected").Inc()
		a.f.log.Warn("fix message from provider rejected: malformed", zap.String("session", a.session),
			zap.String("Text", text), zap.String("RefTagID", refTag), zap.String("SessionRejectReason", reason))
	case msg.IsMsgTypeOf(string(enum.MsgType_LOGOUT)):
		a.stopping.Store(true)
	}
}

// ToApp lets application messages go out unchanged.
func (a *sessionApp) ToApp(*quickfix.Message, quickfix.SessionID) error { return nil }

// check checks a message against the FIX 4.4 data dictionary where quickfixgo's validator would (the
// session leaves quickfixgo without a dictionary, see sessionSettings); quickfixgo answers a problem
// with a session-level Reject (35=3), as it would have.
func (a *sessionApp) check(msg *quickfix.Message) (fixspec.Message, quickfix.MessageRejectError) {
	m, rerr := a.f.dict.Check(msg.Bytes(), a.fields)
	a.fields = m.Fields()
	return m, rerr
}

// FromAdmin checks session messages and counts the session-level Rejects (35=3) the provider sends us.
func (a *sessionApp) FromAdmin(msg *quickfix.Message, id quickfix.SessionID) quickfix.MessageRejectError {
	if _, rerr := a.check(msg); rerr != nil {
		return rerr
	}
	if msg.IsMsgTypeOf(string(enum.MsgType_REJECT)) {
		text, _ := msg.Body.GetString(tag.Text)
		reason, _ := msg.Body.GetString(tag.SessionRejectReason)
		a.f.metrics.Rejects.WithLabelValues("session", reason).Inc()
		a.f.log.Warn("fix provider rejected our message", zap.String("session", a.session), zap.String("Text", text),
			zap.String("SessionRejectReason", reason))
	}
	return nil
}

// FromApp checks a message and takes market data; quickfixgo answers types the router does not know
// with a BusinessMessageReject. An attempt that ended (an abandoned initiator) ignores everything.
func (a *sessionApp) FromApp(msg *quickfix.Message, id quickfix.SessionID) quickfix.MessageRejectError {
	m, rerr := a.check(msg)
	if rerr != nil {
		return rerr
	}
	select {
	case <-a.ended:
		return nil
	default:
	}
	switch m.MsgType {
	case string(enum.MsgType_MARKET_DATA_SNAPSHOT_FULL_REFRESH):
		a.onSnapshot(msg, m)
		return nil
	case string(enum.MsgType_MARKET_DATA_INCREMENTAL_REFRESH):
		a.onIncremental(msg, m)
		return nil
	}
	return a.router.Route(msg, id)
}

// hooks watch quickfixgo's log for outcomes it reports nowhere else.
func (a *sessionApp) hooks() fixspec.LogHooks {
	return fixspec.LogHooks{
		Event: func(id quickfix.SessionID, text string) {
			switch {
			case strings.HasPrefix(text, eventParseError):
				a.f.metrics.Malformed.WithLabelValues("garbled").Inc()
				a.f.log.Warn("fix message from provider ignored: malformed", zap.String("session", a.session),
					zap.String("error", text))
			case strings.HasPrefix(text, eventDialFailed), strings.HasPrefix(text, eventTLSFailed):
				a.f.metrics.LogonFailures.WithLabelValues("connect").Inc()
				a.f.log.Warn("fix connect failed", zap.String("addr", a.f.cfg.FIX.Addr), zap.String("error", text))
				a.end()
			}
		},
		Incoming: func(_ quickfix.SessionID, raw []byte) {
			if isLogout(raw) {
				text := logoutTextOf(raw)
				a.logoutText.Store(&text)
			}
		},
	}
}

// isLogout reports whether a raw message is a Logout (35=5). MsgType(35) is the third field, so the
// first "35=" after a separator is it: found without scanning the whole message.
func isLogout(raw []byte) bool {
	i := bytes.Index(raw, []byte(msgTypeMarker))
	return i >= 0 && bytes.HasPrefix(raw[i+len(msgTypeMarker):], []byte(logoutMsgType))
}

// logoutTextOf extracts Text(58) from a raw Logout.
func logoutTextOf(raw []byte) string {
	i := bytes.Index(raw, []byte(textFieldMarker))
	if i < 0 {
		return ""
	}
	rest := raw[i+len(textFieldMarker):]
	if j := bytes.IndexByte(rest, fieldSeparatorByte); j >= 0 {
		rest = rest[:j]
	}
	return string(rest)
}

// subscribe sends a MarketDataRequest (35=V) for one pair: snapshot plus updates, top of book, bid
// and offer; full refreshes (35=W) or, when configured, incremental ones (35=X).
func (a *sessionApp) subscribe(id quickfix.SessionID, p fx.Pair) {
	reqID := fmt.Sprintf("kawase-%s-%d", p, time.Now().UnixNano())
	a.reqMu.Lock()
	a.reqIDs[reqID] = p
	a.reqMu.Unlock()
	req := marketdatarequest.New(field.NewMDReqID(reqID),
		field.NewSubscriptionRequestType(enum.SubscriptionRequestType_SNAPSHOT_PLUS_UPDATES),
		field.NewMarketDepth(marketDepthTopOfBook))
	update := enum.MDUpdateType_FULL_REFRESH
	if a.f.cfg.FIX.Incremental {
		update = enum.MDUpdateType_INCREMENTAL_REFRESH
	}
	req.SetMDUpdateType(update)
	types := marketdatarequest.NewNoMDEntryTypesRepeatingGroup()
	types.Add().SetMDEntryType(enum.MDEntryType_BID)
	types.Add().SetMDEntryType(enum.MDEntryType_OFFER)
	req.SetNoMDEntryTypes(types)
	syms := marketdatarequest.NewNoRelatedSymRepeatingGroup()
	syms.Add().SetSymbol(fixspec.Symbol(p))
	req.SetNoRelatedSym(syms)
	if err := quickfix.SendToTarget(req, id); err != nil {
		a.f.log.Warn("fix send MarketDataRequest", zap.String("pair", string(p)), zap.Error(err))
	}
}

// onRequestReject logs a MarketDataRequestReject (35=Y) and asks again later: the provider may add
// the symbol, and the other pairs keep streaming meanwhile.
func (a *sessionApp) onRequestReject(msg marketdatarequestreject.MarketDataRequestReject, id quickfix.SessionID) quickfix.MessageRejectError {
	reqID, _ := msg.GetMDReqID()
	reason, _ := msg.GetMDReqRejReason()
	text, _ := msg.GetText()
	a.reqMu.Lock()
	pair, ok := a.reqIDs[reqID]
	a.reqMu.Unlock()
	a.f.metrics.Rejects.WithLabelValues("md_request", string(reason)).Inc()
	a.f.log.Error("fix market data request rejected", zap.String("pair", string(pair)), zap.String("MDReqID", reqID),
		zap.String("MDReqRejReason", string(reason)), zap.String("Text", text),
		zap.Duration("retry_in", a.f.cfg.FIX.RerequestDelay))
	if ok {
		time.AfterFunc(a.f.cfg.FIX.RerequestDelay, func() { a.resubscribe(id, pair) })
	}
	return nil
}

func (a *sessionApp) resubscribe(id quickfix.SessionID, p fx.Pair) {
	select {
	case <-a.ended:
	case <-a.t.ctx.Done():
	default:
		a.subscribe(id, p)
	}
}

// onBusinessReject logs a BusinessMessageReject (35=j).
func (a *sessionApp) onBusinessReject(msg businessmessagereject.BusinessMessageReject, id quickfix.SessionID) quickfix.MessageRejectError {
	reason, _ := msg.GetBusinessRejectReason()
	text, _ := msg.GetText()
	a.f.metrics.Rejects.WithLabelValues("business", string(reason)).Inc()
	a.f.log.Warn("fix business message reject", zap.String("session", a.session), zap.String("Text", text))
	return nil
}

// onSnapshot turns a MarketDataSnapshotFullRefresh (35=W) into a rate.
func (a *sessionApp) onSnapshot(msg *quickfix.Message, m fixspec.Message) {
	symbol, book, err := snapshotBook(m.Body)
	if err != nil {
		a.invalidQuote(string(symbol), err)
		return
	}
	ps, pair, err := a.pairOf(symbol)
	if err != nil {
		a.invalidQuote(string(symbol), err)
		return
	}
	ps.received.Inc()
	ps.book = book
	a.emit(stampOf(msg, m.Header), pair, ps)
}

// onIncremental applies a MarketDataIncrementalRefresh (35=X) to the books and emits a rate for
// every pair it touched whose book is complete.
func (a *sessionApp) onIncremental(msg *quickfix.Message, m fixspec.Message) {
	updates, err := incrementalUpdates(m.Body)
	if err != nil {
		a.invalidQuote("", err)
		return
	}
	touched := make([]fx.Pair, 0, 1)
	for _, u := range updates {
		ps, pair, err := a.pairOf(u.symbol)
		if err != nil {
			a.invalidQuote(string(u.symbol), err)
			continue
		}
		if u.action == enum.MDUpdateAction_DELETE {
			u.side = quoteSide{}
		}
		ps.book.apply(u.typ, u.side)
		if len(touched) == 0 || touched[len(touched)-1] != pair {
			touched = append(touched, pair)
		}
	}
	st := stampOf(msg, m.Header)
	for _, pair := range touched {
		ps := a.t.pairs[pair]
		ps.received.Inc()
		a.emit(st, pair, ps)
	}
}

// pairOf finds the state of a subscribed pair by its FIX symbol, and says what is wrong with any other.
func (a *sessionApp) pairOf(symbol []byte) (*pairState, fx.Pair, error) {
	if pair, ok := a.t.symbols[string(symbol)]; ok {
		return a.t.pairs[pair], pair, nil
	}
	pair, err := fixspec.Pair(string(symbol))
	if err != nil {
		return nil, "", err
	}
	ps, ok := a.t.pairs[pair]
	if !ok {
		return nil, pair, fmt.Errorf("symbol %s was not subscribed", symbol)
	}
	return ps, pair, nil
}

// stamp is what every rate of one market data message carries from it, read once per message.
type stamp struct {
	// receivedAt is when quickfixgo read the message; sentAt its SendingTime(52), zero if unreadable.
	receivedAt, sentAt time.Time
	msgSeqNum          int
}

func stampOf(msg *quickfix.Message, header fixspec.Fields) stamp {
	st := stamp{receivedAt: msg.ReceiveTime}
	st.msgSeqNum, _ = header.Int(tag.MsgSeqNum)
	if sent, ok := header.Get(tag.SendingTime); ok {
		st.sentAt, _ = fixspec.UTCTimestamp(sent)
	}
	return st
}

// emit validates the pair's book as a rate, stamps it with the message's stamp, the term's epoch and
// the pair's next sequence and queues it for the publisher, which encodes it (off the FIX session's
// goroutine).
func (a *sessionApp) emit(st stamp, pair fx.Pair, ps *pairState) {
	r, err := ps.book.rate(pair)
	if err == nil {
		a.f.metrics.ProviderClockOffset.Set(r.ProviderTime.Sub(st.receivedAt).Seconds())
		// Stamped before Validate, so the identity fields it checks are the ones published.
		r.Epoch, r.Session, r.ReceivedAt, r.MsgSeqNum = a.t.lease.Epoch(), a.session, st.receivedAt.UTC(), st.msgSeqNum
		err = r.Validate()
	}
	if err == nil {
		// A provider time far ahead would freeze the pair for every reader (see CheckRange).
		err = r.CheckRange(st.receivedAt)
	}
	if err != nil {
		if !errors.Is(err, errIncompleteQuote) {
			a.invalidQuote(fixspec.Symbol(pair), err)
		}
		return
	}
	ps.seq++
	r.Seq = ps.seq
	a.t.pub.enqueue(a.t.ctx, &pending{pair: pair, receivedAt: st.receivedAt, sentAt: st.sentAt, rate: r})
}

func (a *sessionApp) invalidQuote(symbol string, err error) {
	kind, line, pace := "invalid_quote", "fix quote refused: malformed", a.f.refusedLog
	if errors.Is(err, eventing.ErrOutOfRange) {
		kind, line, pace = "out_of_range", "fix quote refused: out of range", a.f.outOfRangeLog
	}
	a.f.metrics.Malformed.WithLabelValues(kind).Inc()
	ok, held := pace.Allow(time.Now())
	if !ok {
		return
	}
	a.f.log.Warn(line, zap.String("session", a.session), zap.String("Symbol", symbol),
		zap.Error(err), zap.Int("refusedSinceLastWarning", held))
}
