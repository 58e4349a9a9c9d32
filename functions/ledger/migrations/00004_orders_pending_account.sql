-- +goose NO TRANSACTION
-- +goose Up

-- The watcher reads the pending orders of the accounts the change log names (00002); an account's
-- other orders (filled, rejected, cancelled: nearly all of them) stay out of the index. Built
-- concurrently, outside a transaction, so that rounds, which insert orders, go on while it is built
-- over the whole order history. Should a build fail halfway, PostgreSQL leaves an invalid index that
-- queries ignore; drop it and run the migration again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_pending_account ON ledger.orders (account_id) WHERE status = 'pending';

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS ledger.orders_pending_account;
