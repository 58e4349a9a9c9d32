package trading

import (
	"encoding/json"
	"time"

	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
	ledgerv1 "github.com/kawase-fx/kawase/proto/ledger/v1"
)

// The JSON representations of the REST API. Amounts, prices and units are decimal strings.

// AccountView is an account as GET /v1/accounts/{id} shows it.
type AccountView struct {
	ID                string  `json:"id"`
	Currency          string  `json:"currency"`
	Balance           string  `json:"balance"`
	UnrealizedPL      string  `json:"unrealizedPL"`
	NAV               string  `json:"nav"`
	MarginUsed        string  `json:"marginUsed"`
	MarginAvailable   string  `json:"marginAvailable"`
	MarginLevel       *string `json:"marginLevel"`
	OpenPositionCount int32   `json:"openPositionCount"`
	PendingOrderCount int32   `json:"pendingOrderCount"`
	LastTransactionID string  `json:"lastTransactionId"`
	CreatedAt         string  `json:"createdAt"`
}

// NewAccountView is the answer to POST /v1/accounts: the account and its API token, shown only here
// (a replay of the request under its Idempotency-Key answers an empty token: trading keeps only the
// token's hash).
type NewAccountView struct {
	AccountView
	Token string `json:"token"`
}

// ExecutionView is one fill.
type ExecutionView struct {
	ID         string `json:"id"`
	AccountSeq int64  `json:"accountSeq"`
	OrderID    string `json:"orderId"`
	Pair       string `json:"pair"`
	Side       string `json:"side"`
	Units      string `json:"units"`
	Price      string `json:"price"`
	RealizedPL string `json:"realizedPL"`
	Currency   string `json:"currency"`
	Reason     string `json:"reason"`
	ExecutedAt string `json:"executedAt"`
}

// OrderView is an order. Status is the ledger's (pending, filled, rejected, cancelled, expired), or
// "submitted" in a 202 answer, before the ledger has decided.
type OrderView struct {
	ID            string         `json:"id"`
	AccountID     string         `json:"accountId"`
	ClientOrderID string         `json:"clientOrderId,omitempty"`
	Pair          string         `json:"pair"`
	Side          string         `json:"side"`
	Units         string         `json:"units"`
	Type          string         `json:"type"`
	Price         string         `json:"price,omitempty"`
	PriceBound    string         `json:"priceBound,omitempty"`
	TimeInForce   string         `json:"timeInForce"`
	GoodTill      string         `json:"goodTill,omitempty"`
	Status        string         `json:"status"`
	Reason        string         `json:"reason,omitempty"`
	CreatedAt     string         `json:"createdAt,omitempty"`
	UpdatedAt     string         `json:"updatedAt,omitempty"`
	Execution     *ExecutionView `json:"execution,omitempty"`
	// Href is the order's URL.
	Href string `json:"href"`
}

// StatusSubmitted is the status of an order the ledger has not decided within the wait.
const StatusSubmitted = "submitted"

// PositionView is a net position.
type PositionView struct {
	Pair         string `json:"pair"`
	Units        string `json:"units"`
	Side         string `json:"side"`
	AveragePrice string `json:"averagePrice"`
	UnrealizedPL string `json:"unrealizedPL"`
	MarginUsed   string `json:"marginUsed"`
}

// TransactionView is one change to an account.
type TransactionView struct {
	ID          string `json:"id"`
	Type        string `json:"type"`
	CommandID   string `json:"commandId"`
	OrderID     string `json:"orderId,omitempty"`
	ExecutionID string `json:"executionId,omitempty"`
	Pair        string `json:"pair,omitempty"`
	Side        string `json:"side,omitempty"`
	Units       string `json:"units,omitempty"`
	Price       string `json:"price,omitempty"`
	Amount      string `json:"amount"`
	Balance     string `json:"balance"`
	Reason      string `json:"reason,omitempty"`
	Time        string `json:"time"`
}

