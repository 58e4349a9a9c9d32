package fixsim

import (
	"fmt"

	"github.com/quickfixgo/enum"
	"github.com/quickfixgo/field"
	"github.com/quickfixgo/fix44/marketdatarequest"
	"github.com/quickfixgo/fix44/marketdatarequestreject"
	"github.com/quickfixgo/quickfix"
	"github.com/quickfixgo/tag"
	"go.uber.org/zap"

	"github.com/kawase-fx/kawase/eventing/fx"
	"github.com/kawase-fx/kawase/feeder/fixspec"
)

// Logout texts of refused logons.
const (
	reasonMissingCredentials = "logon requires Username(553) and Password(554)"
	reasonBadCredentials     = "invalid Username(553) or Password(554)"
)

// application is the simulator's quickfixgo Application.
type application struct {
	sim    *Sim
	router *quickfix.MessageRouter
}

func newApplication(s *Sim) *application {
	a := &application{sim: s, router: quickfix.NewMessageRouter()}
	a.router.AddRoute(marketdatarequest.Route(a.onMarketDataRequest))
	return a
}

// OnCreate is called when quickfixgo creates the session.
func (a *application) OnCreate(quickfix.SessionID) {}

// OnLogon records the logged-on session.
func (a *application) OnLogon(id quickfix.SessionID) {
	a.sim.onLogon(id)
	a.sim.log.Info("fix session logged on", zap.String("session", id.String()))
}

// OnLogout forgets the session's subscriptions.
func (a *application) OnLogout(id quickfix.SessionID) {
	a.sim.onLogout()
	a.sim.log.Info("fix session logged out", zap.String("session", id.String()))
}

// ToAdmin leaves outgoing admin messages alone.
func (a *application) ToAdmin(*quickfix.Message, quickfix.SessionID) {}

// ToApp leaves outgoing application messages alone.
func (a *application) ToApp(*quickfix.Message, quickfix.SessionID) error { return nil }

// FromAdmin checks the credentials of a Logon.
func (a *application) FromAdmin(msg *quickfix.Message, id quickfix.SessionID) quickfix.MessageRejectError {
	if !msg.IsMsgTypeOf(string(enum.MsgType_LOGON)) {
		return nil
	}
	user, uerr := msg.Body.GetString(tag.Username)
	pass, perr := msg.Body.GetString(tag.Password)
	reason := ""
	switch {
	case uerr != nil || perr != nil:
		reason = reasonMissingCredentials
	case !a.sim.checkCredentials(user, pass):
		reason = reasonBadCredentials
	default:
		return nil
	}
	a.sim.countRefusedLogon()
	a.sim.log.Warn("fix logon refused", zap.String("session", id.String()), zap.String("Username", user),
		zap.String("reason", reason))
	return quickfix.RejectLogon{Text: reason}
}

// FromApp routes MarketDataRequest (35=V); anything else is refused by quickfixgo.
func (a *application) FromApp(msg *quickfix.Message, id quickfix.SessionID) quickfix.MessageRejectError {
	return a.router.Route(msg, id)
}

// onMarketDataRequest subscribes, snapshots or unsubscribes the requested symbols; one unknown
// symbol rejects the whole request with MarketDataRequestReject (35=Y, MDReqRejReason 0).
func (a *application) onMarketDataRequest(msg marketdatarequest.MarketDataRequest, id quickfix.SessionID) quickfix.MessageRejectError {
	reqID, err := msg.GetMDReqID()
	if err != nil {
		return err
	}
	subType, err := msg.GetSubscriptionRequestType()
	if err != nil {
		return err
	}
	pairs, unknown, err := a.requestedPairs(msg)
	if err != nil {
		return err
	}
	a.sim.countRequest()
	if unknown != "" {
		a.reject(id, reqID, enum.MDReqRejReason_UNKNOWN_SYMBOL, "unknown symbol "+unknown)
		return nil
	}
	updateType, _ := msg.GetMDUpdateType()
	incremental := updateType == enum.MDUpdateType_INCREMENTAL_REFRESH
	switch subType {
	case enum.SubscriptionRequestType_SNAPSHOT:
		go a.sim.snapshot(id, reqID, pairs)
	case enum.SubscriptionRequestType_SNAPSHOT_PLUS_UPDATES:
		for _, p := range pairs {
			a.sim.subscribe(&subscription{pair: p, reqID: reqID, incremental: incremental})
		}
		if !incremental {
			go a.sim.snapshot(id, reqID, pairs)
		}
	case enum.SubscriptionRequestType_DISABLE_PREVIOUS_SNAPSHOT_PLUS_UPDATE_REQUEST:
		for _, p := range pairs {
			a.sim.unsubscribe(p)
		}
	default:
		a.reject(id, reqID, enum.MDReqRejReason_UNSUPPORTED_SUBSCRIPTIONREQUESTTYPE,
			fmt.Sprintf("unsupported SubscriptionRequestType(263) %q", subType))
	}
	return nil
}

// requestedPairs reads NoRelatedSym; unknown is the first symbol the simulator does not quote.
func (a *application) requestedPairs(msg marketdatarequest.MarketDataRequest) (pairs []fx.Pair, unknown string, rerr quickfix.MessageRejectError) {
	syms, rerr := msg.GetNoRelatedSym()
	if rerr != nil {
		return nil, "", rerr
	}
	for i := range syms.Len() {
		sym, rerr := syms.Get(i).GetSymbol()
		if rerr != nil {
			return nil, "", rerr
		}
		p, err := fixspec.Pair(sym)
		if err != nil || !a.sim.knows(p) {
			return nil, sym, nil
		}
		pairs = append(pairs, p)
	}
	return pairs, "", nil
}

func (a *application) reject(id quickfix.SessionID, reqID string, reason enum.MDReqRejReason, text string) {
	rej := marketdatarequestreject.New(field.NewMDReqID(reqID))
	rej.SetMDReqRejReason(reason)
	rej.SetText(text)
	a.sim.countReject()
	a.sim.log.Warn("fix market data request rejected", zap.String("MDReqID", reqID),
		zap.String("MDReqRejReason", string(reason)), zap.String("Text", text))
	if err := quickfix.SendToTarget(rej, id); err != nil {
		a.sim.log.Warn("fix send MarketDataRequestReject", zap.Error(err))
	}
}
