package ledger

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shopspring/decimal"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kawase-fx/kawase/eventing/fx"
	ledgerv1 "github.com/kawase-fx/kawase/proto/ledger/v1"
)

// Page sizes of the query API.
const (
	pageSizeDefault = 100
	pageSizeMax     = 1000
)

// errOrderNotFound marks a query for an order the account does not have.
var errOrderNotFound = errors.New("order not found")

// RegisterGRPC registers the LedgerService on s.
func (l *Ledger) RegisterGRPC(s grpc.ServiceRegistrar) {
	ledgerv1.RegisterLedgerServiceServer(s, &queryServer{l: l})
}

// queryServer implements ledgerv1.LedgerServiceServer over the ledger's tables.
type queryServer struct {
	ledgerv1.UnimplementedLedgerServiceServer
	l *Ledger
}

// grpcError turns a ledger error into a gRPC status at the edge.
func grpcError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errAccountNotFound), errors.Is(err, errOrderNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrInvalidAccount):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrAccountConflict):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, errNoQuote):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Unavailable, err.Error())
}

func pageSize(n int32) (int, error) {
	switch {
	case n == 0:
		return pageSizeDefault, nil
	case n < 0 || n > pageSizeMax:
		return 0, status.Errorf(codes.InvalidArgument, "page_size must be 1..%d", pageSizeMax)
	}
	return int(n), nil
}

// OpenAccount opens an account (see Ledger.OpenAccount) and returns it valued.
func (s *queryServer) OpenAccount(ctx context.Context, r *ledgerv1.OpenAccountRequest) (*ledgerv1.OpenAccountResponse, error) {
	deposit, err := decimal.NewFromString(r.GetDeposit())
	if err == nil {
		err = fx.CheckMagnitude(deposit)
	}
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "deposit %q is not a decimal in range: %v", r.GetDeposit(), err)
	}
	created, err := s.l.OpenAccount(ctx, r.GetAccountId(), fx.Currency(r.GetCurrency()), deposit)
	if err != nil {
		return nil, grpcError(err)
	}
	a, err := s.l.accountView(ctx, r.GetAccountId())
	if err != nil {
		return nil, grpcError(err)
	}
	return &ledgerv1.OpenAccountResponse{Account: a, Created: created}, nil
}

// GetAccount returns an account valued at the current quotes.
func (s *queryServer) GetAccount(ctx context.Context, r *ledgerv1.GetAccountRequest) (*ledgerv1.Account, error) {
	a, err := s.l.accountView(ctx, r.GetAccountId())
	return a, grpcError(err)
}

// accountViewSQL reads an account, its pending order count and its positions in one statement, so
// the balance and the positions valued against it are of one snapshot: read apart, a fill committed
// between the two reads showed the position closed but not its profit in the balance, or the reverse.
const accountViewSQL = `SELECT a.currency, a.balance, a.tx_seq, a.created_at,
  (SELECT count(*) FROM ledger.orders WHERE account_id = $1 AND status = 'pending'),
  p.pairs, p.units, p.prices
FROM ledger.accounts a, LATERAL (
  SELECT coalesce(array_agg(pair ORDER BY pair), '{}') AS pairs, coalesce(array_agg(units::text ORDER BY pair), '{}') AS units,
    coalesce(array_agg(average_price::text ORDER BY pair), '{}') AS prices
  FROM ledger.positions WHERE account_id = $1) p
WHERE a.id = $1 AND a.kind = 'customer'`

