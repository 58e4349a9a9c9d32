package ledger

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing"
)

// roundWrites gathers what a round's commands write, table by table, so that each table takes one
// statement for the whole round (INSERT … SELECT FROM unnest of one array per column) instead of one
// per row: the statements, not the rows, are most of what a command costs PostgreSQL. Decimals travel
// as their exact decimal strings and are cast to numeric in SQL.
type roundWrites struct {
	accounts struct {
		id, balance           []string
		txSeq, execSeq, ordSq []int64
	}
	orders struct {
		id, account, pair, side, units, typ, tif, status, reason, command []string
		clientID, price, bound, execID                                    []*string
		seq                                                               []int64
		goodTill                                                          []*time.Time
		created, updated                                                  []time.Time
	}
	// changed are orders the round updates (at most once each: a command finishes an order once, and
	// a round holds one command per account).
	changed struct {
		id, status, reason []string
		execID             []*string
		at                 []time.Time
	}
	execs struct {
		id, account, orderID, pair, side, units, price, pl, ccy, reason []string
		seq                                                             []int64
		at                                                              []time.Time
	}
	positions struct {
		account, pair, units, avg []string
		at                        []time.Time
	}
	closed struct {
		account, pair []string
	}
	txs struct {
		account, typ, command, orderID, execID, pair, side, amount, balance, reason []string
		units, price                                                                []*string
		id                                                                          []int64
		at                                                                          []time.Time
	}
	postings struct {
		account, book, ccy, amount []string
		tx                         []int64
		at                         []time.Time
	}
	inbox struct {
		command, account, kind, result []string
	}
	outbox struct {
		topic, typ, id, key []string
		data                [][]byte
		at                  []time.Time
	}
}

func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func optDecimal(d *decimal.Decimal) *string {
	if d == nil {
		return nil
	}
	s := d.String()
	return &s
}

// addEffects adds everything a command changed on account a, its inbox entry and its events.
func (w *roundWrites) addEffects(a *accountState, cmd *eventing.OrderCommandV1, eff effects, events []outboxEvent) error {
	w.accounts.id = append(w.accounts.id, a.ID)
	w.accounts.balance = append(w.accounts.balance, a.Balance.String())
	w.accounts.txSeq = append(w.accounts.txSeq, a.TxSeq)
	w.accounts.execSeq = append(w.accounts.execSeq, a.ExecSeq)
	w.accounts.ordSq = append(w.accounts.ordSq, a.OrderSeq)
	for _, o := range eff.NewOrders {
		ow := &w.orders
		ow.id, ow.account, ow.seq = append(ow.id, o.ID), append(ow.account, o.AccountID), append(ow.seq, o.Seq)
		ow.clientID, ow.pair, ow.side = append(ow.clientID, optString(o.ClientOrderID)), append(ow.pair, string(o.Pair)), append(ow.side, o.Side)
		ow.units, ow.typ = append(ow.units, o.Units.String()), append(ow.typ, o.Type)
		ow.price, ow.bound = append(ow.price, optDecimal(o.Price)), append(ow.bound, optDecimal(o.PriceBound))
		ow.tif, ow.goodTill = append(ow.tif, o.TimeInForce), append(ow.goodTill, o.GoodTill)
		ow.status, ow.reason, ow.command = append(ow.status, o.Status), append(ow.reason, o.Reason), append(ow.command, o.CommandID)
		ow.execID = append(ow.execID, optString(o.ExecutionID))
		ow.created, ow.updated = append(ow.created, o.CreatedAt), append(ow.updated, o.UpdatedAt)
	}
	for _, o := range eff.Updated {
		cw := &w.changed
		cw.id, cw.status, cw.reason = append(cw.id, o.ID), append(cw.status, o.Status), append(cw.reason, o.Reason)
		cw.execID, cw.at = append(cw.execID, optString(o.ExecutionID)), append(cw.at, o.UpdatedAt)
	}
	for _, x := range eff.Executions {
		xw := &w.execs
		xw.id, xw.account, xw.seq, xw.orderID = append(xw.id, x.ID), append(xw.account, x.AccountID), append(xw.seq, x.AccountSeq), append(xw.orderID, x.OrderID)
		xw.pair, xw.side, xw.units = append(xw.pair, string(x.Pair)), append(xw.side, x.Side), append(xw.units, x.Units.String())
		xw.price, xw.pl, xw.ccy = append(xw.price, x.Price.String()), append(xw.pl, x.RealizedPL.String()), append(xw.ccy, string(x.Currency))
		xw.reason, xw.at = append(xw.reason, x.Reason), append(xw.at, x.ExecutedAt)
	}
	for pair, p := range eff.Positions {
		if p.Units.IsZero() {
			w.closed.account, w.closed.pair = append(w.closed.account, a.ID), append(w.closed.pair, string(pair))
			continue
		}
		pw := &w.positions
		pw.account, pw.pair = append(pw.account, a.ID), append(pw.pair, string(pair))
		pw.units, pw.avg, pw.at = append(pw.units, p.Units.String()), append(pw.avg, p.AveragePrice.String()), append(pw.at, eff.Result.DecidedAt)
	}
	w.addTransactions(eff.Transactions)
	return w.addInbox(cmd, eff.Result, events)
}