// Pages of lists: Next is the URL of the next page, absent on the last.
type (
	// OrderPage is a page of GET …/orders.
	OrderPage struct {
		Orders []OrderView `json:"orders"`
		Next   string      `json:"next,omitempty"`
	}
	// TradePage is a page of GET …/trades.
	TradePage struct {
		Trades []ExecutionView `json:"trades"`
		Next   string          `json:"next,omitempty"`
	}
	// PositionList is GET …/positions.
	PositionList struct {
		Positions []PositionView `json:"positions"`
	}
	// TransactionPage is a page of GET …/transactions.
	TransactionPage struct {
		Transactions      []TransactionView `json:"transactions"`
		LastTransactionID string            `json:"lastTransactionId"`
		Next              string            `json:"next,omitempty"`
	}
)

// OrderRequest is the body of POST …/orders and the order of a kawase.order.request.v1.
type OrderRequest struct {
	Pair          fx.Pair          `json:"pair"`
	Side          string           `json:"side"`
	Units         decimal.Decimal  `json:"units"`
	Type          string           `json:"type"`
	Price         *decimal.Decimal `json:"price,omitempty"`
	PriceBound    *decimal.Decimal `json:"priceBound,omitempty"`
	TimeInForce   string           `json:"timeInForce,omitempty"`
	GoodTill      *time.Time       `json:"goodTill,omitempty"`
	ClientOrderID string           `json:"clientOrderId,omitempty"`
}

// AccountRequest is the body of POST /v1/accounts.
type AccountRequest struct {
	Currency string          `json:"currency"`
	Deposit  decimal.Decimal `json:"deposit"`
}

func timeString(t interface{ AsTime() time.Time }) string {
	if t == nil {
		return ""
	}
	return t.AsTime().UTC().Format(time.RFC3339Nano)
}

func accountView(a *ledgerv1.Account) AccountView {
	v := AccountView{ID: a.GetId(), Currency: a.GetCurrency(), Balance: a.GetBalance(), UnrealizedPL: a.GetUnrealizedPl(),
		NAV: a.GetNav(), MarginUsed: a.GetMarginUsed(), MarginAvailable: a.GetMarginAvailable(),
		OpenPositionCount: a.GetOpenPositions(), PendingOrderCount: a.GetPendingOrders(),
		LastTransactionID: i64(a.GetLastTransactionId()), CreatedAt: timeString(a.GetCreatedAt())}
	if l := a.GetMarginLevel(); l != "" {
		v.MarginLevel = &l
	}
	return v
}

func executionView(x *ledgerv1.Execution) *ExecutionView {
	if x == nil {
		return nil
	}
	return &ExecutionView{ID: x.GetId(), AccountSeq: x.GetAccountSeq(), OrderID: x.GetOrderId(), Pair: x.GetPair(),
		Side: x.GetSide(), Units: x.GetUnits(), Price: x.GetPrice(), RealizedPL: x.GetRealizedPl(),
		Currency: x.GetCurrency(), Reason: x.GetReason(), ExecutedAt: timeString(x.GetExecutedAt())}
}

func orderView(o *ledgerv1.Order) OrderView {
	v := OrderView{ID: o.GetId(), AccountID: o.GetAccountId(), ClientOrderID: o.GetClientOrderId(), Pair: o.GetPair(),
		Side: o.GetSide(), Units: o.GetUnits(), Type: o.GetType(), Price: o.GetPrice(), PriceBound: o.GetPriceBound(),
		TimeInForce: o.GetTimeInForce(), Status: o.GetStatus(), Reason: o.GetReason(),
		CreatedAt: timeString(o.GetCreatedAt()), UpdatedAt: timeString(o.GetUpdatedAt()),
		Execution: executionView(o.GetExecution()), Href: orderPath(o.GetAccountId(), o.GetId())}
	if o.GetGoodTill() != nil {
		v.GoodTill = timeString(o.GetGoodTill())
	}
	return v
}