// accountView reads an account and values it at the current quotes.
func (l *Ledger) accountView(ctx context.Context, id string) (*ledgerv1.Account, error) {
	var (
		a                    accountState
		created              time.Time
		pending              int32
		pairs, units, prices []string
	)
	err := l.pool.QueryRow(ctx, accountViewSQL, id).Scan(&a.Currency, &a.Balance, &a.TxSeq, &created, &pending, &pairs, &units, &prices)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %s", errAccountNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("read account %s: %w", id, err)
	}
	positions, err := positionsOf(pairs, units, prices)
	if err != nil {
		return nil, fmt.Errorf("read account %s: %w", id, err)
	}
	open := int32(len(positions))
	v, err := frozenPricer(l.prices).value(a.Currency, a.Balance, positions, l.leverage)
	if err != nil {
		return nil, fmt.Errorf("value account %s: %w", id, err)
	}
	out := &ledgerv1.Account{Id: id, Currency: string(a.Currency), Balance: money(a.Balance, a.Currency),
		UnrealizedPl: money(v.UnrealizedPL, a.Currency), Nav: money(v.NAV(), a.Currency),
		MarginUsed: money(v.MarginUsed, a.Currency), MarginAvailable: money(v.MarginAvailable(), a.Currency),
		CreatedAt: timestamppb.New(created), LastTransactionId: a.TxSeq, OpenPositions: open, PendingOrders: pending}
	if level, ok := v.MarginLevel(); ok {
		out.MarginLevel = level.Round(marginLevelDecimals).String()
	}
	return out, nil
}

// money renders an amount of currency c at its minor units.
func money(v decimal.Decimal, c fx.Currency) string { return c.FormatAmount(v) }

func (l *Ledger) readPositions(ctx context.Context, id string) (map[fx.Pair]position, error) {
	rows, err := l.pool.Query(ctx, `SELECT pair, units, average_price FROM ledger.positions WHERE account_id = $1`, id)
	if err != nil {
		return nil, fmt.Errorf("read positions of %s: %w", id, err)
	}
	defer rows.Close()
	out := make(map[fx.Pair]position)
	for rows.Next() {
		var p position
		if err := rows.Scan(&p.Pair, &p.Units, &p.AveragePrice); err != nil {
			return nil, fmt.Errorf("read positions of %s: %w", id, err)
		}
		out[p.Pair] = p
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read positions of %s: %w", id, err)
	}
	return out, nil
}

// positionsOf makes positions of the parallel arrays accountViewSQL reads.
func positionsOf(pairs, units, prices []string) (map[fx.Pair]position, error) {
	if len(units) != len(pairs) || len(prices) != len(pairs) {
		return nil, fmt.Errorf("positions: %d pairs, %d units, %d prices", len(pairs), len(units), len(prices))
	}
	out := make(map[fx.Pair]position, len(pairs))
	for i, pair := range pairs {
		u, err := decimal.NewFromString(units[i])
		if err != nil {
			return nil, fmt.Errorf("position %s units %q: %w", pair, units[i], err)
		}
		avg, err := decimal.NewFromString(prices[i])
		if err != nil {
			return nil, fmt.Errorf("position %s average price %q: %w", pair, prices[i], err)
		}
		out[fx.Pair(pair)] = position{Pair: fx.Pair(pair), Units: u, AveragePrice: avg}
	}
	return out, nil
}