// addTransactions adds transactions and their postings.
func (w *roundWrites) addTransactions(txs []transaction) {
	for _, t := range txs {
		tw := &w.txs
		tw.account, tw.id, tw.typ, tw.command = append(tw.account, t.AccountID), append(tw.id, t.ID), append(tw.typ, t.Type), append(tw.command, t.CommandID)
		tw.orderID, tw.execID, tw.pair, tw.side = append(tw.orderID, t.OrderID), append(tw.execID, t.ExecutionID), append(tw.pair, string(t.Pair)), append(tw.side, t.Side)
		tw.units, tw.price = append(tw.units, optDecimal(t.Units)), append(tw.price, optDecimal(t.Price))
		tw.amount, tw.balance, tw.reason, tw.at = append(tw.amount, t.Amount.String()), append(tw.balance, t.Balance.String()), append(tw.reason, t.Reason), append(tw.at, t.Time)
		for _, p := range t.Entry {
			jw := &w.postings
			jw.account, jw.tx, jw.book = append(jw.account, t.AccountID), append(jw.tx, t.ID), append(jw.book, p.Book)
			jw.ccy, jw.amount, jw.at = append(jw.ccy, string(p.Currency)), append(jw.amount, p.Amount.String()), append(jw.at, t.Time)
		}
	}
}

// addInbox adds the inbox entry of cmd (its first result) and its outbox events. A command recorded
// meanwhile by another replica makes the inbox insert fail, and with it the round; the command's
// retry then finds the entry and answers it.
func (w *roundWrites) addInbox(cmd *eventing.OrderCommandV1, res eventing.OrderResultV1, events []outboxEvent) error {
	raw, err := json.Marshal(res)
	if err != nil {
		return fmt.Errorf("encode result of %s: %w", cmd.CommandID, err)
	}
	w.inbox.command, w.inbox.account = append(w.inbox.command, cmd.CommandID), append(w.inbox.account, cmd.AccountID)
	w.inbox.kind, w.inbox.result = append(w.inbox.kind, cmd.Kind), append(w.inbox.result, string(raw))
	for _, ev := range events {
		w.outbox.topic, w.outbox.typ, w.outbox.id = append(w.outbox.topic, ev.Topic), append(w.outbox.typ, ev.Type), append(w.outbox.id, ev.ID)
		w.outbox.key, w.outbox.data, w.outbox.at = append(w.outbox.key, ev.Key), append(w.outbox.data, ev.Data), append(w.outbox.at, ev.CreatedAt)
	}
	return nil
}

