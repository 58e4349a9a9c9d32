package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
)

// errAccountNotFound marks a command or query for an account the ledger does not have.
var errAccountNotFound = errors.New("account not found")

// querier is what the store needs of a connection or transaction.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// commandContext is what a command needs read under the account's lock.
type commandContext struct {
	// acct is the locked account, nil when the ledger has no such customer account.
	acct *accountState
	// prior is the first result of a command already applied.
	prior  *eventing.OrderResultV1
	target target
	// foreign is true when the command names an order of another account.
	foreign bool
}

// beginCommand opens the command's transaction and, in the same round trip, locks the account's row
// (so the commands of one account are applied one after another) and then reads the inbox entry of
// the command, the account's positions, the order the command names and whether its client order id
// is taken. The reads come after the lock in the pipeline, so under READ COMMITTED they see whatever
// the transaction that held the lock before committed.
func beginCommand(ctx context.Context, c querier, cmd *eventing.OrderCommandV1) (commandContext, error) {
	var cc commandContext
	a := &accountState{ID: cmd.AccountID, Positions: make(map[fx.Pair]position)}
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`SELECT currency, balance, tx_seq, exec_seq, order_seq, created_at
		FROM ledger.accounts WHERE id = $1 AND kind = 'customer' FOR UPDATE`, cmd.AccountID).QueryRow(func(row pgx.Row) error {
		err := row.Scan(&a.Currency, &a.Balance, &a.TxSeq, &a.ExecSeq, &a.OrderSeq, &a.CreatedAt)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("lock account %s: %w", cmd.AccountID, err)
		}
		cc.acct = a
		return nil
	})
	b.Queue(`SELECT result FROM ledger.inbox WHERE command_id = $1`, cmd.CommandID).QueryRow(func(row pgx.Row) error {
		var raw []byte
		err := row.Scan(&raw)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		var r eventing.OrderResultV1
		if err := json.Unmarshal(raw, &r); err != nil {
			return fmt.Errorf("decode inbox result of %s: %w", cmd.CommandID, err)
		}
		cc.prior = &r
		return nil
	})
	b.Queue(`SELECT pair, units, average_price FROM ledger.positions WHERE account_id = $1`, a.ID).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var p position
			if err := rows.Scan(&p.Pair, &p.Units, &p.AveragePrice); err != nil {
				return err
			}
			a.Positions[p.Pair] = p
		}
		return rows.Err()
	})
	if cmd.OrderID != "" {
		b.Queue(orderSelect+` WHERE o.id = $1`, cmd.OrderID).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				o, err := scanOrder(rows)
				if err != nil {
					return err
				}
				if o.AccountID != a.ID {
					cc.foreign = true
					continue
				}
				cc.target.Order = o
			}
			return rows.Err()
		})
	}
	if cmd.Kind == eventing.CommandPlace && cmd.Order.ClientOrderID != "" {
		b.Queue(`SELECT EXISTS (SELECT 1 FROM ledger.orders WHERE account_id = $1 AND client_order_id = $2
			AND status <> 'rejected')`, a.ID, cmd.Order.ClientOrderID).QueryRow(func(row pgx.Row) error {
			return row.Scan(&cc.target.ClientOrderIDTaken)
		})
	}
	if err := c.SendBatch(ctx, b).Close(); err != nil {
		return commandContext{}, fmt.Errorf("begin command %s: %w", cmd.CommandID, err)
	}
	return cc, nil
}

// orderSelect selects an order with its execution id; scanOrder reads it.
const orderSelect = `SELECT o.id, o.account_id, o.seq, coalesce(o.client_order_id, ''), o.pair, o.side, o.units,
	o.type, o.price, o.price_bound, o.time_in_force, o.good_till, o.status, o.reason, o.command_id,
	coalesce(o.execution_id, ''), o.created_at, o.updated_at FROM ledger.orders o`

func scanOrder(row pgx.Row) (*order, error) {
	var o order
	var price, bound decimal.NullDecimal
	if err := row.Scan(&o.ID, &o.AccountID, &o.Seq, &o.ClientOrderID, &o.Pair, &o.Side, &o.Units, &o.Type, &price,
		&bound, &o.TimeInForce, &o.GoodTill, &o.Status, &o.Reason, &o.CommandID, &o.ExecutionID, &o.CreatedAt,
		&o.UpdatedAt); err != nil {
		return nil, fmt.Errorf("scan order: %w", err)
	}
	if price.Valid {
		o.Price = &price.Decimal
	}
	if bound.Valid {
		o.PriceBound = &bound.Decimal
	}
	return &o, nil
}

