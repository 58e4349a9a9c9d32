-- +goose Up

-- accounts holds customer accounts (one currency each, balance materialized) and the house accounts
-- that are the other side of every posting (multi-currency; their balances are the sums of their
-- postings and are never materialized, so no command ever waits on a house row).
CREATE TABLE ledger.accounts (
    id          text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('customer', 'house')),
    currency    text CHECK ((kind = 'house') = (currency IS NULL)),
    balance     numeric NOT NULL DEFAULT 0,
    deposit     numeric NOT NULL DEFAULT 0,
    -- tx_seq, exec_seq and order_seq are the last transaction id, execution account sequence and
    -- order seq of the account; they advance under the account's row lock, so they have no gaps.
    tx_seq      bigint NOT NULL DEFAULT 0,
    exec_seq    bigint NOT NULL DEFAULT 0,
    order_seq   bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO ledger.accounts (id, kind) VALUES
    ('house:funding', 'house'),
    ('house:dealer', 'house'),
    ('house:fx', 'house');

CREATE TABLE ledger.orders (
    id              text PRIMARY KEY,
    account_id      text NOT NULL REFERENCES ledger.accounts (id),
    seq             bigint NOT NULL,
    client_order_id text,
    pair            text NOT NULL,
    side            text NOT NULL CHECK (side IN ('buy', 'sell')),
    units           numeric NOT NULL CHECK (units > 0),
    type            text NOT NULL CHECK (type IN ('market', 'limit', 'stop')),
    price           numeric,
    price_bound     numeric,
    time_in_force   text NOT NULL,
    good_till       timestamptz,
    status          text NOT NULL CHECK (status IN ('pending', 'filled', 'rejected', 'cancelled', 'expired')),
    reason          text NOT NULL DEFAULT '',
    command_id      text NOT NULL,
    execution_id    text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    UNIQUE (account_id, seq)
);

-- A client order id names at most one live (not rejected) order of an account.
CREATE UNIQUE INDEX orders_client_order_id ON ledger.orders (account_id, client_order_id)
    WHERE client_order_id IS NOT NULL AND status <> 'rejected';
CREATE INDEX orders_pending ON ledger.orders (id) WHERE status = 'pending';

CREATE TABLE ledger.executions (
    id           text PRIMARY KEY,
    account_id   text NOT NULL REFERENCES ledger.accounts (id),
    account_seq  bigint NOT NULL,
    order_id     text NOT NULL UNIQUE REFERENCES ledger.orders (id),
    pair         text NOT NULL,
    side         text NOT NULL,
    units        numeric NOT NULL CHECK (units > 0),
    price        numeric NOT NULL CHECK (price > 0),
    realized_pl  numeric NOT NULL,
    currency     text NOT NULL,
    reason       text NOT NULL CHECK (reason IN ('order', 'trigger', 'closeout')),
    executed_at  timestamptz NOT NULL,
    UNIQUE (account_id, account_seq)
);

-- positions nets every account's fills per pair: units are signed (long > 0), zero rows are deleted.
CREATE TABLE ledger.positions (
    account_id    text NOT NULL REFERENCES ledger.accounts (id),
    pair          text NOT NULL,
    units         numeric NOT NULL CHECK (units <> 0),
    average_price numeric NOT NULL CHECK (average_price > 0),
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (account_id, pair)
);

-- transactions is every change to an account, numbered per account without gaps.
CREATE TABLE ledger.transactions (
    account_id    text NOT NULL REFERENCES ledger.accounts (id),
    id            bigint NOT NULL,
    type          text NOT NULL,
    command_id    text NOT NULL,
    order_id      text NOT NULL DEFAULT '',
    execution_id  text NOT NULL DEFAULT '',
    pair          text NOT NULL DEFAULT '',
    side          text NOT NULL DEFAULT '',
    units         numeric,
    price         numeric,
    amount        numeric NOT NULL DEFAULT 0,
    balance       numeric NOT NULL,
    reason        text NOT NULL DEFAULT '',
    time          timestamptz NOT NULL,
    PRIMARY KEY (account_id, id)
);

-- postings is the double-entry journal: every transaction that moves money writes a set of postings
-- that sums to zero per currency, so each currency's total over all accounts never changes.
CREATE TABLE ledger.postings (
    id            bigserial PRIMARY KEY,
    entry_account text NOT NULL,
    entry_tx      bigint NOT NULL,
    -- book is the account posted to: the customer account or a house account. No foreign key: every
    -- posting to a house row would take a share lock on it, and all commands would contend there.
    book          text NOT NULL,
    currency      text NOT NULL,
    amount        numeric NOT NULL CHECK (amount <> 0),
    posted_at     timestamptz NOT NULL,
    FOREIGN KEY (entry_account, entry_tx) REFERENCES ledger.transactions (account_id, id)
);
CREATE INDEX postings_entry ON ledger.postings (entry_account, entry_tx);
CREATE INDEX postings_book ON ledger.postings (book, currency);

-- The database checks the invariant too, at commit: a journal entry that does not balance in some
-- currency aborts its transaction.
-- +goose StatementBegin
CREATE FUNCTION ledger.check_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM ledger.postings
               WHERE entry_account = NEW.entry_account AND entry_tx = NEW.entry_tx
               GROUP BY currency HAVING sum(amount) <> 0) THEN
        RAISE EXCEPTION 'unbalanced journal entry %/%', NEW.entry_account, NEW.entry_tx;
    END IF;
    RETURN NULL;
END $$;
-- +goose StatementEnd

CREATE CONSTRAINT TRIGGER postings_balanced AFTER INSERT ON ledger.postings
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger.check_entry_balanced();

-- inbox records every command applied, with its result: a redelivered command returns that result
-- and changes nothing.
CREATE TABLE ledger.inbox (
    command_id    text PRIMARY KEY,
    account_id    text NOT NULL,
    kind          text NOT NULL,
    result        jsonb NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now()
);

-- outbox holds the events of committed commands until the publisher has written them to Kafka.
CREATE TABLE ledger.outbox (
    id             bigserial PRIMARY KEY,
    topic          text NOT NULL,
    event_type     text NOT NULL,
    event_id       text NOT NULL,
    partition_key  text NOT NULL,
    data           bytea NOT NULL,
    created_at     timestamptz NOT NULL
);

-- +goose Down
DROP TABLE ledger.outbox;
DROP TABLE ledger.inbox;
DROP TABLE ledger.postings;
DROP FUNCTION ledger.check_entry_balanced();
DROP TABLE ledger.transactions;
DROP TABLE ledger.positions;
DROP TABLE ledger.executions;
DROP TABLE ledger.orders;
DROP TABLE ledger.accounts;