// accountExists answers NotFound for an account the ledger does not have, so an empty list and an
// unknown account differ.
func (l *Ledger) accountExists(ctx context.Context, id string) error {
	var ok bool
	if err := l.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM ledger.accounts WHERE id = $1 AND kind = 'customer')`, id).Scan(&ok); err != nil {
		return fmt.Errorf("read account %s: %w", id, err)
	}
	if !ok {
		return fmt.Errorf("%w: %s", errAccountNotFound, id)
	}
	return nil
}

// orderWithExecution selects an order and its execution (if filled).
const orderWithExecution = `SELECT o.id, o.account_id, o.seq, coalesce(o.client_order_id, ''), o.pair, o.side,
	o.units, o.type, o.price, o.price_bound, o.time_in_force, o.good_till, o.status, o.reason, o.command_id,
	coalesce(o.execution_id, ''), o.created_at, o.updated_at,
	x.account_seq, x.price, x.realized_pl, x.currency, x.reason, x.executed_at
	FROM ledger.orders o LEFT JOIN ledger.executions x ON x.id = o.execution_id`

func scanOrderView(row pgx.Row) (*ledgerv1.Order, error) {
	var o order
	var price, bound, xPrice, xPL decimal.NullDecimal
	var xSeq *int64
	var xCcy, xReason *string
	var xAt *time.Time
	if err := row.Scan(&o.ID, &o.AccountID, &o.Seq, &o.ClientOrderID, &o.Pair, &o.Side, &o.Units, &o.Type, &price,
		&bound, &o.TimeInForce, &o.GoodTill, &o.Status, &o.Reason, &o.CommandID, &o.ExecutionID, &o.CreatedAt,
		&o.UpdatedAt, &xSeq, &xPrice, &xPL, &xCcy, &xReason, &xAt); err != nil {
		return nil, fmt.Errorf("scan order: %w", err)
	}
	v := &ledgerv1.Order{Id: o.ID, AccountId: o.AccountID, Seq: o.Seq, ClientOrderId: o.ClientOrderID,
		Pair: string(o.Pair), Side: o.Side, Units: o.Units.String(), Type: o.Type, TimeInForce: o.TimeInForce,
		Status: o.Status, Reason: o.Reason, CreatedAt: timestamppb.New(o.CreatedAt),
		UpdatedAt: timestamppb.New(o.UpdatedAt), CommandId: o.CommandID}
	if price.Valid {
		v.Price = o.Pair.FormatPrice(price.Decimal)
	}
	if bound.Valid {
		v.PriceBound = o.Pair.FormatPrice(bound.Decimal)
	}
	if o.GoodTill != nil {
		v.GoodTill = timestamppb.New(*o.GoodTill)
	}
	if o.ExecutionID != "" && xSeq != nil {
		x := execution{ID: o.ExecutionID, AccountID: o.AccountID, AccountSeq: *xSeq, OrderID: o.ID, Pair: o.Pair,
			Side: o.Side, Units: o.Units, Price: xPrice.Decimal, RealizedPL: xPL.Decimal, Currency: fx.Currency(*xCcy),
			Reason: *xReason, ExecutedAt: *xAt}
		v.Execution = executionView(x)
	}
	return v, nil
}

func executionView(x execution) *ledgerv1.Execution {
	return &ledgerv1.Execution{Id: x.ID, AccountId: x.AccountID, AccountSeq: x.AccountSeq, OrderId: x.OrderID,
		Pair: string(x.Pair), Side: x.Side, Units: x.Units.String(), Price: x.Pair.FormatPrice(x.Price),
		RealizedPl: money(x.RealizedPL, x.Currency), Currency: string(x.Currency), Reason: x.Reason,
		ExecutedAt: timestamppb.New(x.ExecutedAt)}
}

// GetOrder returns one order of an account by id or client order id (the live one first). Only
// customer accounts have orders, so a found order needs no check of its account: trading asks for
// every order it answers synchronously, and that is one query rather than two.
func (s *queryServer) GetOrder(ctx context.Context, r *ledgerv1.GetOrderRequest) (*ledgerv1.Order, error) {
	var row pgx.Row
	switch k := r.GetKey().(type) {
	case *ledgerv1.GetOrderRequest_OrderId:
		row = s.l.pool.QueryRow(ctx, orderWithExecution+` WHERE o.account_id = $1 AND o.id = $2`, r.GetAccountId(), k.OrderId)
	case *ledgerv1.GetOrderRequest_ClientOrderId:
		// The live order with the client id, else the latest rejected one.
		row = s.l.pool.QueryRow(ctx, orderWithExecution+` WHERE o.account_id = $1 AND o.client_order_id = $2
			ORDER BY (o.status = 'rejected'), o.seq DESC LIMIT 1`, r.GetAccountId(), k.ClientOrderId)
	default:
		return nil, status.Error(codes.InvalidArgument, "order_id or client_order_id is required")
	}
	o, err := scanOrderView(row)
	if errors.Is(err, pgx.ErrNoRows) {
		if err := s.l.accountExists(ctx, r.GetAccountId()); err != nil {
			return nil, grpcError(err)
		}
		return nil, grpcError(fmt.Errorf("%w: account %s", errOrderNotFound, r.GetAccountId()))
	}
	return o, grpcError(err)
}

// ListOrders pages an account's orders by seq, optionally of one status.
func (s *queryServer) ListOrders(ctx context.Context, r *ledgerv1.ListOrdersRequest) (*ledgerv1.ListOrdersResponse, error) {
	n, err := pageSize(r.GetPageSize())
	if err != nil {
		return nil, err
	}
	if err := s.l.accountExists(ctx, r.GetAccountId()); err != nil {
		return nil, grpcError(err)
	}
	rows, err := s.l.pool.Query(ctx, orderWithExecution+` WHERE o.account_id = $1 AND o.seq >= $2
		AND ($3 = '' OR o.status = $3) ORDER BY o.seq LIMIT $4`, r.GetAccountId(), r.GetFrom(), r.GetStatus(), n+1)
	if err != nil {
		return nil, grpcError(fmt.Errorf("list orders: %w", err))
	}
	defer rows.Close()
	out := &ledgerv1.ListOrdersResponse{}
	for rows.Next() {
		o, err := scanOrderView(rows)
		if err != nil {
			return nil, grpcError(err)
		}
		if len(out.Orders) == n {
			out.NextFrom = o.Seq
			break
		}
		out.Orders = append(out.Orders, o)
	}
	return out, grpcError(rows.Err())
}

// ListTrades pages an account's executions by account sequence.
func (s *queryServer) ListTrades(ctx context.Context, r *ledgerv1.ListTradesRequest) (*ledgerv1.ListTradesResponse, error) {
	n, err := pageSize(r.GetPageSize())
	if err != nil {
		return nil, err
	}
	if err := s.l.accountExists(ctx, r.GetAccountId()); err != nil {
		return nil, grpcError(err)
	}
	rows, err := s.l.pool.Query(ctx, `SELECT id, account_seq, order_id, pair, side, units, price, realized_pl, currency,
		reason, executed_at FROM ledger.executions WHERE account_id = $1 AND account_seq >= $2
		ORDER BY account_seq LIMIT $3`, r.GetAccountId(), r.GetFrom(), n+1)
	if err != nil {
		return nil, grpcError(fmt.Errorf("list trades: %w", err))
	}
	defer rows.Close()
	out := &ledgerv1.ListTradesResponse{}
	for rows.Next() {
		x := execution{AccountID: r.GetAccountId()}
		if err := rows.Scan(&x.ID, &x.AccountSeq, &x.OrderID, &x.Pair, &x.Side, &x.Units, &x.Price, &x.RealizedPL,
			&x.Currency, &x.Reason, &x.ExecutedAt); err != nil {
			return nil, grpcError(fmt.Errorf("list trades: %w", err))
		}
		if len(out.Trades) == n {
			out.NextFrom = x.AccountSeq
			break
		}
		out.Trades = append(out.Trades, executionView(x))
	}
	return out, grpcError(rows.Err())
}

// ListPositions returns an account's positions with their unrealized P&L and margin.
func (s *queryServer) ListPositions(ctx context.Context, r *ledgerv1.ListPositionsRequest) (*ledgerv1.ListPositionsResponse, error) {
	var ccy fx.Currency
	err := s.l.pool.QueryRow(ctx, `SELECT currency FROM ledger.accounts WHERE id = $1 AND kind = 'customer'`, r.GetAccountId()).Scan(&ccy)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, grpcError(fmt.Errorf("%w: %s", errAccountNotFound, r.GetAccountId()))
	}
	if err != nil {
		return nil, grpcError(fmt.Errorf("list positions: %w", err))
	}
	positions, err := s.l.readPositions(ctx, r.GetAccountId())
	if err != nil {
		return nil, grpcError(err)
	}
	v, err := frozenPricer(s.l.prices).value(ccy, decimal.Zero, positions, s.l.leverage)
	if err != nil {
		return nil, grpcError(err)
	}
	out := &ledgerv1.ListPositionsResponse{}
	for pair, p := range positions {
		side := "long"
		if p.Units.IsNegative() {
			side = "short"
		}
		pv := v.PerPair[pair]
		out.Positions = append(out.Positions, &ledgerv1.Position{Pair: string(pair), Units: p.Units.String(), Side: side,
			AveragePrice: p.AveragePrice.String(), UnrealizedPl: money(pv.UnrealizedPL, ccy), MarginUsed: money(pv.MarginUsed, ccy)})
	}
	sort.Slice(out.Positions, func(i, j int) bool { return out.Positions[i].Pair < out.Positions[j].Pair })
	return out, nil
}

// ListTransactions pages an account's transaction log by id.
func (s *queryServer) ListTransactions(ctx context.Context, r *ledgerv1.ListTransactionsRequest) (*ledgerv1.ListTransactionsResponse, error) {
	n, err := pageSize(r.GetPageSize())
	if err != nil {
		return nil, err
	}
	out := &ledgerv1.ListTransactionsResponse{}
	var ccy fx.Currency
	err = s.l.pool.QueryRow(ctx, `SELECT currency, tx_seq FROM ledger.accounts WHERE id = $1 AND kind = 'customer'`,
		r.GetAccountId()).Scan(&ccy, &out.LastTransactionId)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, grpcError(fmt.Errorf("%w: %s", errAccountNotFound, r.GetAccountId()))
	}
	if err != nil {
		return nil, grpcError(fmt.Errorf("list transactions: %w", err))
	}
	// Each row carries the account's tx_seq as of the page's own snapshot, so lastTransactionId is never
	// below an id on the page (read apart, a transaction committed between the reads made it so).
	rows, err := s.l.pool.Query(ctx, `SELECT id, type, command_id, order_id, execution_id, pair, side, units, price,
		amount, balance, reason, time, (SELECT tx_seq FROM ledger.accounts WHERE id = $1)
		FROM ledger.transactions WHERE account_id = $1 AND id >= $2 ORDER BY id LIMIT $3`,
		r.GetAccountId(), r.GetFrom(), n+1)
	if err != nil {
		return nil, grpcError(fmt.Errorf("list transactions: %w", err))
	}
	defer rows.Close()
	for rows.Next() {
		var t transaction
		var units, price decimal.NullDecimal
		if err := rows.Scan(&t.ID, &t.Type, &t.CommandID, &t.OrderID, &t.ExecutionID, &t.Pair, &t.Side, &units, &price,
			&t.Amount, &t.Balance, &t.Reason, &t.Time, &out.LastTransactionId); err != nil {
			return nil, grpcError(fmt.Errorf("list transactions: %w", err))
		}
		if len(out.Transactions) == n {
			out.NextFrom = t.ID
			break
		}
		v := &ledgerv1.Transaction{Id: t.ID, AccountId: r.GetAccountId(), Type: t.Type, CommandId: t.CommandID,
			OrderId: t.OrderID, ExecutionId: t.ExecutionID, Pair: string(t.Pair), Side: t.Side,
			Amount: money(t.Amount, ccy), Balance: money(t.Balance, ccy), Reason: t.Reason, Time: timestamppb.New(t.Time)}
		if units.Valid {
			v.Units = units.Decimal.String()
		}
		if price.Valid {
			v.Price = t.Pair.FormatPrice(price.Decimal)
		}
		out.Transactions = append(out.Transactions, v)
	}
	return out, grpcError(rows.Err())
}

// ListPendingOrders pages the pending orders of every account by order id.
func (s *queryServer) ListPendingOrders(ctx context.Context, r *ledgerv1.ListPendingOrdersRequest) (*ledgerv1.ListPendingOrdersResponse, error) {
	n, err := pageSize(r.GetPageSize())
	if err != nil {
		return nil, err
	}
	rows, err := s.l.pool.Query(ctx, orderWithExecution+` WHERE o.status = 'pending' AND o.id > $1
		AND ($2 = '' OR o.pair = $2) ORDER BY o.id LIMIT $3`, r.GetAfter(), r.GetPair(), n+1)
	if err != nil {
		return nil, grpcError(fmt.Errorf("list pending orders: %w", err))
	}
	defer rows.Close()
	out := &ledgerv1.ListPendingOrdersResponse{}
	for rows.Next() {
		o, err := scanOrderView(rows)
		if err != nil {
			return nil, grpcError(err)
		}
		if len(out.Orders) == n {
			out.NextAfter = out.Orders[n-1].Id
			break
		}
		out.Orders = append(out.Orders, o)
	}
	return out, grpcError(rows.Err())
}