// queue queues the round's writes into b, parents before children (orders before their executions,
// transactions before their postings); the ids of the outbox rows, assigned in the order the events
// were added, are appended to *outboxIDs when the batch is read.
func (w *roundWrites) queue(b *pgx.Batch, outboxIDs *[]int64) {
	if a := &w.accounts; len(a.id) > 0 {
		b.Queue(`UPDATE ledger.accounts a SET balance = u.balance::numeric, tx_seq = u.tx_seq, exec_seq = u.exec_seq,
			order_seq = u.order_seq
			FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) AS u(id, balance, tx_seq, exec_seq, order_seq)
			WHERE a.id = u.id`, a.id, a.balance, a.txSeq, a.execSeq, a.ordSq)
	}
	if o := &w.orders; len(o.id) > 0 {
		b.Queue(`INSERT INTO ledger.orders (id, account_id, seq, client_order_id, pair, side, units, type, price,
			price_bound, time_in_force, good_till, status, reason, command_id, execution_id, created_at, updated_at)
			SELECT id, account_id, seq, client_order_id, pair, side, units::numeric, type, price::numeric,
				price_bound::numeric, time_in_force, good_till, status, reason, command_id, execution_id, created_at, updated_at
			FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
				$9::text[], $10::text[], $11::text[], $12::timestamptz[], $13::text[], $14::text[], $15::text[], $16::text[],
				$17::timestamptz[], $18::timestamptz[])
			AS u(id, account_id, seq, client_order_id, pair, side, units, type, price, price_bound, time_in_force, good_till,
				status, reason, command_id, execution_id, created_at, updated_at)`,
			o.id, o.account, o.seq, o.clientID, o.pair, o.side, o.units, o.typ, o.price, o.bound, o.tif, o.goodTill,
			o.status, o.reason, o.command, o.execID, o.created, o.updated)
	}
	if c := &w.changed; len(c.id) > 0 {
		b.Queue(`UPDATE ledger.orders o SET status = u.status, reason = u.reason, execution_id = u.execution_id,
			updated_at = u.updated_at
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
			AS u(id, status, reason, execution_id, updated_at)
			WHERE o.id = u.id`, c.id, c.status, c.reason, c.execID, c.at)
	}
	if x := &w.execs; len(x.id) > 0 {
		b.Queue(`INSERT INTO ledger.executions (id, account_id, account_seq, order_id, pair, side, units, price,
			realized_pl, currency, reason, executed_at)
			SELECT id, account_id, account_seq, order_id, pair, side, units::numeric, price::numeric, realized_pl::numeric,
				currency, reason, executed_at
			FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
				$9::text[], $10::text[], $11::text[], $12::timestamptz[])
			AS u(id, account_id, account_seq, order_id, pair, side, units, price, realized_pl, currency, reason, executed_at)`,
			x.id, x.account, x.seq, x.orderID, x.pair, x.side, x.units, x.price, x.pl, x.ccy, x.reason, x.at)
	}
	if p := &w.closed; len(p.account) > 0 {
		b.Queue(`DELETE FROM ledger.positions p USING unnest($1::text[], $2::text[]) AS u(account_id, pair)
			WHERE p.account_id = u.account_id AND p.pair = u.pair`, p.account, p.pair)
	}
	if p := &w.positions; len(p.account) > 0 {
		b.Queue(`INSERT INTO ledger.positions (account_id, pair, units, average_price, updated_at)
			SELECT account_id, pair, units::numeric, average_price::numeric, updated_at
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
			AS u(account_id, pair, units, average_price, updated_at)
			ON CONFLICT (account_id, pair)
			DO UPDATE SET units = excluded.units, average_price = excluded.average_price, updated_at = excluded.updated_at`,
			p.account, p.pair, p.units, p.avg, p.at)
	}
	if t := &w.txs; len(t.id) > 0 {
		b.Queue(`INSERT INTO ledger.transactions (account_id, id, type, command_id, order_id, execution_id, pair, side,
			units, price, amount, balance, reason, time)
			SELECT account_id, id, type, command_id, order_id, execution_id, pair, side, units::numeric, price::numeric,
				amount::numeric, balance::numeric, reason, time
			FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
				$9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::timestamptz[])
			AS u(account_id, id, type, command_id, order_id, execution_id, pair, side, units, price, amount, balance, reason, time)`,
			t.account, t.id, t.typ, t.command, t.orderID, t.execID, t.pair, t.side, t.units, t.price, t.amount, t.balance,
			t.reason, t.at)
	}
	if j := &w.postings; len(j.account) > 0 {
		b.Queue(`INSERT INTO ledger.postings (entry_account, entry_tx, book, currency, amount, posted_at)
			SELECT entry_account, entry_tx, book, currency, amount::numeric, posted_at
			FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
			AS u(entry_account, entry_tx, book, currency, amount, posted_at)`,
			j.account, j.tx, j.book, j.ccy, j.amount, j.at)
	}
	if in := &w.inbox; len(in.command) > 0 {
		b.Queue(`INSERT INTO ledger.inbox (command_id, account_id, kind, result)
			SELECT command_id, account_id, kind, result::jsonb
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(command_id, account_id, kind, result)`,
			in.command, in.account, in.kind, in.result)
	}
	if ob := &w.outbox; len(ob.id) > 0 {
		b.Queue(`INSERT INTO ledger.outbox (topic, event_type, event_id, partition_key, data, created_at)
			SELECT topic, event_type, event_id, partition_key, data, created_at
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::timestamptz[])
			AS u(topic, event_type, event_id, partition_key, data, created_at)
			RETURNING id`, ob.topic, ob.typ, ob.id, ob.key, ob.data, ob.at).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var id int64
				if err := rows.Scan(&id); err != nil {
					return fmt.Errorf("outbox rows: %w", err)
				}
				*outboxIDs = append(*outboxIDs, id)
			}
			return rows.Err()
		})
	}
}
