package ledger

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shopspring/decimal"

	"github.com/kawase-fx/kawase/eventing/fx"
)

// Account opening errors.
var (
	// ErrInvalidAccount marks an account opening with a bad id, currency or deposit.
	ErrInvalidAccount = errors.New("invalid account")
	// ErrAccountConflict marks an account id opened before with other terms.
	ErrAccountConflict = errors.New("account exists with other terms")
)

var accountIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// openCommandID is the command id recorded with an account's opening transaction.
const openCommandID = "open"

// OpenAccount opens account id in currency ccy (JPY or USD) with an initial deposit booked from the
// house funding account. Opening is not a command on the account's partition: before it the account
// does not exist, so no command of it can be ordered before it, and the caller learns the id only
// from this call. It is idempotent by id: the same terms again answer created = false.
func (l *Ledger) OpenAccount(ctx context.Context, id string, ccy fx.Currency, deposit decimal.Decimal) (bool, error) {
	if !accountIDPattern.MatchString(id) {
		return false, fmt.Errorf("%w: id %q", ErrInvalidAccount, id)
	}
	if ccy != CurrencyJPY && ccy != CurrencyUSD {
		return false, fmt.Errorf("%w: currency must be JPY or USD, not %q", ErrInvalidAccount, ccy)
	}
	if deposit.IsNegative() || !deposit.Equal(roundAmount(deposit, ccy)) {
		return false, fmt.Errorf("%w: deposit %s must be non-negative with at most %d decimals", ErrInvalidAccount, deposit, ccy.MinorUnits())
	}
	var created bool
	err := pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		now := time.Now().UTC()
		tag, err := tx.Exec(ctx, `INSERT INTO ledger.accounts (id, kind, currency, balance, deposit, tx_seq, created_at)
			VALUES ($1, 'customer', $2, $3, $3, 1, $4) ON CONFLICT (id) DO NOTHING`, id, ccy, deposit, now)
		if err != nil {
			return fmt.Errorf("open account %s: %w", id, err)
		}
		if tag.RowsAffected() == 0 {
			return sameTerms(ctx, tx, id, ccy, deposit)
		}
		created = true
		var je entry
		je.transfer(HouseFunding, id, ccy, deposit)
		t := transaction{AccountID: id, ID: 1, Type: TxAccountOpen, CommandID: openCommandID, Amount: deposit,
			Balance: deposit, Time: now, Entry: je}
		t.Entry.mustBalance("opening of " + id)
		var w roundWrites
		w.addTransactions([]transaction{t})
		b := &pgx.Batch{}
		w.queue(b, nil)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("open account %s: %w", id, err)
		}
		return nil
	})
	return created, err
}

func sameTerms(ctx context.Context, tx pgx.Tx, id string, ccy fx.Currency, deposit decimal.Decimal) error {
	var kind string
	var gotCcy *string
	var gotDeposit decimal.Decimal
	if err := tx.QueryRow(ctx, `SELECT kind, currency, deposit FROM ledger.accounts WHERE id = $1`, id).
		Scan(&kind, &gotCcy, &gotDeposit); err != nil {
		return fmt.Errorf("open account %s: %w", id, err)
	}
	if kind != "customer" || gotCcy == nil || fx.Currency(*gotCcy) != ccy || !gotDeposit.Equal(deposit) {
		return fmt.Errorf("%w: %s", ErrAccountConflict, id)
	}
	return nil
}
