-- +goose Up

-- submitted_orders remembers each order trading answered 202 (published, not decided in time), until
-- long after the ledger applied it, so that it can be read and cancelled at once: GET and DELETE fall
-- back to it while the ledger does not know the order yet.
CREATE TABLE trading.submitted_orders (
    account_id       text NOT NULL,
    order_id         text NOT NULL,
    client_order_id  text,
    spec             jsonb NOT NULL,
    submitted_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, order_id)
);
CREATE INDEX submitted_orders_client ON trading.submitted_orders (account_id, client_order_id);
CREATE INDEX submitted_orders_at ON trading.submitted_orders (submitted_at);

-- +goose Down
DROP TABLE trading.submitted_orders;
