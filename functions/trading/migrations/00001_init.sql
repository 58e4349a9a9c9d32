-- +goose Up

-- api_keys maps the SHA-256 of each account's API token to the account; the token itself is shown
-- once, when the account is created, and never stored.
CREATE TABLE trading.api_keys (
    token_hash  bytea PRIMARY KEY,
    account_id  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_account ON trading.api_keys (account_id);

-- idempotency remembers, per principal and Idempotency-Key, the request (by hash) and its first
-- response. A record in flight holds a lease; once the lease lapses (the replica died) a retry may
-- take it over, which is safe because the order id is derived from the key.
CREATE TABLE trading.idempotency (
    principal     text NOT NULL,
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    state         text NOT NULL CHECK (state IN ('in_flight', 'done')),
    lease_until   timestamptz NOT NULL,
    status        integer,
    location      text,
    content_type  text,
    body          bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_created ON trading.idempotency (created_at);

-- +goose Down
DROP TABLE trading.idempotency;
DROP TABLE trading.api_keys;
