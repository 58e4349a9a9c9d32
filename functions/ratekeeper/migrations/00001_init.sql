-- +goose Up

-- marks holds, per pair, the newest rate processed (the high-water mark that makes processing
-- exactly-once) and the highest feeder epoch seen, which fences off a stale leader.
CREATE TABLE ratekeeper.marks (
    pair          text PRIMARY KEY,
    provider_ns   bigint,
    quote_id      text,
    epoch         bigint NOT NULL DEFAULT 0,
    -- ticks counts the rates processed for the pair; a tick's n is the count after it.
    ticks         bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- ticks is the history of every processed rate, exactly one row per provider quote.
CREATE TABLE ratekeeper.ticks (
    pair          text NOT NULL,
    n             bigint NOT NULL,
    provider_ns   bigint NOT NULL,
    provider_time timestamptz NOT NULL,
    quote_id      text NOT NULL,
    bid           numeric NOT NULL CHECK (bid > 0),
    ask           numeric NOT NULL CHECK (ask >= bid),
    epoch         bigint NOT NULL,
    seq           bigint NOT NULL,
    session       text NOT NULL,
    msg_seq_num   integer NOT NULL,
    received_at   timestamptz,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pair, n),
    UNIQUE (pair, provider_ns, quote_id)
);

-- candles are OHLC summaries of the ticks, maintained in the same transaction as the ticks.
CREATE TABLE ratekeeper.candles (
    pair        text NOT NULL,
    granularity text NOT NULL CHECK (granularity IN ('S5', 'M1', 'M5', 'H1')),
    bucket      timestamptz NOT NULL,
    open_bid    numeric NOT NULL,
    high_bid    numeric NOT NULL,
    low_bid     numeric NOT NULL,
    close_bid   numeric NOT NULL,
    open_ask    numeric NOT NULL,
    high_ask    numeric NOT NULL,
    low_ask     numeric NOT NULL,
    close_ask   numeric NOT NULL,
    volume      bigint NOT NULL CHECK (volume > 0),
    PRIMARY KEY (pair, granularity, bucket)
);

-- +goose Down
DROP TABLE ratekeeper.candles;
DROP TABLE ratekeeper.ticks;
DROP TABLE ratekeeper.marks;
