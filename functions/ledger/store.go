package ledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing"
	"github.com/kawase-fx/kawase/eventing/fx"
)

// errAccountNotFound marks a command or query for an account the ledger does not have.
var errAccountNotFound = errors.New("account not found")

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

// queueReads queues, into a round's first batch (after its BEGIN), what cmd needs read: the lock of
// the account's row (so the commands of one account are applied one after another), then the inbox
// entry of the command, the account's positions, the order the command names and whether its client
// order id is taken. The reads come after the lock in the pipeline, so under READ COMMITTED they see
// whatever the transaction that held the lock before committed. The returned context is filled in
// when the batch is read.
func queueReads(b *pgx.Batch, cmd *eventing.OrderCommandV1) *commandContext {
	cc := &commandContext{}
	a := &accountState{ID: cmd.AccountID, Positions: make(map[fx.Pair]position)}
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
	return cc
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

// unknownAccountResult is the result of a command about an account the ledger does not have.
func unknownAccountResult(cmd *eventing.OrderCommandV1, now time.Time) eventing.OrderResultV1 {
	return eventing.OrderResultV1{CommandID: cmd.CommandID, AccountID: cmd.AccountID, OrderID: cmd.OrderID,
		Status: eventing.ResultRejected, Reason: ReasonAccountNotFound, DecidedAt: now}
}
