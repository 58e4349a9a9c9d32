-- +goose Up

-- book_changes tells the watcher which accounts changed, so that it re-reads only those instead of
-- every pending order and position. Every UPDATE of ledger.accounts records, in one row, the ids it
-- updated and the id of its transaction (a command round updates every account it touches, so a
-- change to an account's balance, positions or orders always appears here, whichever replica or
-- binary wrote it). The watcher reads the rows whose transaction committed after its previous read
-- by comparing xid with the snapshot of that read, which stays exact when transactions commit out of
-- the order they started in. The ledger prunes the rows of transactions that ended over a minute ago.
CREATE TABLE ledger.book_changes (
    xid          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    accounts     text[] NOT NULL
);
CREATE INDEX book_changes_xid ON ledger.book_changes (xid);

-- book_changes_pruned holds the highest cutoff a prune has used (rows with xid below it are gone),
-- written in the prune's transaction. A watcher whose previous snapshot's xmin is below it may have
-- lost rows it needs, so it reads the whole book: whatever the clocks and delays, no change is missed.
CREATE TABLE ledger.book_changes_pruned (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    cutoff  xid8 NOT NULL
);
INSERT INTO ledger.book_changes_pruned (cutoff) VALUES ('0');

-- +goose StatementBegin
CREATE FUNCTION ledger.record_book_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger.book_changes (accounts)
        SELECT array_agg(id) FROM changed_accounts WHERE kind = 'customer' HAVING count(*) > 0;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER accounts_book_changes AFTER UPDATE ON ledger.accounts
    REFERENCING NEW TABLE AS changed_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.record_book_changes();

-- +goose Down
DROP TRIGGER accounts_book_changes ON ledger.accounts;
DROP FUNCTION ledger.record_book_changes();
DROP TABLE ledger.book_changes_pruned;
DROP TABLE ledger.book_changes;