// writeEffects stores everything a command changed, its inbox entry and its outbox events, and
// commits, in one round trip.
func writeEffects(ctx context.Context, tx querier, a *accountState, cmd *eventing.OrderCommandV1, eff effects, events []outboxEvent) error {
	b := &pgx.Batch{}
	b.Queue(`UPDATE ledger.accounts SET balance = $2, tx_seq = $3, exec_seq = $4, order_seq = $5 WHERE id = $1`,
		a.ID, a.Balance, a.TxSeq, a.ExecSeq, a.OrderSeq)
	for _, o := range eff.NewOrders {
		b.Queue(`INSERT INTO ledger.orders (id, account_id, seq, client_order_id, pair, side, units, type, price,
			price_bound, time_in_force, good_till, status, reason, command_id, execution_id, created_at, updated_at)
			VALUES ($1, $2, $3, nullif($4, ''), $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, nullif($16, ''), $17, $18)`,
			o.ID, o.AccountID, o.Seq, o.ClientOrderID, o.Pair, o.Side, o.Units, o.Type, nullDecimal(o.Price),
			nullDecimal(o.PriceBound), o.TimeInForce, o.GoodTill, o.Status, o.Reason, o.CommandID, o.ExecutionID,
			o.CreatedAt, o.UpdatedAt)
	}
	for _, o := range eff.Updated {
		b.Queue(`UPDATE ledger.orders SET status = $2, reason = $3, execution_id = nullif($4, ''), updated_at = $5
			WHERE id = $1`, o.ID, o.Status, o.Reason, o.ExecutionID, o.UpdatedAt)
	}
	for _, x := range eff.Executions {
		b.Queue(`INSERT INTO ledger.executions (id, account_id, account_seq, order_id, pair, side, units, price,
			realized_pl, currency, reason, executed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
			x.ID, x.AccountID, x.AccountSeq, x.OrderID, x.Pair, x.Side, x.Units, x.Price, x.RealizedPL, x.Currency,
			x.Reason, x.ExecutedAt)
	}
	for pair, p := range eff.Positions {
		if p.Units.IsZero() {
			b.Queue(`DELETE FROM ledger.positions WHERE account_id = $1 AND pair = $2`, a.ID, pair)
			continue
		}
		b.Queue(`INSERT INTO ledger.positions (account_id, pair, units, average_price, updated_at)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account_id, pair)
			DO UPDATE SET units = excluded.units, average_price = excluded.average_price, updated_at = excluded.updated_at`,
			a.ID, pair, p.Units, p.AveragePrice, eff.Result.DecidedAt)
	}
	queueTransactions(b, eff.Transactions)
	result, err := json.Marshal(eff.Result)
	if err != nil {
		return fmt.Errorf("encode result of %s: %w", cmd.CommandID, err)
	}
	b.Queue(`INSERT INTO ledger.inbox (command_id, account_id, kind, result) VALUES ($1, $2, $3, $4)`,
		cmd.CommandID, cmd.AccountID, cmd.Kind, result)
	queueOutbox(b, events)
	b.Queue(`COMMIT`)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("write command %s: %w", cmd.CommandID, err)
	}
	return nil
}

func queueTransactions(b *pgx.Batch, txs []transaction) {
	for _, t := range txs {
		b.Queue(`INSERT INTO ledger.transactions (account_id, id, type, command_id, order_id, execution_id, pair, side,
			units, price, amount, balance, reason, time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`,
			t.AccountID, t.ID, t.Type, t.CommandID, t.OrderID, t.ExecutionID, t.Pair, t.Side, nullDecimal(t.Units),
			nullDecimal(t.Price), t.Amount, t.Balance, t.Reason, t.Time)
		for _, p := range t.Entry {
			b.Queue(`INSERT INTO ledger.postings (entry_account, entry_tx, book, currency, amount, posted_at)
				VALUES ($1, $2, $3, $4, $5, $6)`, t.AccountID, t.ID, p.Book, p.Currency, p.Amount, t.Time)
		}
	}
}

func queueOutbox(b *pgx.Batch, events []outboxEvent) {
	for _, ev := range events {
		b.Queue(`INSERT INTO ledger.outbox (topic, event_type, event_id, partition_key, data, created_at)
			VALUES ($1, $2, $3, $4, $5, $6)`, ev.Topic, ev.Type, ev.ID, ev.Key, ev.Data, ev.CreatedAt)
	}
}

func nullDecimal(d *decimal.Decimal) decimal.NullDecimal {
	if d == nil {
		return decimal.NullDecimal{}
	}
	return decimal.NullDecimal{Decimal: *d, Valid: true}
}

// recordUnknownAccount records, for a command about an account the ledger does not have, the
// rejection in the inbox (first result wins) and its result event, and commits.
func recordUnknownAccount(ctx context.Context, tx querier, cmd *eventing.OrderCommandV1, now time.Time) (eventing.OrderResultV1, bool, error) {
	res := eventing.OrderResultV1{CommandID: cmd.CommandID, AccountID: cmd.AccountID, OrderID: cmd.OrderID,
		Status: eventing.ResultRejected, Reason: ReasonAccountNotFound, DecidedAt: now}
	raw, err := json.Marshal(res)
	if err != nil {
		return res, false, fmt.Errorf("encode result of %s: %w", cmd.CommandID, err)
	}
	tag, err := tx.Exec(ctx, `INSERT INTO ledger.inbox (command_id, account_id, kind, result) VALUES ($1, $2, $3, $4)
		ON CONFLICT (command_id) DO NOTHING`, cmd.CommandID, cmd.AccountID, cmd.Kind, raw)
	if err != nil {
		return res, false, fmt.Errorf("record command %s: %w", cmd.CommandID, err)
	}
	if tag.RowsAffected() == 0 {
		var prior eventing.OrderResultV1
		if err := tx.QueryRow(ctx, `SELECT result FROM ledger.inbox WHERE command_id = $1`, cmd.CommandID).Scan(&raw); err != nil {
			return res, false, fmt.Errorf("read inbox of %s: %w", cmd.CommandID, err)
		}
		if err := json.Unmarshal(raw, &prior); err != nil {
			return res, false, fmt.Errorf("decode inbox result of %s: %w", cmd.CommandID, err)
		}
		if _, err := tx.Exec(ctx, "COMMIT"); err != nil {
			return res, false, fmt.Errorf("record command %s: %w", cmd.CommandID, err)
		}
		return prior, true, nil
	}
	events, err := resultEvents(res, nil, now)
	if err != nil {
		return res, false, err
	}
	b := &pgx.Batch{}
	queueOutbox(b, events)
	b.Queue(`COMMIT`)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return res, false, fmt.Errorf("write command %s: %w", cmd.CommandID, err)
	}
	return res, false, nil
}