// submittedView is an order as requested, before the ledger decided it; with a result it shows the
// decision (used when the ledger's query service cannot be reached right after it).
func submittedView(acct, orderID string, spec *eventing.OrderSpec, res *eventing.OrderResultV1) OrderView {
	v := OrderView{ID: orderID, AccountID: acct, ClientOrderID: spec.ClientOrderID, Pair: string(spec.Pair), Side: spec.Side,
		Units: spec.Units.String(), Type: spec.Type, TimeInForce: spec.TimeInForce, Status: StatusSubmitted,
		Href: orderPath(acct, orderID)}
	if spec.Price != nil {
		v.Price = spec.Pair.FormatPrice(*spec.Price)
	}
	if spec.PriceBound != nil {
		v.PriceBound = spec.Pair.FormatPrice(*spec.PriceBound)
	}
	if spec.GoodTill != nil {
		v.GoodTill = spec.GoodTill.UTC().Format(time.RFC3339Nano)
	}
	if res == nil {
		return v
	}
	v.Status, v.Reason = resultStatus(res.Status), res.Reason
	if res.ExecutionID != "" && res.Price != nil {
		v.Execution = &ExecutionView{ID: res.ExecutionID, OrderID: orderID, Pair: string(spec.Pair), Side: spec.Side,
			Units: spec.Units.String(), Price: res.Price.String()}
	}
	return v
}

// placedView is the order a placement recorded, built from the command's spec and the ledger's result
// exactly as the ledger's query service shows it right after, so a decided placement is answered
// without asking the ledger again. ok is false when the result does not describe a recorded order
// fully (a placement refused before recording, or a result from a ledger that did not say).
func placedView(acct, orderID string, spec *eventing.OrderSpec, res *eventing.OrderResultV1) (v OrderView, ok bool) {
	if !res.Placed || res.OrderID != orderID {
		return OrderView{}, false
	}
	filled := res.Status == eventing.ResultFilled
	if filled && (res.ExecutionID == "" || res.Price == nil || res.RealizedPL == nil || res.Currency == "" || res.AccountSeq < 1) {
		return OrderView{}, false
	}
	v = submittedView(acct, orderID, spec, nil)
	at := res.DecidedAt.UTC().Format(time.RFC3339Nano)
	v.Status, v.Reason, v.CreatedAt, v.UpdatedAt = resultStatus(res.Status), res.Reason, at, at
	if filled {
		v.Execution = &ExecutionView{ID: res.ExecutionID, AccountSeq: res.AccountSeq, OrderID: orderID, Pair: v.Pair,
			Side: v.Side, Units: v.Units, Price: spec.Pair.FormatPrice(*res.Price),
			RealizedPL: res.Currency.FormatAmount(*res.RealizedPL), Currency: string(res.Currency),
			Reason: eventing.ExecutionReasonOrder, ExecutedAt: at}
	}
	return v, true
}

// resultStatus maps a result status to the order status it leaves.
func resultStatus(s string) string {
	if s == eventing.ResultAccepted {
		return "pending"
	}
	return s
}

func positionView(p *ledgerv1.Position) PositionView {
	return PositionView{Pair: p.GetPair(), Units: p.GetUnits(), Side: p.GetSide(), AveragePrice: p.GetAveragePrice(),
		UnrealizedPL: p.GetUnrealizedPl(), MarginUsed: p.GetMarginUsed()}
}

func transactionView(t *ledgerv1.Transaction) TransactionView {
	return TransactionView{ID: i64(t.GetId()), Type: t.GetType(), CommandID: t.GetCommandId(), OrderID: t.GetOrderId(),
		ExecutionID: t.GetExecutionId(), Pair: t.GetPair(), Side: t.GetSide(), Units: t.GetUnits(), Price: t.GetPrice(),
		Amount: t.GetAmount(), Balance: t.GetBalance(), Reason: t.GetReason(), Time: timeString(t.GetTime())}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Every view is plain data: failing to encode one is a bug.
		panic("trading: encode view: " + err.Error())
	}
	return b
}
